"""The playground in a real browser: Debian's headless Chromium driven by Playwright, against a
uvicorn server on loopback. Skipped where either is missing, but under CI (CI=true), where that
is a failure: CI installs both."""

from __future__ import annotations

import os
import shutil
import time

import pytest

BROWSER = "/usr/bin/chromium"


def need(condition: bool, reason: str) -> None:
    if not condition:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI installs it: .ci/run)")
        pytest.skip(reason, allow_module_level=True)


try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    sync_playwright = None
need(sync_playwright is not None, "playwright is not installed (the test extra brings it)")
need(os.path.exists(BROWSER) or shutil.which("chromium") is not None, f"no {BROWSER} (apt-get install -y chromium)")
pytest.importorskip("starlette", reason="charlm[serve] is not installed")

from charlm.serve.app import create_app  # noqa: E402
from charlm.serve.catalog import load_catalog  # noqa: E402
from charlm.serve.server import running  # noqa: E402
from tests.serve.test_serve import models, slow_steps  # noqa: E402, F401  (the fixture, and slowing its steps)


@pytest.fixture(scope="module")
def page(models):  # noqa: F811
    """The playground of the tiny models, open in Chromium; its steps slowed to watch them stream."""
    catalog = load_catalog([str(models)])
    app = create_app(catalog)
    slow_steps(app, seconds=0.01)
    with running(app) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=BROWSER if os.path.exists(BROWSER) else
                                             shutil.which("chromium"))
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url)
        page.select_option("#model", "tiny")
        page.app, page.catalog = app, catalog
        yield page
        browser.close()
        assert errors == []


def test_the_text_streams_in_as_it_is_made(page):
    page.fill("#prefix", "the ")
    page.fill("#length", "150")
    page.fill("#seed", "3")
    page.click("#generate")
    output = page.locator("#output")
    expect(output).to_contain_text("the ", timeout=10_000)
    seen = [len(output.text_content())]
    while not page.locator("#status").text_content().startswith("done"):
        seen.append(len(output.text_content()))
        time.sleep(0.05)
        assert len(seen) < 400, "the generation did not end"
    seen.append(len(output.text_content()))
    assert len(set(seen)) > 3  # it grew a piece at a time, not all at once
    expect(page.locator("#status")).to_contain_text("seed 3")
    made = page.catalog["tiny"].model.generate("the ", length=150, temperature=0.8, seed=3)  # the page's settings
    assert output.text_content() == made
    assert page.locator("#stop").is_disabled() and page.locator("#generate").is_enabled()
    shown = page.locator("#openai").text_content()  # the same request in OpenAI's dialect
    assert 'client.completions.create(model="tiny", prompt="the ", max_tokens=150' in shown and "seed=3" in shown
    assert "/v1/completions" in shown and page.locator("#key-box").is_hidden()


def test_stop_ends_the_generation_on_the_server(page):
    page.fill("#prefix", "his ")
    page.fill("#length", "2000")
    page.click("#generate")
    expect(page.locator("#output")).to_contain_text("his ", timeout=10_000)
    time.sleep(0.3)
    page.click("#stop")
    expect(page.locator("#status")).to_have_text("stopped")
    batcher = page.app.state.batchers["tiny"]
    deadline = time.monotonic() + 10
    while batcher.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert batcher.in_flight == 0 and len(page.locator("#output").text_content()) < 2000


def test_a_server_with_a_key_has_the_page_ask_for_it(page):
    app = create_app(page.catalog, api_key="sesame")
    with running(app) as url:
        page = page.context.browser.new_page()  # beside the other page, in the same browser
        page.goto(url)
        expect(page.locator("#key-box")).to_be_visible()
        expect(page.locator("#about")).to_contain_text("needs an API key")
        page.fill("#key", "sesame")
        page.dispatch_event("#key", "change")
        expect(page.locator("#model option")).to_have_count(3)
        page.select_option("#model", "tiny")
        page.fill("#prefix", "the ")
        page.fill("#length", "20")
        page.click("#generate")
        expect(page.locator("#status")).to_contain_text("done", timeout=10_000)
        assert "Bearer $CHARLM_API_KEY" in page.locator("#openai").text_content()
        page.close()


def test_the_loss_curve_and_the_translate_box(page):
    assert page.locator("#curve path").count() == 2  # train and validation
    page.select_option("#model", "rev")
    expect(page.locator("#pairs")).to_be_visible()
    expect(page.locator("#lm")).to_be_hidden()
    page.fill("#inputs", "abc\nca")
    page.click("#translate")
    expect(page.locator("#outputs tr")).to_have_count(2)
    expect(page.locator("#attention-figure")).to_be_visible()
    page.select_option("#model", "tiny")
