"""The inside view's speed, and the README's picture of it.

    python scripts/bench_inside.py checkpoints/tinyshakespeare.safetensors corpora/tinyshakespeare.txt \
        [--screenshot docs/inside.png]

Times `model.inspect` of 10,000 characters of the text (the median of --repeats, after one to warm
up), then serves the checkpoint on a free loopback port, opens the playground in Debian's Chromium
(Playwright, no browser download) and, on 20,000 characters, times in the page: the answer of
/v1/inside drawn (from the click to the view), a hover's tip, and a recolouring by a unit. Prints
one line each with the machine's load average. With --screenshot, a view of a shorter text is
saved as a PNG: coloured by surprise, a character hovered.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from playwright.sync_api import expect, sync_playwright

import charlm
from charlm.serve.app import create_app
from charlm.serve.catalog import load_catalog
from charlm.serve.server import running

TIMED = """([what]) => new Promise((done) => {
  const view = document.querySelector('#inside-view'), spans = view.querySelectorAll('.inside-text span');
  const started = performance.now();
  if (what === 'hover') spans[spans.length - 10].dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));
  else { const by = view.querySelector('.inside-by'); by.value = by.querySelector('optgroup option').value;
         by.dispatchEvent(new Event('change')); }
  requestAnimationFrame(() => setTimeout(() => done(performance.now() - started)));  // after the frame is drawn
})"""


def median_seconds(work, repeats: int) -> float:
    work()  # warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("text")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--screenshot", default=None)
    parser.add_argument("--hover", default=120, help="the character the picture hovers")
    parser.add_argument("--browser", default="/usr/bin/chromium")
    options = parser.parse_args()
    text = open(options.text, encoding="utf-8").read()
    middle = len(text) // 2
    model = charlm.load(options.checkpoint)
    load = lambda: "load %.2f" % os.getloadavg()[0]  # noqa: E731
    seconds = median_seconds(lambda: model.inspect(text[middle : middle + 10_000]), options.repeats)
    print(f"inspect 10,000 characters: {seconds:.2f} s (median of {options.repeats}; "
          f"{torch.get_num_threads()} threads, {load()})")
    catalog = load_catalog([options.checkpoint])
    with running(create_app(catalog)) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=options.browser)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        long = text[middle : middle + 20_000]
        page.fill("#inside-text", long)
        started = time.perf_counter()
        page.click("#look")
        expect(page.locator("#inside-view .inside-text span")).to_have_count(len(long), timeout=120_000)
        drawn = time.perf_counter() - started
        hover = statistics.median(page.evaluate(TIMED, ["hover"]) for _ in range(options.repeats))
        recolour = statistics.median(page.evaluate(TIMED, ["recolour"]) for _ in range(options.repeats))
        print(f"the page on 20,000 characters: drawn {drawn:.2f} s after the click (the server's inspect "
              f"included), a hover's tip {hover:.0f} ms, a recolouring by a unit {recolour:.0f} ms ({load()})")
        if options.screenshot:
            page.fill("#inside-text", text[middle : middle + 600])
            page.click("#look")
            spans = page.locator("#inside-view .inside-text span")
            expect(spans).to_have_count(600, timeout=60_000)
            spans.nth(int(options.hover)).hover()
            page.locator("#inside").screenshot(path=options.screenshot, animations="disabled")
            print(f"wrote {options.screenshot}")
        browser.close()


if __name__ == "__main__":
    main()
