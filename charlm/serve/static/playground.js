// The playground: the page's half of the API in charlm/serve/app.py. Plain JS, no build step and
// nothing fetched from elsewhere. Text from the server (a model's output, its metadata) is only
// ever set as textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let models = [];
let running = null; // the AbortController of the generation streaming in
let key = ""; // the API key, where the server asks for one: kept in this page only

function say(element, text, isError = false) {
  element.textContent = text;
  element.classList.toggle("error", isError);
}

async function api(path, body, signal) {
  const headers = key ? {Authorization: `Bearer ${key}`} : {};
  const options = body === undefined ? {headers} : {
    method: "POST", headers: {...headers, "Content-Type": "application/json"}, body: JSON.stringify(body), signal,
  };
  const response = await fetch(path, options);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const error = (await response.json()).error;
      message = (error && error.message) || error || message; // OpenAI's error object, or charlm's line
    } catch (ignored) { /* not JSON */ }
    if (response.status === 401) $("key-box").hidden = false;
    throw new Error(message);
  }
  return response;
}

// ---------------------------------------------------------------------------------------------
// Models

function about(model) {
  const config = Object.entries(model.model || {}).filter(([key]) => !key.endsWith("vocab_size"))
    .map(([key, value]) => `${key.replace(/_/g, " ")} ${value}`).join(", ");
  const sizes = Object.entries(model.vocab_sizes || {})
    .map(([key, value]) => `${key.replace(/_size$/, "").replace(/_/g, " ")} ${value}`).join(", ");
  const training = model.training || {};
  const best = typeof training.best_val_loss === "number" ? `, best val loss ${training.best_val_loss.toFixed(3)}` : "";
  const steps = typeof training.steps === "number" ? `${training.steps.toLocaleString()} steps` : "";
  return [model.checkpoint, [model.architecture, config].filter(Boolean).join(": "),
          `${model.tokens} tokens, ${sizes}`, steps + best].filter(Boolean).join("  ·  ");
}

async function loadModels() {
  models = (await (await api("/v1/models")).json()).models;
  say($("about"), "");
  const select = $("model");
  const chosen = select.value; // kept when the models are read again (with a key)
  select.replaceChildren();
  for (const model of models) {
    const option = document.createElement("option");
    option.value = model.name;
    option.textContent = `${model.name} (${model.task === "translate" ? "pairs" : "language model"})`;
    select.append(option);
  }
  if (models.some((model) => model.name === chosen)) select.value = chosen;
  showModel();
}

function showModel() {
  const model = models.find((candidate) => candidate.name === $("model").value);
  if (!model) return;
  $("about").textContent = about(model);
  $("lm").hidden = model.task === "translate";
  $("inside").hidden = model.task === "translate";
  $("inside-view").replaceChildren();
  $("pairs").hidden = model.task !== "translate";
  $("api").hidden = model.task === "translate";
  $("curl").textContent = curl(settings());
  $("openai").textContent = openai(settings());
  drawCurve(model.name);
}

// ---------------------------------------------------------------------------------------------
// Generating: fetch + a ReadableStream of server-sent events (EventSource cannot POST)

const KEY_HEADER = () => key ? " -H 'Authorization: Bearer $CHARLM_API_KEY'" : "";

