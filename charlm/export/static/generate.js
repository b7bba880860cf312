// The exported page: a charlm model's one-step graph (model.onnx) and its metadata (model.json), run
// by ONNX Runtime Web's wasm backend in this tab, one thread, with the files beside this page: no
// server but a static one, no network. Text from the model is only set as textContent.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null; // {session, meta, stoi, banned}
let stopped = false;

function say(element, text, isError = false) {
  element.textContent = text;
  element.classList.toggle("error", isError);
}

// mulberry32: the same seed, the same text in this page (not charlm generate's: another generator).
function randomSource(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// The checks charlm's own reader makes of what it needs: the graph's names are the metadata's.
function check(session, meta) {
  const names = meta.state.map((entry) => entry.name);
  const inputs = ["ids", ...names.map((name) => `state.${name}`)];
  const outputs = ["logits", ...names.map((name) => `next.${name}`)];
  const same = (a, b) => a.length === b.length && a.every((value, i) => value === b[i]);
  if (meta.format !== "charlm-onnx" || meta.version !== 1) throw new Error("model.json is not charlm's");
  if (!same(session.inputNames, inputs) || !same(session.outputNames, outputs)) {
    throw new Error("model.onnx is not the model model.json describes; export the page again");
  }
}

function initialState(meta, batch) {
  const state = {};
  for (const entry of meta.state) {
    const shape = entry.shape.slice();
    if (entry.batch_axis !== null) shape[entry.batch_axis] = batch;
    const size = shape.reduce((a, b) => a * b, 1);
    const data = entry.dtype === "int64" ? new BigInt64Array(size).fill(BigInt(entry.initial))
      : new Float32Array(size).fill(entry.initial);
    state[`state.${entry.name}`] = new ort.Tensor(entry.dtype, data, shape);
  }
  return state;
}

async function step(id, state) {
  const feeds = {ids: new ort.Tensor("int64", BigInt64Array.from([BigInt(id)]), [1]), ...state};
  const results = await model.session.run(feeds);
  const next = {};
  for (const entry of model.meta.state) next[`state.${entry.name}`] = results[`next.${entry.name}`];
  return [Float32Array.from(results.logits.data), next];
}

// temperature, then top-k, then top-p, as charlm.generation.sampling orders them; banned ids never.
function pick(logits, temperature, topK, topP, random) {
  for (const id of model.banned) logits[id] = -Infinity;
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  if (temperature === 0) return best;
  let order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]);
  if (topK > 0) order = order.slice(0, topK);
  const top = logits[order[0]] / temperature;
  let weights = order.map((id) => Math.exp(logits[id] / temperature - top));
  const total = weights.reduce((a, b) => a + b, 0);
  weights = weights.map((w) => w / total);
  if (topP < 1) {
    let sum = 0, keep = 0;
    while (keep < weights.length && (keep === 0 || sum < topP)) sum += weights[keep++];
    order = order.slice(0, keep);
    weights = weights.slice(0, keep);
  }
  let r = random() * weights.reduce((a, b) => a + b, 0);
  for (let i = 0; i < order.length; i++) {
    r -= weights[i];
    if (r <= 0) return order[i];
  }
  return order[order.length - 1];
}

// The prefix preprocessed as the corpus was (charlm.text.tokens.preprocess_prefix), then split.
function tokens(text) {
  if (model.meta.preprocess === "d2l") text = text.replace(/[^A-Za-z]+/g, " ").toLowerCase();
  return model.meta.tokens === "char" ? Array.from(text) : text.split(/\s+/).filter(Boolean);
}

// A context for an empty prefix, as charlm.generation.sampling.start_ids: a line break, a space, or
// the most frequent token.
function startIds() {
  for (const token of ["\n", " "]) if (model.stoi.has(token)) return [model.stoi.get(token)];
  return [Math.min(model.meta.vocab.itos.length - 1, model.meta.vocab.reserved.length + 1)];
}

async function generate(event) {
  event.preventDefault();
  const output = $("output"), status = $("status");
  const prefix = tokens($("prefix").value);
  const unknown = prefix.filter((token) => !model.stoi.has(token));
  if (unknown.length) {
    say(status, `the model never saw ${JSON.stringify(unknown.slice(0, 5).join(""))}`, true);
    return;
  }
  const length = Math.max(0, parseInt($("length").value || "0", 10));
  const temperature = parseFloat($("temperature").value), topP = parseFloat($("top-p").value);
  const topK = Math.max(0, parseInt($("top-k").value || "0", 10));
  const seedText = $("seed").value;
  const random = randomSource(seedText === "" ? Math.floor(Math.random() * 2 ** 32) : parseInt(seedText, 10));
  const glue = model.meta.tokens === "char" ? "" : " ";
  stopped = false;
  $("generate").disabled = true;
  $("stop").disabled = false;
  output.replaceChildren();
  const shown = document.createElement("span");
  shown.className = "prefix";
  shown.textContent = prefix.join(glue) + (prefix.length && glue ? glue : "");
  output.append(shown);
  const made = document.createTextNode("");
  output.append(made);
  say(status, "generating…");
  try {
    let state = initialState(model.meta, 1), logits = null;
    for (const id of prefix.length ? prefix.map((t) => model.stoi.get(t)) : startIds()) {
      [logits, state] = await step(id, state);
    }
    const started = performance.now();
    for (let i = 0; i < length && !stopped; i++) {
      const id = pick(logits, temperature, topK, topP, random);
      made.data += model.meta.vocab.itos[id] + (glue && i < length - 1 ? glue : "");
      [logits, state] = await step(id, state);
    }
    const seconds = (performance.now() - started) / 1000;
    say(status, `done: ${length} tokens in ${seconds.toFixed(2)} s`);
  } catch (error) {
    say(status, String(error.message || error), true);
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

async function load() {
  $("generate").disabled = true; // until the model is loaded
  $("temperature").min = "0"; // 0: the likeliest token, as charlm generate's --temperature 0
  ort.env.wasm.wasmPaths = new URL("./", document.baseURI).href; // the runtime's files beside the page
  ort.env.wasm.numThreads = 1; // no SharedArrayBuffer: any static host, no cross-origin isolation
  try {
    const meta = await (await fetch("model.json")).json();
    const session = await ort.InferenceSession.create("model.onnx", {executionProviders: ["wasm"]});
    check(session, meta);
    const stoi = new Map(meta.vocab.itos.map((token, id) => [token, id]));
    const banned = [0, ...meta.vocab.reserved.map((token) => stoi.get(token))];
    model = {session, meta, stoi, banned};
    say($("about"), `${meta.describe}  ·  ${meta.tokens} tokens, vocab ${meta.vocab_size}`);
    $("generate").disabled = false;
  } catch (error) {
    say($("about"), `cannot load the model: ${error.message || error}`, true);
  }
}

$("temperature").addEventListener("input", () => { $("temperature-shown").value = $("temperature").value; });
$("top-p").addEventListener("input", () => { $("top-p-shown").value = parseFloat($("top-p").value).toFixed(2); });
$("generate-form").addEventListener("submit", generate);
$("stop").addEventListener("click", () => { stopped = true; });
load();
