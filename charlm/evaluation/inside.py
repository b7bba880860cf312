"""Inside a language model: for every token of a text, how surprised the model was by it, what it
expected there, and what its units did after reading it.

    inside = inspect_ids(model, ids, vocab, top_k=5)
    inside.surprise[t]       # bits: -log2 p(token t | the tokens before it); None for the first
    inside.expected[t]       # [(token, probability), ...] the model's top_k for position t
    inside.activations["layer 1 h"][t]   # (H,) a recurrent layer's hidden state after token t
    inside.activations["block 3"][t]     # (E,) a transformer block's output at token t
    inside.attention[t, layer, head]     # (seq_len,) where token t looked: positions window_start[t] + j
    inside.rank_units()      # {"inside quotes": [("layer 1 c 37", 0.82), ...], ...}

The text is walked exactly as `charlm eval` walks it (`charlm.data.batches.eval_batches`: rows
with the state carried from batch to batch), so the mean surprise is the loss `eval` reports,
and each position's expectation is what the model predicted there. The layers run one at a time
(the same products as the model's stacked module), so each one's outputs are at hand, and an
LSTM's cell states follow from its gates; the last token, which nothing follows in that walk, has none (NaN). `rank_units` finds the
units that follow simple features of the text (inside quotes, position in the line, ...), by
correlation.

A transformer is walked as `eval` walks it too: each batch cut into windows of its context, each
predicted from an empty one (`Transformer.batch_loss`). Its units are its blocks' outputs, and
`attention` holds every head's weights, from each token over the positions of its window up to it
(hooks on the model's own modules, the weights from their queries and keys). Knows models and
batches; nothing about files or the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from charlm.data.batches import EVAL_LOGITS_BYTES, eval_batches
from charlm.errors import CharlmError
from charlm.models.ensemble import Ensemble, mixture
from charlm.models.minrnn import MinRNN
from charlm.models.recurrent import LanguageModel
from charlm.models.recurrent_layers import one_hot
from charlm.models.state import RecurrentState
from charlm.models.transformer import Transformer
from charlm.text.tokens import Vocab

ROWS, STEPS = 32, 256  # as `charlm eval` walks a text (`lm_eval_batches`' defaults)
ATTENTION_ENTRIES = 2**27  # a transformer's attention kept for a text: 256 MB in float16


def attention_fits(model: nn.Module) -> int | None:
    """How many tokens' attention `inspect_ids` keeps for `model` at most (None: not a transformer)."""
    if not isinstance(model, Transformer):
        return None
    config = model.config
    return ATTENTION_ENTRIES // (config.num_layers * config.num_heads * config.seq_len)


@dataclass
class Inside:
    """What a model made of a text, per token (see the module docstring)."""

    tokens: list[str]
    surprise: list[float | None]
    expected: list[list[tuple[str, float]]]
    activations: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (T, H)
    attention: torch.Tensor | None = None  # a transformer's: (T, layers, heads, seq_len) float16
    window_start: torch.Tensor | None = None  # (T,): the position attention[t, ..., 0] is of

    def attended(self, position: int, layer: int, head: int) -> list[tuple[int, float]]:
        """Where the transformer looked from token `position` with that head: (position, weight)
        for every position of its window up to it; the weights sum to 1. [] for the last token."""
        if self.attention is None or self.window_start is None:
            raise CharlmError("only a transformer's view has attention")
        start = int(self.window_start[position])
        if start < 0:
            return []
        weights = self.attention[position, layer, head, : position - start + 1].float().tolist()
        return [(start + offset, weight) for offset, weight in enumerate(weights)]

    def rank_units(self, best: int = 3) -> dict[str, list[tuple[str, float]]]:
        """The units that follow simple features of the text best: `rank_units`'."""
        return rank_units(self, best)

    def saturation(self) -> float:
        """The surprise, in bits, that a view's colours saturate at: the 95th percentile of the text's."""
        bits = sorted(value for value in self.surprise if value is not None)
        return max(bits[int(0.95 * (len(bits) - 1))], 1e-9) if bits else 1.0

    def mean_surprise(self) -> float:
        """Nats per predicted token: what `charlm eval` reports as the loss."""
        bits = [value for value in self.surprise if value is not None]
        return sum(bits) / max(len(bits), 1) * math.log(2)


