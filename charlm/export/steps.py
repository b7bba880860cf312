"""Steps: a language model's one-step function as a graph of plain tensors, for ONNX.

    logits, *state = step_graph(ids, *state)      # ids (B,) int64 -> logits (B, V); state by name

ONNX takes and returns tensors, not charlm's state objects. `StepGraph` unpacks a state through its
own `tensors()` / `from_tensors()` (`charlm.models.state`) around `model.step`, so any registered model
whose state keeps one shape from step to step (the recurrent cells' h and c) exports with no code of
its own. A state that grows does not: the transformer's key/value cache is made a fixed window
here (`FixedCacheStep`), with the context policy of `charlm.models.transformer` (a full window keeps
its last `seq_len // 2` ids, recomputed from position 0). `STEPS` names the architectures that
need their own graph; every other one gets `StepGraph`. A seq2seq pair model exports as two graphs,
`PairEncoderGraph` (source -> the decoder's first state) and `PairDecoderStep`.

This module knows nothing about files, vocabs or ONNX itself: it builds torch modules to trace.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from charlm.errors import CharlmError
from charlm.models.ensemble import Ensemble
from charlm.models.state import RecurrentState


class StepGraph(nn.Module):
    """`model.step` with its state as the tensors of `state.tensors()`, in `names` order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.initial = model.init_state(1).tensors()
        self.names = tuple(self.initial)

    def forward(self, ids: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        state_object = self.model.state_class.from_tensors(dict(zip(self.names, state)))
        logits, after = self.model.step(ids, state_object)
        tensors = after.tensors()
        return (logits, *(tensors[name] for name in self.names))

    def initial_state(self, batch_size: int) -> dict[str, Tensor]:
        """The state before any token, for `batch_size` rows: the model's own zeros."""
        return self.model.init_state(batch_size).tensors()


class FixedCacheStep(nn.Module):
    """A transformer's step over a cache of one window: ids (B, S), keys and values
    (L, B, heads, S, head size), and `length` (1,), how many positions hold something. A full window
    is first cut to its last S // 2 ids, recomputed from position 0 (an ONNX If), as generation does."""

    names = ("length", "ids", "keys", "values")

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.context, self.num_heads = config.seq_len, config.num_heads
        self.head_size = config.embedding_size // config.num_heads

    def initial_state(self, batch_size: int) -> dict[str, Tensor]:
        weight = self.model.token_embedding.weight
        config = self.model.config
        cache = weight.new_zeros(config.num_layers, batch_size, self.num_heads, self.context, self.head_size)
        return {"length": torch.zeros(1, dtype=torch.long), "ids": torch.zeros(batch_size, self.context, dtype=torch.long),
                "keys": cache, "values": cache.clone()}

    def _keep_last(self, ids: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A full window -> its last half, recomputed from position 0, padded back to a window."""
        half = self.context // 2
        kept = ids[:, self.context - half :]  # (B, S/2)
        _, cache = self.model.hidden(kept)
        pad = self.context - half
        ids = F.pad(kept, (0, pad))
        keys = torch.stack([F.pad(k, (0, 0, 0, pad)) for k in cache.keys])  # (L, B, nh, S, hd)
        values = torch.stack([F.pad(v, (0, 0, 0, pad)) for v in cache.values])
        return ids, keys, values

    @staticmethod
    def _as_is(ids: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return ids.clone(), keys.clone(), values.clone()

    def forward(self, ids: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        model, (length, cache_ids, keys, values) = self.model, state
        full = (length == self.context).reshape(())
        cache_ids, keys, values = torch.cond(full, self._keep_last, self._as_is, (cache_ids, keys, values))
        length = torch.where(length == self.context, length - (self.context - self.context // 2), length)
        places = torch.arange(self.context, device=ids.device)
        here = places == length  # (S,): the position written now
        seen = (places <= length)[None, None, None]  # (1, 1, 1, S): what it attends to
        cache_ids = torch.where(here[None], ids[:, None], cache_ids)
        x = model.token_embedding(ids) + model.position_embedding(length)  # (B, E)
        batch, width = x.shape
        new_keys, new_values = [], []
        for layer, block in enumerate(model.blocks):
            attention = block.attention
            q, k, v = attention.qkv(block.attention_norm(x)).view(batch, 3, self.num_heads, self.head_size).unbind(1)
            layer_keys = torch.where(here[:, None], k[:, :, None], keys[layer])  # (B, nh, S, hd)
            layer_values = torch.where(here[:, None], v[:, :, None], values[layer])
            scores = (layer_keys @ q[..., None]).transpose(-1, -2) / math.sqrt(self.head_size)  # (B, nh, 1, S)
            weights = torch.softmax(scores.masked_fill(~seen, float("-inf")), dim=-1)
            y = (weights @ layer_values).reshape(batch, width)  # (B, E)
            x = x + attention.projection(y)
            x = x + block.mlp(block.mlp_norm(x))
            new_keys.append(layer_keys)
            new_values.append(layer_values)
        logits = model.head(x[:, None])[:, 0]  # (B, V)
        return logits, length + 1, cache_ids, torch.stack(new_keys), torch.stack(new_values)


STEPS: dict[str, type[nn.Module]] = {"transformer": FixedCacheStep}  # architectures with their own graph


def step_graph(model: nn.Module, architecture: str) -> nn.Module:
    """The graph that exports `model`'s step: its own (`STEPS`) or `StepGraph`. An ensemble's state
    is its members' states, so `StepGraph` exports it where its members need no graph of their own."""
    if architecture in STEPS and isinstance(model, Ensemble):
        raise CharlmError(f"an ensemble of {architecture}s does not export (their caches grow); export a "
                          f"{architecture} trained alone, or train the ensemble of a recurrent --model")
    return STEPS.get(architecture, StepGraph)(model).eval()


# ---------------------------------------------------------------------------------------------
# Pair models: an encoder graph, then a decoder step like a language model's


class PairEncoderGraph(nn.Module):
    """source (B, S) -> the decoder's first state, as tensors (`PairDecoderStep.names` order). The rows
    are of one length, without padding: the graph does not pack sequences, so it sees no padding."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, source: Tensor) -> tuple[Tensor, ...]:
        encoder = self.model.encoder
        outputs, final = encoder.rnn(encoder.embedding(source))  # (B, S, H); dropout is off in eval
        state = self.model.decoder.init_state((outputs, RecurrentState.of(final), source >= 0))
        return PairDecoderStep.flatten(state)


class PairDecoderStep(nn.Module):
    """`model.decode_step` with the decoder's state as tensors: the hidden state's, then the context,
    the encoder's outputs (memory), their keys for attention (zeros (B, S, 1) without it) and the mask."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        lstm = model.config.cell == "lstm"
        self.names = ("h", *(("c",) if lstm else ()), "context", "memory", "keys", "mask")

    @staticmethod
    def flatten(state: Any) -> tuple[Tensor, ...]:
        keys = state.memory[..., :1] * 0 if state.keys is None else state.keys
        return (*state.hidden.tensors().values(), state.context, state.memory, keys, state.mask)

    def forward(self, ids: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        from charlm.models.seq2seq import DecoderState

        hidden = RecurrentState(*state[: len(self.names) - 4])
        context, memory, keys, mask = state[len(self.names) - 4 :]
        attention = self.model.decoder.attention is not None
        logits, after = self.model.decode_step(ids, DecoderState(hidden, context, memory, keys if attention else None,
                                                                 mask))
        return (logits, *self.flatten(after))
