"""The playground in a real browser: Debian's headless Chromium driven by Playwright, against a
uvicorn server on loopback. Skipped where either is missing, but under CI (CI=true), where that
is a failure: CI installs both."""

from __future__ import annotations

import json
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
from tests.conftest import TINY_TEXT  # noqa: E402
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
    expect(page.locator("#curve path")).to_have_count(2)  # train and validation
    page.evaluate("Promise.all([drawCurve('tiny'), drawCurve('tiny'), drawCurve('tiny')])")  # a model chosen
    assert page.locator("#curve path").count() == 2  # as the page opens, or twice quickly: drawn once, not thrice
    page.select_option("#model", "rev")
    expect(page.locator("#pairs")).to_be_visible()
    expect(page.locator("#lm")).to_be_hidden()
    page.fill("#inputs", "abc\nca")
    page.click("#translate")
    expect(page.locator("#outputs tr")).to_have_count(2)
    expect(page.locator("#attention-figure")).to_be_visible()
    page.select_option("#model", "tiny")


# ---------------------------------------------------------------------------------------------
# The inside view (/v1/inside, drawn by charlm/evaluation/inside_view.js)

def look_inside(page, text: str) -> object:
    """Type `text` into the inside box, look, and wait for the view; its character spans."""
    page.fill("#inside-text", text)
    page.click("#look")
    expect(page.locator("#inside-status")).to_contain_text("tokens predicted", timeout=30_000)
    spans = page.locator("#inside-view .inside-text span")
    expect(spans).to_have_count(len(text))
    return spans


def backgrounds(page) -> list[str]:
    return page.eval_on_selector_all("#inside-view .inside-text span", "spans => spans.map(s => s.style.background)")


def test_the_inside_view_colours_a_text_says_what_was_expected_and_picks_a_unit(page):
    page.select_option("#model", "tiny")
    text = TINY_TEXT[:300]
    spans = look_inside(page, text)
    seen = page.catalog["tiny"].model.inspect(text)
    surprise = backgrounds(page)
    assert surprise[0] == "" and all(surprise[1:])  # the first token has no surprise; the others a colour
    least = min(range(1, len(text)), key=lambda i: seen.surprise[i])
    most = max(range(1, len(text)), key=lambda i: seen.surprise[i])
    lightness = lambda colour: sum(int(part) for part in colour[4:-1].split(","))  # noqa: E731  rgb(r, g, b)
    assert lightness(surprise[most]) < lightness(surprise[least])  # the surprising is darker
    spans.nth(40).hover()
    (first, probability), *_ = seen.expected[40]
    tip = page.locator("#inside-view .inside-tip")
    bits, probability = round(seen.surprise[40], 3), round(probability, 4)  # as the server sends them
    expect(tip).to_contain_text(f"{bits:.2f} bits; expected {json.dumps(first)} {100 * probability:.1f}%")
    page.select_option("#inside-view .inside-by", "pick")  # a unit of the user's choice, read from the server
    page.select_option("#inside-view .inside-layer", "layer 0 c")
    page.fill("#inside-view .inside-unit", "3")
    page.dispatch_event("#inside-view .inside-unit", "change")
    expect(page.locator("#inside-view .inside-legend")).to_contain_text("layer 0 c 3")
    assert backgrounds(page) != surprise
    spans.nth(40).hover()
    expect(tip).to_contain_text(f"layer 0 c 3 {round(float(seen.activations['layer 0 c'][40, 3]), 4):.3f}")
    ranked = page.locator("#inside-view .inside-by optgroup option")  # or one the ranking found
    assert ranked.count() >= 1
    page.select_option("#inside-view .inside-by", ranked.first.get_attribute("value"))
    expect(page.locator("#inside-view .inside-legend")).to_contain_text(ranked.first.get_attribute("value")[5:])


