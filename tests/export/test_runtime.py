"""Where the page's runtime comes from: onnxruntime-web's files are taken only from a dist/ folder
that holds them all or from the pinned tarball, checked against the SHA-512 the npm registry published."""

from __future__ import annotations

import io
import tarfile

from tests.conftest import run_cli, train_tiny


def test_a_runtime_that_is_not_the_pinned_one_is_refused_before_anything_is_written(runner, tmp_path):
    checkpoint = train_tiny(tmp_path, 2)
    forged = tmp_path / "onnxruntime-web.tgz"  # the right names, other bytes
    with tarfile.open(forged, "w:gz") as archive:
        for name in ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"):
            info = tarfile.TarInfo(f"package/dist/{name}")
            info.size = 4
            archive.addfile(info, io.BytesIO(b"evil"))
    partial = tmp_path / "dist"
    partial.mkdir()
    (partial / "ort.wasm.min.js").write_text("// only one of the three", encoding="utf-8")
    for ort, said in ((forged, "not onnxruntime-web 1.31.1's tarball"), (partial, "no ort-wasm-simd-threaded.mjs")):
        result = run_cli(runner, "export", checkpoint, "--format", "web", "--out", tmp_path / "site", "--ort", ort,
                         ok=False)
        assert result.exit_code == 1 and said in result.output and len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / "site").exists()


def test_ort_is_for_the_web_page_only(runner, tmp_path):
    checkpoint = train_tiny(tmp_path, 2)
    result = run_cli(runner, "export", checkpoint, "--ort", tmp_path, ok=False)
    assert result.exit_code == 2 and "--ort is for --format web" in result.output
