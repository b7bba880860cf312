"""Transformer: a decoder-only, causal transformer language model on the recurrent models' contract.

    logits, cache = model(ids, cache)      # ids (B, T) int64 -> logits (B, T, V)

Token and learned position embeddings, `num_layers` pre-LayerNorm blocks of multi-head causal
self-attention (torch's `scaled_dot_product_attention`, so its flash and memory-efficient kernels
run where they exist) and an MLP 4x as wide, a final LayerNorm, and a head tied to the token
embedding: the GPT of nanoGPT, without biases.

Its state is a `KVCache`: the ids it has seen and each layer's keys and values, so that
generation runs the prefix in one pass, then one position per token. The positions are learned
for a context of `seq_len`; when a window is full the model keeps its last `seq_len // 2` ids,
recomputes their keys and values once from position 0, and goes on one position at a time. A
token is then predicted from at least half a window, for about two positions of work per token,
where nanoGPT's `generate` recomputes the whole window at every token. `forward` applies that
policy to whatever it is given, so a text fed in one call or token by token gives the same logits.

Training and evaluation (`batch_loss`) cut a batch into windows of `seq_len`, each predicted from
an empty context, as nanoGPT trains and evaluates: nothing is carried between batches.

This module knows nothing about data, training, checkpoints or sampling strategies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from charlm.presets import ARCHITECTURE_DEFAULTS
from charlm.models.protocol import ModelDefaults
from charlm.models.recurrent_stepper import ban_vector, low_precision, product

DEFAULTS = ARCHITECTURE_DEFAULTS["transformer"]


@dataclass
class TransformerConfig:
    vocab_size: int
    embedding_size: int = DEFAULTS["embedding_size"]  # the model's width; the MLP is 4x as wide
    num_layers: int = DEFAULTS["num_layers"]
    num_heads: int = DEFAULTS["num_heads"]
    seq_len: int = DEFAULTS["seq_len"]  # the context: how many positions have an embedding
    dropout: float = DEFAULTS["dropout"]

    def __post_init__(self) -> None:
        for name in ("vocab_size", "embedding_size", "num_layers", "num_heads", "seq_len"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
        if self.embedding_size % self.num_heads:
            raise ValueError(f"embedding_size {self.embedding_size} does not split into {self.num_heads} heads: "
                             "the width must be a multiple of the number of heads")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class KVCache:
    """What a transformer has seen: the ids of its window (B, T) and, per layer, their keys and
    values (B, heads, T, head size). Saved as {"ids", "keys.<layer>", "values.<layer>"}."""

    ids: Tensor
    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]

    @property
    def batch_size(self) -> int:
        return self.ids.shape[0]

    @property
    def length(self) -> int:
        return self.ids.shape[1]

    def map(self, function: Callable[[Tensor], Tensor]) -> KVCache:
        """The keys and values through `function`; the ids follow them to their device and stay int64."""
        keys, values = tuple(map(function, self.keys)), tuple(map(function, self.values))
        return KVCache(self.ids.to(keys[0].device), keys, values)

    def rows(self, index: slice | Tensor) -> KVCache:
        return KVCache(self.ids[index], tuple(k[index] for k in self.keys), tuple(v[index] for v in self.values))

    def tensors(self) -> dict[str, Tensor]:
        return {"ids": self.ids, **{f"keys.{layer}": k for layer, k in enumerate(self.keys)},
                **{f"values.{layer}": v for layer, v in enumerate(self.values)}}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> KVCache:
        layers = sum(name.startswith("keys.") for name in tensors)
        expected = {"ids", *(f"{kind}.{layer}" for kind in ("keys", "values") for layer in range(layers))}
        if layers == 0 or set(tensors) != expected:
            raise ValueError(f"a key/value cache holds ids, keys.<layer> and values.<layer>, not {sorted(tensors)}")
        cache = cls(tensors["ids"], tuple(tensors[f"keys.{layer}"] for layer in range(layers)),
                    tuple(tensors[f"values.{layer}"] for layer in range(layers)))
        shape = (cache.batch_size, cache.length)
        if any(t.dim() != 4 or (t.shape[0], t.shape[2]) != shape for t in (*cache.keys, *cache.values)):
            raise ValueError(f"keys and values must be (B, heads, T, head size) with (B, T) = {shape}, the ids' shape")
        return cache

    @classmethod
    def join(cls, states: Sequence[KVCache]) -> KVCache:
        """The rows of several caches, in order; they must hold windows of the same length."""
        if len({state.length for state in states}) > 1:
            raise ValueError(f"cannot join caches of different lengths ({sorted({s.length for s in states})})")
        layers = range(len(states[0].keys))
        return cls(torch.cat([state.ids for state in states]),
                   tuple(torch.cat([state.keys[layer] for state in states]) for layer in layers),
                   tuple(torch.cat([state.values[layer] for state in states]) for layer in layers))


class SelfAttention(nn.Module):
    """Multi-head attention of the new positions over the cached ones and, causally, each other."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.num_heads, self.dropout = config.num_heads, config.dropout
        self.qkv = nn.Linear(config.embedding_size, 3 * config.embedding_size, bias=False)
        self.projection = nn.Linear(config.embedding_size, config.embedding_size, bias=False)
        self.residual_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, E), past keys and values (B, nh, P, hd) or None -> (B, T, E), and the keys and
        values of all P + T positions."""
        batch, steps, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)  # (B, T, E) each
        heads = (batch, steps, self.num_heads, width // self.num_heads)
        q, k, v = (t.view(heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        if past is not None and past[0].shape[2] > 0:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, nh, P + T, hd)
        seen = k.shape[2] - steps  # P
        mask = None  # the first window: is_causal; one new position sees everything
        if seen and steps > 1:  # new position i sees the P cached ones and new ones up to i
            mask = torch.ones(steps, seen + steps, dtype=torch.bool, device=x.device).tril(diagonal=seen)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=not seen and steps > 1)  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(batch, steps, width)  # (B, T, E)
        return self.residual_dropout(self.projection(y)), k, v


class Block(nn.Module):
    """x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)): pre-LayerNorm, as GPT-2."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        width = config.embedding_size
        self.attention_norm = nn.LayerNorm(width, bias=False)
        self.attention = SelfAttention(config)
        self.mlp_norm = nn.LayerNorm(width, bias=False)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width, bias=False), nn.GELU(),
                                 nn.Linear(4 * width, width, bias=False), nn.Dropout(config.dropout))

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
        attended, k, v = self.attention(self.attention_norm(x), past)
        x = x + attended
        return x + self.mlp(self.mlp_norm(x)), k, v  # (B, T, E)


