"""The inside view as one self-contained HTML file: the text coloured by the model's surprise,
each character's expectations on hover, and the units `rank_units` found, to colour it by instead.

    page = inside_page(inside, ranked, title="notes.txt with checkpoints/notes.safetensors")

Nothing from the text or the model is ever interpreted as HTML: every token is escaped, and the
data the page's script reads is JSON with `<` written as `\\u003c`. No file is fetched: the page
works offline and can be shared as it is. Standard library only.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

STYLE = """body{font:14px/1.5 system-ui,sans-serif;margin:2em;max-width:70em}
#text{font-family:ui-monospace,monospace;white-space:pre-wrap;word-break:break-all;border:1px solid #ccc;padding:1em}
#text span{cursor:default}#tip{font-family:ui-monospace,monospace;min-height:3em;color:#333}
.legend span{padding:0 .5em}"""

SCRIPT = """const data=JSON.parse(document.getElementById('data').textContent);
const spans=[...document.querySelectorAll('#text span')];
function surprise(){spans.forEach((s,i)=>{const b=data.surprise[i];
 s.style.background=b===null?'':`hsl(0,90%,${100-Math.min(b/data.top,1)*55}%)`;});}
function unit(name){const v=data.units[name];const m=Math.max(...v.filter(x=>x!==null).map(Math.abs),1e-9);
 spans.forEach((s,i)=>{const a=v[i];s.style.background=a===null?'':
 (a>=0?`hsl(210,90%,${100-a/m*50}%)`:`hsl(30,90%,${100+a/m*50}%)`);});}
document.getElementById('by').addEventListener('change',e=>e.target.value?unit(e.target.value):surprise());
document.getElementById('text').addEventListener('mouseover',e=>{const i=spans.indexOf(e.target);if(i<0)return;
 const b=data.surprise[i];const tip=document.getElementById('tip');
 tip.textContent=b===null?'the first token: nothing predicts it':
 `${JSON.stringify(data.tokens[i])}: ${b.toFixed(2)} bits; expected `+data.expected[i].map(
 ([t,p])=>`${JSON.stringify(t)} ${(100*p).toFixed(1)}%`).join(', ');});
surprise();"""


def view_data(inside: Any, ranked: dict[str, list[tuple[str, float]]]) -> dict[str, Any]:
    """What the view shows, as JSON-ready data (the page's and `POST /v1/inside`'s): the tokens,
    their surprise in bits, what the model expected at each, the ranked units (feature -> [unit,
    r]) and those units' activations after each token (None where there is none), and `top`,
    the surprise the colours saturate at (the 95th percentile)."""
    units = {}
    for found in ranked.values():
        for unit, _ in found:
            name, index = unit.rsplit(" ", 1)
            values = inside.activations[name][:, int(index)].tolist()
            units[unit] = [None if math.isnan(value) else round(value, 4) for value in values]
    return {"tokens": inside.tokens, "surprise": [None if value is None else round(value, 3) for value in inside.surprise],
            "expected": [[(token, round(p, 4)) for token, p in found] for found in inside.expected],
            "ranked": {feature: [[unit, round(r, 4)] for unit, r in found] for feature, found in ranked.items()},
            "units": units, "top": inside.saturation()}


def inside_page(inside: Any, ranked: dict[str, list[tuple[str, float]]], title: str) -> str:
    """The HTML page of `inside` (`charlm.evaluation.inside.Inside`) with the units of `ranked`."""
    data = view_data(inside, ranked)
    bits = [value for value in inside.surprise if value is not None]
    options = "".join(f'<option value="{html.escape(unit)}">{html.escape(feature)}: {html.escape(unit)} '
                      f'(r {r:+.2f})</option>' for feature, found in ranked.items() for unit, r in found)
    text = "".join(f"<span>{html.escape(token)}</span>" for token in inside.tokens)
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    mean = sum(bits) / max(len(bits), 1)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{len(bits):,} tokens predicted, {mean:.3f} bits each on average (red: surprising). "
            f"Colour by <select id='by'><option value=''>surprise</option>{options}</select> "
            f"(a unit: blue above zero, orange below)</p>"
            f"<div id='tip'></div><div id='text'>{text}</div>"
            f"<script type='application/json' id='data'>{payload}</script><script>{SCRIPT}</script></body></html>")
