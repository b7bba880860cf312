"""The inside view as data and as one self-contained HTML file: the text coloured by the model's
surprise, each character's expectations on hover, the units `rank_units` found (or any other) to
colour it by instead, and for a transformer where each head looked from a character.

    data = view_data(inside, inside.rank_units(), units=["layer 1 c 37"])   # POST /v1/inside's answer
    page = inside_page(inside, ranked, title="notes.txt with checkpoints/notes.safetensors")

The page and the playground run one script, `inside_view.js` beside this module (inlined in the
page, served as /inside.js by `charlm serve`). Nothing from the text or the model is ever
interpreted as HTML: every token is set as text by the script, and the data it reads is JSON with
`<` written as `\\u003c`. No file is fetched: the page works offline and can be shared as it is.
Standard library only, and torch for the attention's top positions.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable
from importlib import resources
from typing import Any

ATTENDED = 4  # the positions a view keeps of each head's attention from a token: its heaviest,
LEAST = 0.02  # those of this weight at least

STYLE = """body{font:14px/1.5 system-ui,sans-serif;margin:2em;max-width:70em}
.inside-text{font-family:ui-monospace,monospace;white-space:pre-wrap;word-break:break-all;border:1px solid #ccc;
padding:1em;max-height:40em;overflow:auto}.inside-text span{cursor:default}.inside-text span:hover{outline:1px solid #222}
.inside-tip{font-family:ui-monospace,monospace;min-height:3em;color:#333;margin:.5em 0}
.inside-legend,.inside-status{color:#667085;font-size:.9em}"""


def script() -> str:
    """The view's script, `inside_view.js`."""
    return resources.files("charlm.evaluation").joinpath("inside_view.js").read_text(encoding="utf-8")


def view_data(inside: Any, ranked: dict[str, list[tuple[str, float]]], units: Iterable[str] = ()) -> dict[str, Any]:
    """What the view shows, as JSON-ready data (the page's and `POST /v1/inside`'s): the tokens,
    their surprise in bits, what the model expected at each, the ranked units (feature -> [unit,
    r]), and the activations after each token (None where there is none) of those units and of
    `units` ("layer 1 c 37"); `layers`, each layer's number of units; `top`, the surprise the
    colours saturate at (the 95th percentile). A transformer's view adds `heads` ({layers, heads})
    and `attention`: per token, per layer and head (layer * heads + head), its heaviest positions
    and their weights in percent, flat: [position, percent, ...]."""
    shown = {}
    for unit in [unit for found in ranked.values() for unit, _ in found] + list(units):
        name, _, index = unit.rpartition(" ")
        activations = inside.activations.get(name)
        if activations is None or not index.isdigit() or int(index) >= activations.shape[1]:
            raise KeyError(unit)
        values = activations[:, int(index)].tolist()
        shown[unit] = [None if math.isnan(value) else round(value, 4) for value in values]
    data = {"tokens": inside.tokens,
            "surprise": [None if value is None else round(value, 3) for value in inside.surprise],
            "expected": [[(token, round(p, 4)) for token, p in found] for found in inside.expected],
            "ranked": {feature: [[unit, round(r, 4)] for unit, r in found] for feature, found in ranked.items()},
            "units": shown, "layers": {name: values.shape[1] for name, values in inside.activations.items()},
            "top": inside.saturation()}
    if inside.attention is not None:
        data["heads"], data["attention"] = _attention(inside)
    return data


def _attention(inside: Any) -> tuple[dict[str, int], list[list[list[int]]]]:
    """`view_data`'s `heads` and `attention` of a transformer's `Inside`."""
    count, layers, heads, window = inside.attention.shape
    weights, offsets = inside.attention.float().topk(min(ATTENDED, window), dim=-1)  # (T, L, H, k)
    positions = (offsets + inside.window_start[:, None, None, None]).tolist()
    percents = (weights * 100).round().int().tolist()
    kept = (weights >= LEAST).tolist()
    found = []
    for token in range(count):
        if int(inside.window_start[token]) < 0:  # the last token: nothing looked from it
            found.append([])
            continue
        found.append([[value for position, percent, keep in zip(positions[token][layer][head], percents[token][layer][head],
                                                                 kept[token][layer][head]) if keep
                       for value in (position, percent)] for layer in range(layers) for head in range(heads)])
    return {"layers": layers, "heads": heads}, found


def inside_page(inside: Any, ranked: dict[str, list[tuple[str, float]]], title: str) -> str:
    """The HTML page of `inside` (`charlm.evaluation.inside.Inside`) with the units of `ranked`."""
    payload = json.dumps(view_data(inside, ranked), ensure_ascii=False).replace("<", "\\u003c")
    bits = [value for value in inside.surprise if value is not None]
    mean = sum(bits) / max(len(bits), 1)
    code = script().replace("</", "<\\/")  # nothing in it may close the script element
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{len(bits):,} tokens predicted, {mean:.3f} bits each on average.</p><div id='view'></div>"
            f"<script type='application/json' id='data'>{payload}</script><script>{code}\n"
            "insideView(document.getElementById('view'), JSON.parse(document.getElementById('data').textContent));"
            "</script></body></html>")