class Transformer(ModelDefaults, nn.Module):
    """ids (B, T) -> token + position embeddings (B, T, E) -> blocks (B, T, E) -> LayerNorm -> logits
    (B, T, V) through the token embedding's own matrix."""

    state_class = KVCache

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.position_embedding = nn.Embedding(config.seq_len, config.embedding_size)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.embedding_size, bias=False)
        # GPT-2's initialisation: N(0, 0.02), the projections into the residual stream scaled down by
        # its depth, so that the stream's variance does not grow with the number of layers.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for block in self.blocks:
            for projection in (block.attention.projection, block.mlp[2]):
                nn.init.normal_(projection.weight, mean=0.0, std=0.02 / math.sqrt(2 * config.num_layers))

    def hidden(self, ids: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """ids (B, T) after the cache's P positions, P + T <= seq_len -> the top block's output
        (B, T, E), and the cache of all P + T positions."""
        seen = 0 if cache is None else cache.length
        positions = torch.arange(seen, seen + ids.shape[1], device=ids.device)
        x = self.dropout(self.token_embedding(ids) + self.position_embedding(positions))  # (B, T, E)
        keys, values = [], []
        for layer, block in enumerate(self.blocks):
            x, k, v = block(x, None if cache is None else (cache.keys[layer], cache.values[layer]))
            keys.append(k)
            values.append(v)
        ids = ids if cache is None or not seen else torch.cat([cache.ids, ids], dim=1)
        return x, KVCache(ids, tuple(keys), tuple(values))

    def head(self, x: Tensor) -> Tensor:
        """(B, T, E) -> logits (B, T, V): the head is the token embedding."""
        return F.linear(self.final_norm(x), self.token_embedding.weight)

    def forward(self, ids: Tensor, state: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """Logits (B, T, V) of ids (B, T) after what `state` has seen (None: nothing), and the cache
        after them. Past a full window, its last `seq_len // 2` ids are kept (see the docstring)."""
        cache = self.init_state(ids.shape[0]) if state is None else state
        pieces, start, context = [], 0, self.config.seq_len
        while start < ids.shape[1]:
            if cache.length == context:
                cache = self.keep_last(cache, context // 2)
            take = min(ids.shape[1] - start, context - cache.length)
            x, cache = self.hidden(ids[:, start : start + take], cache)
            pieces.append(self.head(x))
            start += take
        if not pieces:
            return self.head(self.token_embedding(ids)), cache  # (B, 0, V)
        return (pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)), cache

    def keep_last(self, cache: KVCache, count: int) -> KVCache:
        """The cache of the last `count` ids of `cache`, recomputed from position 0."""
        if count == 0:
            return self.init_state(cache.batch_size)
        return self.hidden(cache.ids[:, -count:])[1]

    def batch_loss(self, batch: tuple[Tensor, ...], state: Any = None) -> tuple[Tensor, int, None]:
        """The trainer's contract: (summed loss, number of predicted tokens, None). batch = (inputs
        (B, T), targets (B, T)), cut into windows of seq_len (a shorter last one), each predicted
        from an empty context; nothing is carried, so `state` is always None."""
        inputs, targets = batch
        rows, steps = inputs.shape
        context = self.config.seq_len
        whole = steps - steps % context
        loss = inputs.new_zeros((), dtype=torch.float32)
        for window, part in ((context, slice(0, whole)), (steps - whole, slice(whole, steps))):
            if part.stop > part.start:  # windows of the batch's rows, side by side: (B * n, window)
                x, _ = self.hidden(inputs[:, part].reshape(-1, window))
                logits = self.head(x)
                loss = loss + F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                              targets[:, part].reshape(-1), reduction="sum")
        return loss, targets.numel(), None

    def step(self, ids: Tensor, state: KVCache | None) -> tuple[Tensor, KVCache]:
        """One step of generation: ids (B,) -> logits (B, V)."""
        logits, state = self(ids[:, None], state)
        return logits[:, 0], state

    def stepper(self, banned: Sequence[int] = (), precision: str = "fp32") -> Stepper:
        """A fast `step` for generation with the current weights, `banned` ids at -inf, its
        products in `precision` (fp32 or bf16; see `charlm.models.recurrent_stepper.product`)."""
        return Stepper(self, banned, precision)

    def stepper_precisions(self) -> tuple[str, ...]:
        return ("fp32", "bf16")

    def init_state(self, batch_size: int) -> KVCache:
        """An empty cache: no ids, keys and values of no positions, on the weights' device and dtype."""
        weight = self.token_embedding.weight
        empty = weight.new_zeros(batch_size, self.config.num_heads, 0,
                                 self.config.embedding_size // self.config.num_heads)
        layers = self.config.num_layers
        return KVCache(torch.zeros(batch_size, 0, dtype=torch.long, device=weight.device), (empty,) * layers,
                       (empty,) * layers)

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The optimizer's groups, as nanoGPT makes them: weight decay on the matrices (the
        embeddings included), none on the LayerNorms' gains."""
        matrices = [parameter for parameter in self.parameters() if parameter.dim() >= 2]
        gains = [parameter for parameter in self.parameters() if parameter.dim() < 2]
        return [{"params": matrices, "weight_decay": weight_decay}, {"params": gains, "weight_decay": 0.0}]

    def num_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())

    def describe(self) -> str:
        """One line for the user: "transformer 4x128, 4 heads, context 64"."""
        config = self.config
        return (f"transformer {config.num_layers}x{config.embedding_size}, {config.num_heads} heads, "
                f"context {config.seq_len}")