function curl(body) {
  const shown = JSON.stringify(body).replace(/'/g, "'\\''");
  return `curl -N ${location.origin}/v1/generate -H 'Content-Type: application/json'${KEY_HEADER()} -d '${shown}'`;
}

// The same request in OpenAI's dialect: /v1/completions through the openai client, and its curl.
function openai(body) {
  const asked = {model: body.model, prompt: body.prefix, max_tokens: body.length, temperature: body.temperature,
                 top_p: body.top_p, stream: true};
  if (body.seed !== undefined) asked.seed = body.seed;
  const extra = body.top_k ? `, extra_body={"top_k": ${body.top_k}}` : "";
  const python = Object.entries(asked).map(([name, value]) =>
    `${name}=${typeof value === "boolean" ? (value ? "True" : "False") : JSON.stringify(value)}`).join(", ");
  if (body.top_k) asked.top_k = body.top_k;
  const shown = JSON.stringify(asked).replace(/'/g, "'\\''");
  return `from openai import OpenAI\n` +
    `client = OpenAI(base_url="${location.origin}/v1", api_key=${key ? 'os.environ["CHARLM_API_KEY"]' : '"none"'})\n` +
    `for chunk in client.completions.create(${python}${extra}):\n    print(chunk.choices[0].text, end="")\n\n` +
    `curl -N ${location.origin}/v1/completions -H 'Content-Type: application/json'${KEY_HEADER()} -d '${shown}'`;
}

function settings() {
  const number = (id) => Number($(id).value);
  const body = {
    model: $("model").value, prefix: $("prefix").value, length: number("length"),
    temperature: number("temperature"), top_k: number("top-k"), top_p: number("top-p"), stream: true,
  };
  if ($("seed").value !== "") body.seed = number("seed");
  return body;
}

async function generate(event) {
  event.preventDefault();
  if (running) return;
  running = new AbortController();
  $("generate").disabled = true;
  $("stop").disabled = false;
  const output = $("output");
  output.replaceChildren();
  let first = true;
  const started = performance.now();
  say($("status"), "generating…");
  const body = settings();
  $("curl").textContent = curl(body);
  $("openai").textContent = openai(body);
  try {
    const response = await api("/v1/generate", body, running.signal);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const name = (block.match(/^event: (.*)$/m) || [])[1] || "message";
        const data = JSON.parse((block.match(/^data: (.*)$/m) || [])[1] || "{}");
        if (name === "message") {
          if (first) {
            const prefix = document.createElement("span");
            prefix.className = "prefix";
            prefix.textContent = data.text;
            output.append(prefix);
            first = false;
          } else {
            output.append(data.text);
          }
          output.scrollTop = output.scrollHeight;
        } else if (name === "done") {
          const seconds = (performance.now() - started) / 1000;
          say($("status"), `done: ${body.length} tokens in ${seconds.toFixed(1)} s · seed ${data.seed}`);
        } else if (name === "error") {
          say($("status"), data.error, true);
        }
      }
    }
  } catch (error) {
    if (error.name === "AbortError") say($("status"), "stopped");
    else say($("status"), error.message, true);
  } finally {
    running = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

function stop() {
  if (running) running.abort();
}

// ---------------------------------------------------------------------------------------------
// Translating, and the attention of the first input

async function translate(event) {
  event.preventDefault();
  const inputs = $("inputs").value.split("\n").filter((line) => line.length > 0);
  const table = $("outputs");
  table.replaceChildren();
  $("attention-figure").hidden = true;
  if (!inputs.length) return say($("translate-status"), "type an input first", true);
  say($("translate-status"), "translating…");
  try {
    const model = $("model").value;
    const result = await (await api("/v1/translate", {model, inputs, beam: Number($("beam").value)})).json();
    result.outputs.forEach((output, index) => {
      const row = table.insertRow();
      row.insertCell().textContent = inputs[index];
      row.insertCell().textContent = "→ " + output;
    });
    say($("translate-status"), "");
    try {
      drawAttention(await (await api("/v1/attention", {model, input: inputs[0]})).json());
    } catch (ignored) { /* a model without attention: no map */ }
  } catch (error) {
    say($("translate-status"), error.message, true);
  }
}

function drawAttention({source, output, weights}) {
  const canvas = $("attention"), cell = 22, left = 50, top = 30;
  canvas.width = left + cell * source.length + 4;
  canvas.height = top + cell * output.length + 4;
  const context = canvas.getContext("2d");
  context.font = "12px ui-monospace, monospace";
  context.textAlign = "center";
  context.fillStyle = "#667085";
  source.forEach((character, column) => context.fillText(character, left + cell * (column + 0.5), top - 10));
  context.textAlign = "right";
  output.forEach((character, row) => context.fillText(character, left - 8, top + cell * (row + 0.65)));
  weights.forEach((line, row) => line.forEach((weight, column) => {
    context.fillStyle = `rgba(59, 91, 219, ${weight})`;
    context.fillRect(left + cell * column, top + cell * row, cell - 1, cell - 1);
  }));
  $("attention-figure").hidden = false;
}

// ---------------------------------------------------------------------------------------------
// Inside: the model's view of a text (/v1/inside), drawn by the view `charlm inside --html` writes

async function lookInside(event) {
  event.preventDefault();
  const text = $("inside-text").value;
  if (text.length < 2) return say($("inside-status"), "type a text of 2 characters or more first", true);
  const model = $("model").value;
  say($("inside-status"), "reading…");
  try {
    const data = await (await api("/v1/inside", {model, text})).json();
    const loadUnit = async (unit) => (await (await api("/v1/inside", {model, text, units: [unit]})).json()).units[unit];
    insideView($("inside-view"), data, {loadUnit});
    const bits = data.surprise.filter((value) => value !== null);
    say($("inside-status"), `${bits.length.toLocaleString()} tokens predicted, ` +
        `${(bits.reduce((a, b) => a + b, 0) / Math.max(bits.length, 1)).toFixed(3)} bits each on average`);
  } catch (error) {
    say($("inside-status"), error.message, true);
  }
}

// ---------------------------------------------------------------------------------------------
// The loss curve, as SVG

const SVG = "http://www.w3.org/2000/svg";

function svg(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

let curveCalls = 0;  // drawCurve's calls so far: only the latest one's answer draws

async function drawCurve(name) {
  const call = ++curveCalls;
  const curve = $("curve");
  let metrics;
  try {
    metrics = await (await api(`/v1/models/${encodeURIComponent(name)}/metrics`)).json();
  } catch (error) {
    if (call === curveCalls) say($("curve-note"), error.message, true);
    return;
  }
  if (call !== curveCalls) return;  // another model was chosen while this one's metrics came
  curve.replaceChildren();  // after the answer, so that two calls in flight never both draw
  say($("curve-note"), "");
  const points = metrics.points.filter((point) => typeof point.tokens === "number");
  if (!points.length) return say($("curve-note"), metrics.note || "no evaluations recorded");
  const series = [["train_loss", "train", "var(--train)"], ["val_loss", "validation", "var(--val)"]];
  const values = points.flatMap((point) => series.map(([key]) => point[key]).filter((v) => typeof v === "number"));
  const width = 520, height = 260, left = 48, right = 12, top = 26, bottom = 36;
  const [xMin, xMax] = [Math.min(...points.map((p) => p.tokens)), Math.max(...points.map((p) => p.tokens))];
  const [yMin, yMax] = [Math.min(...values), Math.max(...values)];
  const x = (value) => left + (width - left - right) * (xMax > xMin ? (value - xMin) / (xMax - xMin) : 0.5);
  const y = (value) => top + (height - top - bottom) * (yMax > yMin ? (yMax - value) / (yMax - yMin) : 0.5);
  curve.append(svg("rect", {x: left, y: top, width: width - left - right, height: height - top - bottom,
                            fill: "none", stroke: "#e3e7ee"}));
  for (const fraction of [0, 0.5, 1]) {
    const value = yMin + (yMax - yMin) * fraction;
    curve.append(svg("text", {x: left - 6, y: y(value) + 4, "text-anchor": "end"}, value.toFixed(2)));
    const tokens = xMin + (xMax - xMin) * fraction;
    const anchor = fraction === 0 ? "start" : fraction === 1 ? "end" : "middle";
    curve.append(svg("text", {x: x(tokens), y: height - bottom + 16, "text-anchor": anchor},
                     tokens >= 1e6 ? `${(tokens / 1e6).toFixed(1)}M` : tokens >= 1e3 ? `${(tokens / 1e3).toFixed(0)}k` :
                     `${Math.round(tokens)}`));
  }
  curve.append(svg("text", {x: (left + width - right) / 2, y: height - 4, "text-anchor": "middle"},
                   "tokens seen · loss in nats per token"));
  series.forEach(([key, label, colour], index) => {
    const drawn = points.filter((point) => typeof point[key] === "number");
    if (!drawn.length) return;
    const path = drawn.map((point, i) => `${i ? "L" : "M"}${x(point.tokens).toFixed(1)},${y(point[key]).toFixed(1)}`);
    curve.append(svg("path", {d: path.join(" "), fill: "none", stroke: colour, "stroke-width": 2}));
    const legend = svg("text", {x: width - right - 90 * (series.length - 1 - index), y: top - 10, "text-anchor": "end"},
                       `— ${label}`);  // above the frame, where no curve goes
    legend.style.fill = colour;  // over the stylesheet's grey for text
    curve.append(legend);
  });
}

// ---------------------------------------------------------------------------------------------

function mirror(input, shown, digits) {
  const update = () => { $(shown).textContent = Number($(input).value).toFixed(digits); };
  $(input).addEventListener("input", update);
  update();
}

document.addEventListener("DOMContentLoaded", () => {
  mirror("temperature", "temperature-shown", 2);
  mirror("top-p", "top-p-shown", 2);
  $("generate-form").addEventListener("submit", generate);
  $("stop").addEventListener("click", stop);
  $("translate-form").addEventListener("submit", translate);
  $("inside-form").addEventListener("submit", lookInside);
  $("look-generated").addEventListener("click", () => {
    $("inside-text").value = $("output").textContent;
    $("inside-form").requestSubmit();
  });
  $("model").addEventListener("change", showModel);
  $("key").addEventListener("change", () => {
    key = $("key").value.trim();
    loadModels().catch((error) => say($("about"), error.message, true));
  });
  loadModels().catch((error) => say($("about"), error.message, true));
});
