"""Web: a static folder that generates text in the browser with no server and no network.

    export_web("model.safetensors", "site/")        # or an ONNX file charlm exported

The folder holds the page (`static/`: index.html and generate.js, with the playground's generate card
and stylesheet, so that both pages show the same controls),
the model (`model.onnx`) and its metadata (`model.json`, read from the ONNX file once it is checked),
and ONNX Runtime Web's WebAssembly backend from its npm package: `ort.wasm.min.js` and the
`ort-wasm-simd-threaded` module and binary it loads, run on one thread so that no cross-origin
isolation is needed (any static host, `python -m http.server` included).

Where the runtime comes from: `ort`, a folder (an unpacked package's `dist/`) or the package's
tarball (`npm pack onnxruntime-web@VERSION`); without it, the pinned tarball is fetched once from
the npm registry into the user's cache. A tarball is used only if its SHA-512 is the one the
registry published for `ORT_VERSION`. Nothing is ever fetched from a CDN.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

from charlm.errors import CharlmError
from charlm.runtime.files import atomic_write

ORT_VERSION = "1.31.1"
ORT_INTEGRITY = "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw=="
ORT_TARBALL = f"https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-{ORT_VERSION}.tgz"
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PAGE = Path(__file__).parent / "static"
PLAYGROUND = Path(__file__).parent.parent / "serve" / "static"  # its look and its controls, shared
CARD = "<!-- the playground's generate card"


def export_web(source: str | os.PathLike, out: str | os.PathLike, ort: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write the page of `source` (a checkpoint, or an ONNX file `charlm export` wrote) into the
    folder `out`; returns the model's metadata."""
    from charlm.export.onnx import checkpoint_task, export_onnx, read_export

    given = read_export(source) if Path(source).suffix == ".onnx" else None
    if (given["graph"] if given else checkpoint_task(source)) not in ("step", "lm"):
        raise CharlmError(f"{source}: the page generates text from a language model; this is a pair model's")
    runtime = runtime_files(ort)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if given:
        description = given
        shutil.copyfile(source, out / "model.onnx")
    else:
        export_onnx(source, out / "model.onnx")
        description = read_export(out / "model.onnx")
    atomic_write(out / "model.json", json.dumps(description, ensure_ascii=False).encode("utf-8"))
    for name, data in runtime.items():
        atomic_write(out / name, data)
    atomic_write(out / "index.html", page().encode("utf-8"))
    atomic_write(out / "generate.js", (PAGE / "generate.js").read_bytes())
    atomic_write(out / "playground.css", (PLAYGROUND / "playground.css").read_bytes())
    return description


def page() -> str:
    """The exported page: `static/index.html` with the playground's generate card (its prefix,
    length, temperature, top-k, top-p and seed controls) in place of its marker line."""
    playground = (PLAYGROUND / "index.html").read_text(encoding="utf-8")
    start = playground.index('<section id="lm"')
    card = playground[start : playground.index("</section>", start) + len("</section>")]
    template = (PAGE / "index.html").read_text(encoding="utf-8")
    lines = [card.replace(" hidden>", ">", 1) if CARD in line else line for line in template.splitlines()]
    return "\n".join(lines) + "\n"


def runtime_files(ort: str | os.PathLike | None) -> dict[str, bytes]:
    """{file name: bytes} of ONNX Runtime Web's wasm backend, from `ort` (a dist folder or the
    package's tarball) or the pinned tarball, fetched once into the cache."""
    if ort is not None and Path(ort).is_dir():
        missing = [name for name in ORT_FILES if not (Path(ort) / name).is_file()]
        if missing:
            raise CharlmError(f"--ort {ort}: no {', '.join(missing)} there; give onnxruntime-web's dist/ folder "
                              f"(npm install onnxruntime-web@{ORT_VERSION}) or its tarball")
        return {name: (Path(ort) / name).read_bytes() for name in ORT_FILES}
    tarball = Path(ort) if ort is not None else cached_tarball()
    try:
        data = tarball.read_bytes()
    except OSError as error:
        raise CharlmError(f"--ort {tarball}: cannot read it ({error.strerror or error})") from None
    if integrity(data) != ORT_INTEGRITY:
        raise CharlmError(f"--ort {tarball}: not onnxruntime-web {ORT_VERSION}'s tarball (its SHA-512 is not the "
                          f"one the npm registry published); npm pack onnxruntime-web@{ORT_VERSION}")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return {name: archive.extractfile(f"package/dist/{name}").read() for name in ORT_FILES}


def integrity(data: bytes) -> str:
    """npm's integrity string of a tarball: "sha512-" and the base64 of its SHA-512."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def cached_tarball() -> Path:
    """The pinned tarball in the user's cache, fetched from the npm registry the first time."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "charlm"
    path = cache / f"onnxruntime-web-{ORT_VERSION}.tgz"
    if path.is_file() and integrity(path.read_bytes()) == ORT_INTEGRITY:
        return path
    try:
        with urllib.request.urlopen(ORT_TARBALL, timeout=120) as response:
            data = response.read()
    except OSError as error:
        raise CharlmError(f"cannot fetch onnxruntime-web {ORT_VERSION} from the npm registry ({error}); give it with "
                          f"--ort (npm pack onnxruntime-web@{ORT_VERSION})") from None
    if integrity(data) != ORT_INTEGRITY:
        raise CharlmError(f"the npm registry's onnxruntime-web {ORT_VERSION} is not the tarball charlm pinned")
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
    return path
