"""MinRNN: the minGRU and minLSTM language models of "Were RNNs All We Needed?" (Feng et al., 2024).

    logits, state = model(ids, state)      # ids (B, T) int64 -> logits (B, T, V)

A min-RNN's gates read the input only, never the previous state:

    minGRU:   z = sigmoid(W_z x),                     h_t = (1 - z) h_{t-1} + z g(W_h x)
    minLSTM:  f = sigmoid(W_f x), i = sigmoid(W_i x), h_t = f/(f+i) h_{t-1} + i/(f+i) g(W_h x)

with g(x) = x + 0.5 for x >= 0 and sigmoid(x) below, so that every candidate is positive. Each is
h_t = a_t h_{t-1} + b_t with a_t in (0, 1) and b_t > 0 known for all positions at once, so a whole
sequence is one scan (`scan`): h_t = A_t h_0 + A_t sum_{k<=t} b_k / A_k with A_t = a_1 ... a_t,
in log space as a cumulative sum and a log-cumsum-exp (Heinsen's), in chunks of `CHUNK` positions
so that the logs it subtracts stay small. That is how a GPU trains; on a CPU the same h are made
position by position (`sequential`: one multiply-add each), which measured faster there. The same
recurrence of one position is a generation step, from a fixed-size state.

The stack is the reference code's (lucidrains' minGRU-pytorch `minLM`): an embedding; per layer
x + minRNN(RMSNorm(x)) with an output projection where the state is wider than the model, then
x + MLP(RMSNorm(x)) (4x wide, GELU); a final RMSNorm and a linear head. Each min-RNN reads its
input token-shifted (RWKV's, the speed-run's "smear"): x_t + mu * (x_{t-1} - x_t), with mu per
channel learned from 0, so a gate sees the character before as well as the character itself.

Its state is a `MinRNNState`: each layer's h and the last position's shifted-from input, so a
sequential batch goes on where the last one ended and generation runs one character at a time.

This module knows nothing about data, training, checkpoints or sampling strategies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from charlm.models.protocol import ModelDefaults
from charlm.presets import ARCHITECTURE_DEFAULTS

MIN_CELLS = ("mingru", "minlstm")
DEFAULTS = ARCHITECTURE_DEFAULTS["mingru"]  # minlstm's are the same
CHUNK = 64  # positions per scan: log A_t falls with t, and fp32 loses what it subtracts from a large log


@dataclass
class MinRNNConfig:
    vocab_size: int
    cell: str = MIN_CELLS[0]  # set by the registry's name
    embedding_size: int = DEFAULTS["embedding_size"]  # the model's width (the residual stream)
    hidden_size: int = DEFAULTS["hidden_size"]  # each layer's state; projected back where it differs
    num_layers: int = DEFAULTS["num_layers"]
    dropout: float = DEFAULTS["dropout"]

    def __post_init__(self) -> None:
        if self.cell not in MIN_CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; choose one of {', '.join(MIN_CELLS)}")
        for name in ("vocab_size", "embedding_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class MinRNNState:
    """h (L, B, H), each layer's state, and previous (L, B, E), each layer's normed input at the
    last position (what the next position's token shift reads). Saved as {"h", "previous"}."""

    h: Tensor
    previous: Tensor

    @property
    def batch_size(self) -> int:
        return self.h.shape[1]

    def map(self, function: Callable[[Tensor], Tensor]) -> MinRNNState:
        return MinRNNState(function(self.h), function(self.previous))

    def rows(self, index: slice | Tensor) -> MinRNNState:
        return self.map(lambda tensor: tensor[:, index])

    def tensors(self) -> dict[str, Tensor]:
        return {"h": self.h, "previous": self.previous}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> MinRNNState:
        if set(tensors) != {"h", "previous"}:
            raise ValueError(f"a min-RNN's state holds tensors h and previous, not {sorted(tensors)}")
        return cls(tensors["h"], tensors["previous"])

    @classmethod
    def join(cls, states: Sequence[MinRNNState]) -> MinRNNState:
        return cls(torch.cat([state.h for state in states], dim=1),
                   torch.cat([state.previous for state in states], dim=1))


def log_g(x: Tensor) -> Tensor:
    """log g(x), g(x) = x + 0.5 for x >= 0 and sigmoid(x) below (positive, continuous): each branch
    finite everywhere, so that `torch.where`'s gradients are."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def scan(log_a: Tensor, log_b: Tensor, h0: Tensor | None = None, chunk: int = CHUNK) -> Tensor:
    """h_t = a_t h_{t-1} + b_t along dim 1, from h0 (B, H) (None: zeros), given log a and log b
    (B, T, H): all h (B, T, H). Within a chunk, h_t = A_t h0 + exp(log A_t + logcumsumexp(log b - log A)),
    log A the cumulative sum of log a; the chunk's last h is the next one's h0."""
    pieces = []
    for start in range(0, log_a.shape[1], chunk):
        log_a_star = log_a[:, start : start + chunk].cumsum(dim=1)  # (B, C, H): log A_t, falling
        h = (log_a_star + (log_b[:, start : start + chunk] - log_a_star).logcumsumexp(dim=1)).exp()
        if h0 is not None:
            h = h + log_a_star.exp() * h0[:, None]
        pieces.append(h)
        h0 = h[:, -1]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)


def sequential(log_a: Tensor, log_b: Tensor, h0: Tensor | None = None) -> Tensor:
    """`scan`'s h, position by position: h_t = a_t h_{t-1} + b_t, one multiply-add each. On a CPU
    this is the faster form to train by (see the README: the scan's exp, log and log-cumsum-exp cost
    more there than a loop of small multiply-adds); a GPU takes the scan."""
    a, b = log_a.exp(), log_b.exp()
    h, outputs = (torch.zeros_like(a[:, 0]) if h0 is None else h0), []
    for position in range(a.shape[1]):
        h = torch.addcmul(b[:, position], a[:, position], h)
        outputs.append(h)
    return torch.stack(outputs, dim=1)


class MinRNNLayer(nn.Module):
    """x (B, T, E) -> h (B, T, H) of a minGRU or minLSTM, by `scan`, from h0 (B, H) or zeros."""

    def __init__(self, cell: str, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.cell = cell
        gates = 2 if cell == "mingru" else 3  # the candidate, and z (or f and i)
        self.project = nn.Linear(input_size, gates * hidden_size, bias=False)

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """log a and log b (B, T, H) of h_t = a_t h_{t-1} + b_t; in fp32 at least, whatever autocast did."""
        projected = self.project(x)
        projected = projected.to(torch.promote_types(projected.dtype, torch.float32))
        if self.cell == "mingru":
            candidate, z = projected.chunk(2, dim=-1)
            return -F.softplus(z), -F.softplus(-z) + log_g(candidate)  # log(1 - z), log z + log g
        candidate, f, i = projected.chunk(3, dim=-1)
        difference = F.softplus(-f) - F.softplus(-i)  # log sigmoid(i) - log sigmoid(f)
        return -F.softplus(difference), -F.softplus(-difference) + log_g(candidate)  # log f/(f+i), log i/(f+i) + log g

    def forward(self, x: Tensor, h0: Tensor | None = None) -> Tensor:
        return (sequential if x.device.type == "cpu" else scan)(*self.coefficients(x), h0)


class Block(nn.Module):
    """x + out(minRNN(shift(RMSNorm(x)))), then x + MLP(RMSNorm(x))."""

    def __init__(self, config: MinRNNConfig) -> None:
        super().__init__()
        width, hidden = config.embedding_size, config.hidden_size
        self.recurrent_norm = nn.RMSNorm(width)
        self.shift = nn.Parameter(torch.zeros(width))  # mu: how much of the position before each channel reads
        self.recurrent = MinRNNLayer(config.cell, width, hidden)
        self.out = nn.Linear(hidden, width, bias=False) if hidden != width else nn.Identity()
        self.mlp_norm = nn.RMSNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, h0: Tensor | None, previous: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, E), the state before it (h0 (B, H), previous (B, E); None: zeros) -> x (B, T, E),
        h (B, T, H), and the last normed input (B, E)."""
        normed = self.recurrent_norm(x)  # (B, T, E)
        if previous is None:  # zeros before the first position
            previous = normed.new_zeros(normed.shape[0], normed.shape[2])
        before = torch.cat([previous[:, None].to(normed.dtype), normed[:, :-1]], dim=1)  # (B, T, E): x_{t-1}
        h = self.recurrent(torch.lerp(normed, before, self.shift.to(normed.dtype)), h0)  # (B, T, H)
        x = x + self.dropout(self.out(h))
        x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        return x, h, normed[:, -1]


class MinRNN(ModelDefaults, nn.Module):
    """ids (B, T) -> embedding (B, T, E) -> blocks (B, T, E) -> RMSNorm -> logits (B, T, V)."""

    state_class = MinRNNState

    def __init__(self, config: MinRNNConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.final_norm = nn.RMSNorm(config.embedding_size)
        self.head = nn.Linear(config.embedding_size, config.vocab_size, bias=False)

    def layer_states(self, ids: Tensor, state: MinRNNState | None = None
                     ) -> tuple[Tensor, dict[str, Tensor], MinRNNState]:
        """ids (B, T), T >= 1, after `state` -> logits (B, T, V), each layer's h by the inside view's
        names ({"layer 0 h": (B, T, H), ...}), and the state after them."""
        x = self.dropout(self.embedding(ids))  # (B, T, E)
        found, last_h, previous = {}, [], []
        for layer, block in enumerate(self.blocks):
            h0, before = (None, None) if state is None else (state.h[layer], state.previous[layer])
            x, h, last = block(x, h0, before)
            found[f"layer {layer} h"] = h
            last_h.append(h[:, -1])
            previous.append(last.to(h.dtype))  # fp32 or wider, as h
        return self.head(self.final_norm(x)), found, MinRNNState(torch.stack(last_h), torch.stack(previous))

    def forward(self, ids: Tensor, state: MinRNNState | None = None) -> tuple[Tensor, MinRNNState]:
        if ids.shape[1] == 0:  # nothing read: the state as it was
            state = self.init_state(ids.shape[0]) if state is None else state
            return self.head(self.embedding(ids)), state
        logits, _, state = self.layer_states(ids, state)
        return logits, state

    def batch_loss(self, batch: tuple[Tensor, ...], state: MinRNNState | None = None
                   ) -> tuple[Tensor, int, MinRNNState]:
        """The trainer's contract: (summed loss, number of predicted tokens, state to carry);
        batch = (inputs (B, T), targets (B, T))."""
        inputs, targets = batch
        logits, state = self(inputs, state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum")
        return loss, targets.numel(), state

    def step(self, ids: Tensor, state: MinRNNState | None) -> tuple[Tensor, MinRNNState]:
        """One step of generation: ids (B,) -> logits (B, V)."""
        logits, state = self(ids[:, None], state)
        return logits[:, 0], state

    def init_state(self, batch_size: int) -> MinRNNState:
        """Zeros: h (L, B, H) and previous (L, B, E), on the weights' device, in fp32 or wider."""
        config, weight = self.config, self.head.weight
        dtype = torch.promote_types(weight.dtype, torch.float32)
        return MinRNNState(weight.new_zeros(config.num_layers, batch_size, config.hidden_size, dtype=dtype),
                           weight.new_zeros(config.num_layers, batch_size, config.embedding_size, dtype=dtype))

    def describe(self) -> str:
        """One line for the user: "mingru 3x192" (", state 288" where the state is wider)."""
        config = self.config
        wider = f", state {config.hidden_size}" if config.hidden_size != config.embedding_size else ""
        return f"{config.cell} {config.num_layers}x{config.embedding_size}{wider}"

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Weight decay on the matrices (the embedding included), none on the gains, biases and shifts."""
        matrices = [parameter for parameter in self.parameters() if parameter.dim() >= 2]
        others = [parameter for parameter in self.parameters() if parameter.dim() < 2]
        return [{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
