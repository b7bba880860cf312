"""`charlm export --format web` in a real browser: the folder, served by `python -m http.server` on
loopback, generates text in Debian's headless Chromium (Playwright), asking nothing of any other
host. ONNX Runtime Web comes from `npm pack` where npm is installed, else from charlm's own fetch of
the pinned tarball from the npm registry. Skipped where the browser or the export extra is missing,
but under CI (CI=true), where that is a failure, as for the playground's browser test."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_TEXT, run_cli
from tests.serve.test_serve_browser import BROWSER, need

try:
    import onnx  # noqa: F401
    import onnxscript  # noqa: F401
except ImportError:
    onnx = None
need(onnx is not None, "charlm[export] is not installed (the test extra brings it)")

from playwright.sync_api import sync_playwright  # noqa: E402  (need() has checked it)

from charlm.export.web import ORT_INTEGRITY, ORT_VERSION, integrity  # noqa: E402
from tests.export.test_onnx import train  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ort_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """onnxruntime-web's tarball by `npm pack` (npm's cache keeps it), or None: charlm fetches it."""
    if shutil.which("npm") is None:
        return None
    folder = tmp_path_factory.mktemp("ort")
    subprocess.run(["npm", "pack", f"onnxruntime-web@{ORT_VERSION}", "--silent"], cwd=folder, check=True,
                   capture_output=True, timeout=600)
    (tarball,) = folder.glob("onnxruntime-web-*.tgz")
    assert integrity(tarball.read_bytes()) == ORT_INTEGRITY  # npm's own download, the registry's published digest
    return tarball


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("name, shown", [("lstm", "lstm 2x16"), ("transformer", "transformer 2x16"),
                                         ("lstm-ensemble", "2 x lstm 2x16")])
def test_the_exported_page_generates_in_chromium_offline(runner, tmp_path, ort_tarball, name, shown):
    """An LSTM, a transformer (its window's If) well past its context of 8, and two LSTMs mixed (--ensemble 2)."""
    checkpoint = train(tmp_path, name)
    site = tmp_path / "site"
    run_cli(runner, "export", checkpoint, "--format", "web", "--out", site,
            *(("--ort", ort_tarball) if ort_tarball else ()))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(site)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=BROWSER if Path(BROWSER).exists() else
                                                 shutil.which("chromium"))
            page = browser.new_page()
            errors, hosts = [], set()
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: hosts.add(request.url.split("/")[2]))
            for _ in range(100):  # the server starts
                try:
                    page.goto(f"http://127.0.0.1:{port}/")
                    break
                except Exception:  # connection refused, until it listens
                    time.sleep(0.1)
            page.wait_for_function("!document.querySelector('#generate').disabled", timeout=60_000)
            assert shown in page.text_content("#about")
            page.fill("#prefix", "the ")
            page.fill("#length", "120")
            page.fill("#seed", "3")
            page.click("#generate")
            page.wait_for_function("document.querySelector('#status').textContent.startsWith('done')", timeout=60_000)
            text = page.text_content("#output")
            page.fill("#prefix", "the ")  # the same seed, the same text
            page.click("#generate")
            page.wait_for_function("document.querySelector('#status').textContent.startsWith('done')", timeout=60_000)
            again = page.text_content("#output")
            page.fill("#prefix", "the \u263a")  # a character the model never saw: said, not generated
            page.click("#generate")
            page.wait_for_function("document.querySelector('#status').classList.contains('error')", timeout=10_000)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert text.startswith("the ") and len(text) == len("the ") + 120
    assert set(text) <= set(TINY_TEXT) and text == again
    assert errors == [] and hosts == {f"127.0.0.1:{port}"}