def test_the_inside_view_takes_the_text_just_generated_and_twenty_thousand_characters(page):
    page.select_option("#model", "tiny")
    page.fill("#prefix", "the ")
    page.fill("#length", "80")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("done", timeout=10_000)
    generated = page.locator("#output").text_content()
    page.click("#look-generated")
    expect(page.locator("#inside-status")).to_contain_text(f"{len(generated) - 1} tokens predicted", timeout=30_000)
    assert page.input_value("#inside-text") == generated
    long = (TINY_TEXT * (20_000 // len(TINY_TEXT) + 1))[:20_000]
    spans = look_inside(page, long)
    spans.nth(19_990).hover()  # the view answers at the far end of a long text
    expect(page.locator("#inside-view .inside-tip")).to_contain_text("bits; expected")


@pytest.fixture(scope="module")
def transformer_page(page, tmp_path_factory):
    """A tiny transformer, whose vocab holds HTML's characters, served beside in the same browser."""
    import charlm

    folder = tmp_path_factory.mktemp("inside")
    (folder / "html.txt").write_text('<img src=x onerror="window.pwned=1"> & </b>\n' + TINY_TEXT, encoding="utf-8")
    charlm.train(folder / "html.txt", model="transformer", num_layers=2, num_heads=2, embedding_size=16, seq_len=16,
                 batch_size=4, max_steps=30, quiet=True, out=folder / "models" / "attends.safetensors")
    catalog = load_catalog([str(folder / "models")])
    with running(create_app(catalog)) as url:
        tab = page.context.browser.new_page()
        tab.goto(url)
        tab.select_option("#model", "attends")
        tab.catalog = catalog
        yield tab
        tab.close()


def test_the_inside_view_shows_where_a_transformers_head_looked_and_interprets_no_text(transformer_page):
    page = transformer_page
    text = 'the <img src=x onerror="window.pwned=1"> time & </b> traveller'
    spans = look_inside(page, text)
    assert page.evaluate("window.pwned") is None and page.locator("#inside-view img").count() == 0
    assert page.locator("#inside-view .inside-text").text_content() == text
    seen = page.catalog["attends"].model.inspect(text)
    page.select_option("#inside-view .inside-by", "attention")
    page.select_option("#inside-view .inside-head-layer", "1")
    page.select_option("#inside-view .inside-head", "1")
    spans.nth(12).click()
    expect(page.locator("#inside-view .inside-legend")).to_contain_text("layer 1, head 1")
    lit = {index for index, colour in enumerate(backgrounds(page)) if colour}
    heaviest = sorted(seen.attended(12, 1, 1), key=lambda found: -found[1])[:4]
    assert lit == {position for position, weight in heaviest if weight >= 0.02} and lit <= set(range(12 - 11, 13))


def test_the_page_charlm_inside_writes_works_offline_in_the_browser(transformer_page, tmp_path):
    """The --html file: the same script, its data inlined; no server, nothing fetched."""
    from charlm.evaluation.inside_page import inside_page

    text = 'the <img src=x onerror="window.pwned=1"> time traveller'
    seen = transformer_page.catalog["attends"].model.inspect(text)
    (tmp_path / "view.html").write_text(inside_page(seen, seen.rank_units(), "a <b>title</b>"), encoding="utf-8")
    page = transformer_page.context.browser.new_page()
    fetched = []
    page.on("request", lambda request: fetched.append(request.url))
    page.goto((tmp_path / "view.html").as_uri())
    spans = page.locator("#view .inside-text span")
    expect(spans).to_have_count(len(text))
    assert page.locator("#view .inside-text").text_content() == text and page.evaluate("window.pwned") is None
    assert page.title() == "a <b>title</b>" and fetched == [(tmp_path / "view.html").as_uri()]
    spans.nth(20).hover()
    expect(page.locator("#view .inside-tip")).to_contain_text("bits; expected")
    assert page.locator("#view .inside-by option[value=pick]").count() == 0  # no server to read other units from
    page.select_option("#view .inside-by", "attention")
    spans.nth(20).click()
    lit = {index for index, colour in enumerate(page.eval_on_selector_all(
        "#view .inside-text span", "spans => spans.map(s => s.style.background)")) if colour}
    heaviest = sorted(seen.attended(20, 0, 0), key=lambda found: -found[1])[:4]
    assert lit == {position for position, weight in heaviest if weight >= 0.02}
    page.close()