@torch.no_grad()
def inspect_ids(model: nn.Module, ids: torch.Tensor, vocab: Vocab, top_k: int = 5) -> Inside:
    """`Inside` of the text `ids` (1-D) for a recurrent language model or the transformer."""
    if len(ids) < 2:
        raise CharlmError("the text has fewer than 2 tokens; nothing to predict")
    if isinstance(model, Transformer):
        return _inspect_transformer(model, ids, vocab, top_k)
    layer_states = _ensemble_layer_states(model) if isinstance(model, Ensemble) else _layer_states(model)
    was_training = model.training
    model.eval()
    count = len(ids)
    device = next(model.parameters()).device
    predictions = _Predictions(count, len(vocab), top_k)
    state = None
    for inputs, targets, at in _eval_walk(ids, len(vocab)):
        rows = inputs.shape[0]
        if state is not None and state.batch_size > rows:  # the last few continue the last row
            state = state.rows(slice(-rows, None))
        logits, found, state = layer_states(inputs.to(device), state)
        predictions.record(logits, targets.to(device), at, found)
    model.train(was_training)
    return predictions.inside(ids, vocab)


def _eval_walk(ids: torch.Tensor, vocab_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(inputs, targets, the positions of the inputs) of each batch, as `charlm eval` walks `ids`."""
    most = EVAL_LOGITS_BYTES // (4 * vocab_size)
    positions = torch.arange(len(ids))
    for (inputs, targets), (at, _) in zip(eval_batches(ids, ROWS, STEPS, most), eval_batches(positions, ROWS, STEPS, most)):
        yield inputs, targets, at


def _layer_states(model: nn.Module) -> Callable:
    """`(inputs, state) -> (logits, {"layer 0 h": (R, S, H), ...}, state after)` of a recurrent model."""
    if isinstance(model, LanguageModel):
        return _recurrent_layer_states(model)
    if isinstance(model, MinRNN):
        return model.layer_states
    raise CharlmError(f"looking inside is for the language models on the registry, not {type(model).__name__}")


def _ensemble_layer_states(model: Ensemble) -> Callable:
    """`_layer_states` of an ensemble of recurrent models: the mixture's logits, and each member's
    layers as "member <k> layer <l> h"."""
    if isinstance(model.members[0], Transformer):
        raise CharlmError("looking inside an ensemble is for recurrent members, not transformers; "
                          "look inside a transformer trained alone")
    members = [_layer_states(member) for member in model.members]

    def layer_states(inputs: torch.Tensor, state: Any) -> tuple:
        logits, found, after = [], {}, []
        for k, (member, own) in enumerate(zip(members, model.member_states(state))):
            member_logits, member_found, member_after = member(inputs, own)
            logits.append(member_logits)
            after.append(member_after)
            found.update({f"member {k} {name}": value for name, value in member_found.items()})
        return mixture(logits), found, model.state_class(after)
    return layer_states


def _recurrent_layer_states(model: LanguageModel) -> Callable:
    """`(inputs, state) -> (logits, {"layer 0 h": (R, S, H), ...}, state after)` for an RNN, GRU or
    LSTM: its layers one at a time (`_layer_activations`), the logits from the last one's outputs
    through the model's own head."""
    config = model.config
    cell = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[config.cell]
    first = config.embedding_size or config.vocab_size  # the first layer's input: an embedding, or one-hot
    device = next(model.parameters()).device
    layers = [cell(first if layer == 0 else config.hidden_size, config.hidden_size, 1, batch_first=True).to(device)
              for layer in range(config.num_layers)]  # shapes only: each runs with the model's layer's weights

    def layer_states(inputs: torch.Tensor, state: RecurrentState | None) -> tuple:
        found, after = _layer_activations(model, layers, inputs, state)
        return model.head(found[f"layer {config.num_layers - 1} h"]), found, after  # (R, S, V): the model's own
    return layer_states


class _Predictions:
    """What a walk over a text found, filled in batch by batch: each target's surprise and the top
    tokens expected there, and the units' activations after each input token."""

    def __init__(self, count: int, vocab_size: int, top_k: int) -> None:
        self.count = count
        self.surprise = torch.full((count,), float("nan"))
        self.top_probabilities = torch.zeros(count, min(top_k, vocab_size))
        self.top_ids = torch.zeros(count, min(top_k, vocab_size), dtype=torch.long)
        self.activations: dict[str, torch.Tensor] = {}  # name -> (T, H), made at the first batch

    def record(self, logits: torch.Tensor, targets: torch.Tensor, at: torch.Tensor,
               found: dict[str, torch.Tensor]) -> None:
        """logits and targets (R, S, ...) of the input tokens at positions `at` (R, S)."""
        log_probabilities = F.log_softmax(logits.float(), dim=-1)
        chosen = log_probabilities.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (R, S)
        flat = (at + 1).reshape(-1)  # the position each target is at
        self.surprise[flat] = (-chosen / math.log(2)).reshape(-1).cpu()
        values, indices = log_probabilities.topk(self.top_probabilities.shape[1], dim=-1)
        self.top_probabilities[flat] = values.exp().reshape(-1, values.shape[-1]).cpu()
        self.top_ids[flat] = indices.reshape(-1, indices.shape[-1]).cpu()
        for name, values in found.items():
            if name not in self.activations:
                self.activations[name] = torch.full((self.count, values.shape[-1]), float("nan"))
            self.activations[name][at.reshape(-1)] = values.reshape(-1, values.shape[-1]).float().cpu()

    def inside(self, ids: torch.Tensor, vocab: Vocab) -> Inside:
        count = len(ids)
        expected = [[] if position == 0 else [(vocab.itos[int(index)], float(probability)) for index, probability
                                              in zip(self.top_ids[position], self.top_probabilities[position])]
                    for position in range(count)]
        shown = [None if position == 0 else float(self.surprise[position]) for position in range(count)]
        return Inside(vocab.decode(ids.tolist()), shown, expected, self.activations)


def _inspect_transformer(model: Transformer, ids: torch.Tensor, vocab: Vocab, top_k: int) -> Inside:
    """`inspect_ids` for the transformer: its blocks' outputs and its heads' attention, over the
    windows `batch_loss` cuts each of eval's batches into."""
    config, count = model.config, len(ids)
    fits = attention_fits(model)
    if count > fits:
        raise CharlmError(f"the transformer's attention is kept for at most {fits:,} tokens; "
                          f"look inside a shorter text (this one has {count:,})")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    heads, context = config.num_heads, config.seq_len
    predictions = _Predictions(count, len(vocab), top_k)
    attention = torch.zeros(count, config.num_layers, heads, context, dtype=torch.float16)
    window_start = torch.full((count,), -1, dtype=torch.long)
    normed: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}
    hooks = [hook for layer, block in enumerate(model.blocks) for hook in (
        block.attention_norm.register_forward_hook(lambda _, __, out, layer=layer: normed.__setitem__(layer, out)),
        block.register_forward_hook(lambda _, __, out, layer=layer: outputs.__setitem__(layer, out[0])))]
    try:
        for inputs, targets, at in _eval_walk(ids, len(vocab)):
            steps = inputs.shape[1]
            whole = steps - steps % context
            for window, part in ((context, slice(0, whole)), (steps - whole, slice(whole, steps))):
                if part.stop <= part.start:
                    continue
                windows, where, windows_targets = (tensor[:, part].reshape(-1, window)  # (windows side by side)
                                                   for tensor in (inputs, at, targets))
                x, _ = model.hidden(windows.to(device))  # each window from an empty context, as batch_loss
                predictions.record(model.head(x), windows_targets.to(device), where,
                                   {f"block {layer}": outputs[layer] for layer in range(config.num_layers)})
                window_start[where.reshape(-1)] = where[:, :1].expand_as(where).reshape(-1)
                for layer, block in enumerate(model.blocks):
                    weights = _attention_weights(block, normed[layer], heads)  # (W', nh, window, window)
                    attention[where.reshape(-1), layer, :, :window] = \
                        weights.transpose(1, 2).reshape(-1, heads, window).to(torch.float16).cpu()
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    inside = predictions.inside(ids, vocab)
    inside.attention, inside.window_start = attention, window_start
    return inside