class Stepper:
    """`logits, cache = stepper(ids, cache)`: ids (B,) -> logits (B, V), as `model.step` in eval
    mode but for the `banned` ids, whose logits are -inf, and faster: the weights are laid out
    once for one position's products, the residual adds are folded into them, no module is
    called, and the keys and values are written in place into buffers of a whole window.

    A cache it returns is a view of its buffers. Only the cache it returned last is extended in
    place (the position written is one no other cache holds); any other cache, the prefix's
    included, is first copied into fresh buffers, and so is what a full window keeps.

    In bf16 its matrices are bf16 and every product runs in it; the residual stream, the norms,
    the keys and values and attention stay fp32 (`charlm.models.recurrent_stepper.product`)."""

    @torch.no_grad()
    def __init__(self, model: Transformer, banned: Sequence[int] = (), precision: str = "fp32") -> None:
        self.model, config = model, model.config
        self.context, self.num_heads = config.seq_len, config.num_heads
        self.tokens, self.positions = model.token_embedding.weight.detach(), model.position_embedding.weight.detach()
        weights = lambda linear: low_precision(linear.weight.detach().t().contiguous(), precision)  # noqa: E731  (in, out)
        self.layers = [(block.attention_norm.weight.detach(), weights(block.attention.qkv),
                        weights(block.attention.projection), block.mlp_norm.weight.detach(), weights(block.mlp[0]),
                        weights(block.mlp[2])) for block in model.blocks]
        self.final_norm = model.final_norm.weight.detach()
        self.head_t = low_precision(self.tokens.t().contiguous(), precision)  # (E, V)
        self.ban = ban_vector(config.vocab_size, banned, self.tokens.device, self.tokens.dtype)
        self.last: KVCache | None = None  # the cache returned last, a view of `self.buffers`

    def _own(self, cache: KVCache) -> None:
        """Copy `cache` into fresh buffers of a whole window: ids (B, S), keys and values (B, nh, S, hd)."""
        rows, length = cache.batch_size, cache.length
        self.ids = cache.ids.new_zeros(rows, self.context)
        self.ids[:, :length] = cache.ids
        self.keys, self.values = [], []
        for own, theirs in ((self.keys, cache.keys), (self.values, cache.values)):
            for tensor in theirs:
                buffer = tensor.new_zeros(rows, self.num_heads, self.context, tensor.shape[-1])
                buffer[:, :, :length] = tensor
                own.append(buffer)

    @torch.no_grad()
    def __call__(self, ids: Tensor, cache: KVCache | None) -> tuple[Tensor, KVCache]:
        cache = self.model.init_state(ids.shape[0]) if cache is None else cache
        if cache.length == self.context:  # a full window: keep its last half, recomputed
            cache = self.model.keep_last(cache, self.context // 2)
        if cache is not self.last:
            self._own(cache)
        position, width = cache.length, self.tokens.shape[1]
        self.ids[:, position] = ids
        x = self.tokens[ids] + self.positions[position]  # (B, E)
        for layer, (norm1, qkv_t, projection_t, norm2, up_t, down_t) in enumerate(self.layers):
            qkv = product(F.layer_norm(x, (width,), norm1), qkv_t)  # (B, 3E)
            q, k, v = qkv.view(x.shape[0], 3, self.num_heads, -1).unbind(1)  # (B, nh, hd) each
            self.keys[layer][:, :, position] = k  # (B, nh, hd) into (B, nh, S, hd)
            self.values[layer][:, :, position] = v
            keys, values = self.keys[layer][:, :, : position + 1], self.values[layer][:, :, : position + 1]
            y = F.scaled_dot_product_attention(q[:, :, None], keys, values)  # (B, nh, 1, hd)
            x = product(y.view(x.shape[0], width), projection_t, x)  # x + attention
            x = product(F.gelu(product(F.layer_norm(x, (width,), norm2), up_t)), down_t, x)  # x + MLP
        logits = product(F.layer_norm(x, (width,), self.final_norm), self.head_t, self.ban)  # (B, V)
        length = position + 1
        self.last = KVCache(self.ids[:, :length], tuple(k[:, :, :length] for k in self.keys),
                            tuple(v[:, :, :length] for v in self.values))
        return logits, self.last
