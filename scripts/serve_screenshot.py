"""The README's picture of the playground: `charlm serve`'s page in headless Chromium, a sample
streamed in, saved as a PNG.

    python scripts/serve_screenshot.py checkpoints/timemachine.safetensors --out docs/serve.png

It serves the checkpoints on a free loopback port (as `charlm serve` does), opens the page in
Debian's Chromium through Playwright (no browser download), generates from --prefix with --seed
and waits for the end before the picture is taken.
"""

from __future__ import annotations

import argparse

from playwright.sync_api import expect, sync_playwright

from charlm.serve.app import create_app
from charlm.serve.catalog import load_catalog
from charlm.serve.server import running


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--out", default="docs/serve.png")
    parser.add_argument("--prefix", default="the time traveller ")
    parser.add_argument("--length", default="400")
    parser.add_argument("--seed", default="1")
    parser.add_argument("--browser", default="/usr/bin/chromium")
    options = parser.parse_args()
    with running(create_app(load_catalog(options.checkpoints))) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=options.browser)
        page = browser.new_page(viewport={"width": 1280, "height": 760}, device_scale_factor=1)
        page.goto(url)
        page.wait_for_selector("#curve path")
        page.fill("#prefix", options.prefix)
        page.fill("#length", options.length)
        page.fill("#seed", options.seed)
        page.click("#generate")
        expect(page.locator("#status")).to_contain_text("done", timeout=60_000)
        page.screenshot(path=options.out, full_page=True)
        browser.close()
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
