// The inside view: a text coloured by a model's surprise, or by one unit's activation, or by where
// a transformer's head looked from one character; what the model expected on hover. One script for
// the page `charlm inside --html` writes (inlined there) and the playground (served as /inside.js).
// Plain JS. Text from a corpus or a model is only ever set as textContent, never parsed as HTML.
//
//   insideView(element, data, {loadUnit})  // data: charlm.evaluation.inside_page.view_data's JSON
//
// loadUnit(name) -> Promise of that unit's activations (the playground asks the server); without it
// only the units in data.units can be chosen.
"use strict";

function insideView(root, data, options = {}) {
  const make = (tag, properties = {}, ...children) => {
    const element = Object.assign(document.createElement(tag), properties);
    element.append(...children);
    return element;
  };
  const tokens = data.tokens, count = tokens.length;
  const units = Object.assign({}, data.units);
  const layerNames = Object.keys(data.layers || {});
  const heads = data.heads || null; // the transformer's: {layers, heads}
  let mode = "surprise", unitName = null, anchor = null; // anchor: the character attention is shown from

  // The controls: colour by surprise, a ranked unit, a unit of one's choice, or a head's attention.
  const by = make("select", {className: "inside-by", title: "what colours the text"});
  by.append(make("option", {value: "surprise", textContent: "surprise (red: the model did not expect it)"}));
  const ranked = make("optgroup", {label: "units that follow a feature of the text"});
  for (const [feature, found] of Object.entries(data.ranked || {})) {
    for (const [unit, r] of found) {
      ranked.append(make("option", {value: `unit:${unit}`, textContent: `${feature}: ${unit} (r ${r >= 0 ? "+" : ""}${r.toFixed(2)})`}));
    }
  }
  if (ranked.children.length) by.append(ranked);
  if (layerNames.length && options.loadUnit) {
    by.append(make("option", {value: "pick", textContent: "a unit of my choice…"}));
  }
  if (heads) by.append(make("option", {value: "attention", textContent: "attention: click a character"}));
  const layer = make("select", {className: "inside-layer", title: "layer"});
  for (const name of layerNames) layer.append(make("option", {value: name, textContent: `${name} (${data.layers[name]} units)`}));
  const unit = make("input", {className: "inside-unit", type: "number", min: 0, value: 0, title: "unit"});
  const pick = make("span", {className: "inside-pick", hidden: true}, layer, " unit ", unit);
  const headLayer = make("select", {className: "inside-head-layer", title: "layer"});
  const head = make("select", {className: "inside-head", title: "head"});
  if (heads) {
    for (let i = 0; i < heads.layers; i++) headLayer.append(make("option", {value: i, textContent: `layer ${i}`}));
    for (let i = 0; i < heads.heads; i++) head.append(make("option", {value: i, textContent: `head ${i}`}));
  }
  const attend = make("span", {className: "inside-attend", hidden: true}, headLayer, " ", head);
  const status = make("span", {className: "inside-status", role: "status"});
  const legend = make("span", {className: "inside-legend"});
  const controls = make("div", {className: "inside-controls"}, "colour by ", by, " ", pick, attend, " ", legend, " ", status);
  const tip = make("div", {className: "inside-tip", textContent: "hover a character: what the model expected there"});
  const text = make("div", {className: "inside-text"});
  const spans = tokens.map((token, i) => {
    const span = make("span", {textContent: token});
    span.index = i;
    return span;
  });
  text.append(...spans);
  root.replaceChildren(controls, tip, text);

  const shade = (hue, amount) => `hsl(${hue},90%,${100 - Math.min(Math.abs(amount), 1) * 50}%)`;
  function paint() {
    if (mode === "surprise") {
      const top = data.top || 1;
      spans.forEach((span, i) => {
        const bits = data.surprise[i];
        span.style.background = bits === null ? "" : shade(0, 1.1 * bits / top);
      });
      legend.textContent = `darkest: ${top.toFixed(1)} bits or more`;
    } else if (mode === "unit") {
      const values = units[unitName];
      const most = Math.max(1e-9, ...values.filter((v) => v !== null).map(Math.abs));
      spans.forEach((span, i) => {
        const v = values[i];
        span.style.background = v === null ? "" : shade(v >= 0 ? 210 : 30, v / most);
      });
      legend.textContent = `${unitName}: blue above zero, orange below (darkest ±${most.toPrecision(2)})`;
    } else {
      spans.forEach((span) => { span.style.background = ""; span.style.outline = ""; });
      legend.textContent = anchor === null ? "click a character to see where it looked" : "";
      if (anchor === null) return;
      spans[anchor].style.outline = "2px solid #222";
      const looked = (data.attention[anchor] || [])[headLayer.value * heads.heads + Number(head.value)] || [];
      for (let j = 0; j < looked.length; j += 2) spans[looked[j]].style.background = shade(140, looked[j + 1] / 100);
      legend.textContent = `green: where ${JSON.stringify(tokens[anchor])} looked (layer ${headLayer.value}, head ${head.value})`;
    }
  }

  let wanted = null; // the unit chosen last: an answer for an earlier choice that comes later is kept, not shown
  async function chooseUnit(name) {
    wanted = name;
    if (!(name in units)) {
      if (!options.loadUnit) { status.textContent = `${name} is not in this page`; return; }
      status.textContent = `reading ${name}…`;
      try {
        units[name] = await options.loadUnit(name);
      } catch (error) {
        if (wanted === name) status.textContent = error.message;
        return;
      }
      if (wanted !== name) return;
    }
    status.textContent = "";
    mode = "unit";
    unitName = name;
    paint();
  }

  function pickedUnit() {
    const size = data.layers[layer.value] || 1;
    const index = Math.max(0, Math.min(size - 1, Math.floor(Number(unit.value) || 0)));
    unit.value = index;
    unit.max = size - 1;
    return `${layer.value} ${index}`;
  }

  by.addEventListener("change", () => {
    pick.hidden = by.value !== "pick";
    attend.hidden = by.value !== "attention";
    if (by.value === "surprise") { wanted = null; mode = "surprise"; paint(); }
    else if (by.value.startsWith("unit:")) chooseUnit(by.value.slice(5));
    else if (by.value === "pick") chooseUnit(pickedUnit());
    else { wanted = null; mode = "attention"; paint(); }
  });
  for (const control of [layer, unit]) control.addEventListener("change", () => chooseUnit(pickedUnit()));
  for (const control of [headLayer, head]) control.addEventListener("change", paint);
  text.addEventListener("click", (event) => {
    if (mode !== "attention" || event.target.index === undefined) return;
    anchor = event.target.index;
    paint();
  });
  text.addEventListener("mouseover", (event) => {
    const i = event.target.index;
    if (i === undefined) return;
    const bits = data.surprise[i];
    const expected = (data.expected[i] || []).map(([t, p]) => `${JSON.stringify(t)} ${(100 * p).toFixed(1)}%`).join(", ");
    let line = bits === null ? `${JSON.stringify(tokens[i])}: the first token, nothing predicts it`
      : `${JSON.stringify(tokens[i])}: ${bits.toFixed(2)} bits; expected ${expected}`;
    if (mode === "unit" && units[unitName][i] !== null) line += `; ${unitName} ${units[unitName][i].toFixed(3)}`;
    tip.textContent = line;
  });
  paint();
  return {spans, tip, by};
}