def _attention_weights(block: nn.Module, normed: torch.Tensor, heads: int) -> torch.Tensor:
    """A block's causal attention weights over a window from an empty context: (B, nh, T, T) from
    the input its attention saw (its LayerNorm's output (B, T, E)), through its own query and key
    projections: softmax(q k^T / sqrt(head size)), what `scaled_dot_product_attention` weighs by."""
    batch, steps, width = normed.shape
    q, k, _ = block.attention.qkv(normed).split(width, dim=2)
    q, k = (t.view(batch, steps, heads, width // heads).transpose(1, 2).float() for t in (q, k))
    scores = q @ k.transpose(-1, -2) / math.sqrt(width // heads)
    future = torch.ones(steps, steps, dtype=torch.bool, device=normed.device).triu(diagonal=1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)


def text_features(tokens: list[str]) -> dict[str, torch.Tensor]:
    """Simple features of a text, per token (T,), that units are ranked against: inside quotation
    marks (a `"`, or a `'` not between two letters, opens or closes them), inside parentheses,
    the position in the line, just after a line break, upper case, inside a word (a letter)."""
    inside_quotes, depth, column = False, 0, 0
    rows: dict[str, list[float]] = {name: [] for name in FEATURES}
    for index, token in enumerate(tokens):
        before = tokens[index - 1] if index else ""
        after = tokens[index + 1] if index + 1 < len(tokens) else ""
        if token in ('"', "\u201c", "\u201d") or (token == "'" and not (before.isalpha() and after.isalpha())):
            inside_quotes = not inside_quotes
        depth = depth + (token == "(") - (token == ")" and depth > 0)
        rows["inside quotes"].append(float(inside_quotes))
        rows["inside parentheses"].append(float(depth > 0))
        rows["position in the line"].append(float(column))
        rows["after a line break"].append(float(before == "\n"))
        rows["upper case"].append(float(token.isupper()))
        rows["inside a word"].append(float(token.isalpha()))
        column = 0 if token == "\n" else column + 1
    return {name: torch.tensor(values) for name, values in rows.items()}


FEATURES = ("inside quotes", "inside parentheses", "position in the line", "after a line break", "upper case",
            "inside a word")


def rank_units(inside: Inside, best: int = 3) -> dict[str, list[tuple[str, float]]]:
    """For each of `text_features`, the `best` units (`"layer 1 c 37"`: a layer's state and the
    unit's index) whose activation after each token correlates most with it (Pearson's r, by
    its size; the sign says which way), over the tokens that have activations. A feature the
    text never varies (no parentheses in it) ranks nothing."""
    features = text_features(inside.tokens)
    ranked: dict[str, list[tuple[str, float]]] = {}
    for feature, values in features.items():
        found: list[tuple[str, float]] = []
        for name, activations in inside.activations.items():
            kept = ~torch.isnan(activations).any(dim=1)  # (T,)
            x, y = activations[kept].double(), values[kept].double()
            if len(y) < 3 or float(y.std()) == 0:
                continue
            x, y = x - x.mean(0), y - y.mean()
            r = (x * y[:, None]).sum(0) / (x.norm(dim=0) * y.norm()).clamp_min(1e-12)  # (H,)
            order = r.abs().argsort(descending=True)[:best]
            found += [(f"{name} {int(unit)}", float(r[unit])) for unit in order]
        if found:
            ranked[feature] = sorted(found, key=lambda item: -abs(item[1]))[:best]
    return ranked


def _layer_activations(model: LanguageModel, layers: list[nn.Module], inputs: torch.Tensor,
                       state: RecurrentState | None) -> tuple[dict[str, torch.Tensor], RecurrentState]:
    """Each recurrent layer's outputs (R, S, H) over `inputs`, and an LSTM's cell states, from
    `state`, and the state after them: the layers run one at a time through `layers`, one-layer
    modules of their shapes, given that layer's weights (the same products as the model's own
    stacked module)."""
    config = model.config
    x = model.embed(inputs) if model.embedding is not None else one_hot(inputs, config.vocab_size,
                                                                        model.head.weight.dtype)
    rows, hidden = inputs.shape[0], config.hidden_size
    found = {}
    for layer in range(config.num_layers):
        weights = {f"{kind}_l0": getattr(model.rnn, f"{kind}_l{layer}")
                   for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        h0 = x.new_zeros(1, rows, hidden) if state is None else state.h[layer : layer + 1]
        initial: object = h0
        if config.cell == "lstm":
            c0 = x.new_zeros(1, rows, hidden) if state is None else state.c[layer : layer + 1]
            initial = (h0, c0)
        outputs, _ = torch.func.functional_call(layers[layer], weights, (x, initial))  # (R, S, H)
        found[f"layer {layer} h"] = outputs
        if config.cell == "lstm":  # c_t = f c_{t-1} + i g, its gates from x_t and the h_{t-1} just found
            before = torch.cat([h0.transpose(0, 1), outputs[:, :-1]], dim=1)  # (R, S, H)
            gates = x @ weights["weight_ih_l0"].T + weights["bias_ih_l0"] + before @ weights["weight_hh_l0"].T \
                + weights["bias_hh_l0"]
            i, f, g, _ = gates.chunk(4, dim=-1)
            i, f, g = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g)
            cells, c = [], c0[0]
            for step in range(x.shape[1]):
                c = f[:, step] * c + i[:, step] * g[:, step]
                cells.append(c)
            found[f"layer {layer} c"] = torch.stack(cells, dim=1)
        x = outputs
    last = lambda kind: torch.stack([found[f"layer {layer} {kind}"][:, -1] for layer in range(config.num_layers)])  # noqa: E731
    return found, RecurrentState(last("h"), last("c") if config.cell == "lstm" else None)
