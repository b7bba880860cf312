"""Stepper: one token at a time through a trained `LanguageModel`, as fast as the matvecs allow.

Generation feeds one token per step, where calling the recurrent module costs far more than its
arithmetic (oneDNN's single-step LSTM takes ~47 ms here). A `Stepper` is built once from a model
in eval mode and runs each step as a handful of matrix-vector products on weights prepared for it:

- the first layer's input projection is folded into a (V, G*H) table: embedding (or one-hot) times
  W_ih plus both biases, so a token's contribution is one row lookup, not a matvec;
- each deeper layer's input and hidden projections are one matmul over [x, h] (two for the GRU,
  whose reset gate touches only the hidden part);
- gate math runs in place on the gate buffer.

In bf16 (`precision="bf16"`) the matrices are kept in bf16 and each product runs in it (its
input cast, its output back to fp32, the bias added in fp32): the state, the gate math and the
logits stay fp32, as bf16 autocast keeps them in training. `product` is that rule, for the
transformer's stepper too.

Weights are taken from the parameter names torch's modules and `charlm.models.cells` share, so it serves
fused and from-scratch models alike. It knows nothing about sampling (see `charlm.generation.sampling`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from charlm.models.state import RecurrentState

LOW_PRECISION = {"fp32": None, "bf16": torch.bfloat16}  # a stepper's precision -> its matrices' dtype


def product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight (+ bias), fp32 out: in fp32 one addmm, as ever; with a bf16 `weight` the
    product in bf16 (x cast to it), then the bias added in fp32."""
    if weight.dtype == x.dtype:
        return torch.mm(x, weight) if bias is None else torch.addmm(bias, x, weight)
    out = torch.mm(x.to(weight.dtype), weight).float()
    return out if bias is None else out.add_(bias)


def ban_vector(vocab_size: int, banned: Sequence[int], device: torch.device,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(V,): 0, and -inf at the `banned` ids; added to logits (a stepper folds it into its head)."""
    ban = torch.zeros(vocab_size, dtype=dtype, device=device)
    ban[list(banned)] = float("-inf")
    return ban


def low_precision(matrix: torch.Tensor, precision: str) -> torch.Tensor:
    """A stepper's copy of a weight matrix for `precision` ("fp32": as it is, "bf16")."""
    if precision not in LOW_PRECISION:
        raise ValueError(f"a stepper's precision is fp32 or bf16, not {precision!r}")
    dtype = LOW_PRECISION[precision]
    return matrix if dtype is None else matrix.to(dtype)


class Stepper:
    """`logits, state = stepper(ids, state)`: ids (B,) -> logits (B, V); state a `RecurrentState`
    as the model's, None for zeros. Equal to `model.step` in eval mode, but for
    the `banned` ids, whose logits are -inf (and, in bf16, for the rounding of its products)."""

    @torch.no_grad()
    def __init__(self, model: nn.Module, banned: Sequence[int] = (), precision: str = "fp32") -> None:
        config, rnn = model.config, model.rnn
        self.cell, self.num_layers, self.hidden_size = config.cell, config.num_layers, config.hidden_size
        weight = lambda name, layer: getattr(rnn, f"{name}_l{layer}").detach()
        w_ih, bias = weight("weight_ih", 0), weight("bias_ih", 0)
        if self.cell != "gru":  # the GRU keeps b_hn apart: it sits inside the reset gate
            bias = bias + weight("bias_hh", 0)
        inputs = model.embedding.weight.detach() if model.embedding is not None else None
        self.table = (F.linear(inputs, w_ih) if inputs is not None else w_ih.t()) + bias  # (V, G*H)
        self.hidden_t = [weight("weight_hh", layer).t().contiguous() for layer in range(self.num_layers)]
        self.hidden_bias = [weight("bias_hh", layer) for layer in range(self.num_layers)]
        self.input_t = [None] + [weight("weight_ih", layer).t().contiguous() for layer in range(1, self.num_layers)]
        self.input_bias = [None] + [weight("bias_ih", layer) for layer in range(1, self.num_layers)]
        if self.cell != "gru":  # deeper layers: one matmul over [x, h] with one bias
            self.joint_t = [None] + [torch.cat([self.input_t[k], self.hidden_t[k]]) for k in range(1, self.num_layers)]
            self.joint_bias = [None] + [self.input_bias[k] + self.hidden_bias[k] for k in range(1, self.num_layers)]
        self.head_t = model.head.weight.detach().t().contiguous()  # (H, V)
        low = lambda matrices: [None if matrix is None else low_precision(matrix, precision) for matrix in matrices]  # noqa: E731
        self.hidden_t, self.input_t, self.head_t = low(self.hidden_t), low(self.input_t), low([self.head_t])[0]
        if self.cell != "gru":
            self.joint_t = low(self.joint_t)
        self.head_bias = model.head.bias.detach().clone()
        self.head_bias[list(banned)] = float("-inf")  # banned ids: -inf logits at no cost per step

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, state: RecurrentState | None) -> tuple[torch.Tensor, RecurrentState]:
        if state is None:
            state = RecurrentState.zeros(self.num_layers, ids.shape[0], self.hidden_size, self.cell == "lstm",
                                         like=self.table)
        h_all, c_all = state.h, state.c
        new_h, new_c = [], []
        x = None
        for layer in range(self.num_layers):
            h = h_all[layer]  # (B, H)
            if self.cell == "gru":
                x = self._gru(ids if layer == 0 else x, h, layer)
            else:
                if layer == 0:
                    gates = product(h, self.hidden_t[0], self.table[ids])  # (B, G*H)
                else:
                    gates = product(torch.cat([x, h], dim=1), self.joint_t[layer], self.joint_bias[layer])
                if self.cell == "lstm":
                    x, c = self._lstm(gates, c_all[layer])
                    new_c.append(c)
                else:
                    x = gates.tanh_()
            new_h.append(x)
        logits = product(x, self.head_t, self.head_bias)  # (B, V)
        h_out = new_h[0][None] if self.num_layers == 1 else torch.stack(new_h)  # (L, B, H)
        return logits, RecurrentState(h_out, torch.stack(new_c) if self.cell == "lstm" else None)

    def _lstm(self, gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.hidden_size
        gates[:, : 2 * size].sigmoid_()  # input, forget
        gates[:, 2 * size : 3 * size].tanh_()  # cell candidate
        gates[:, 3 * size :].sigmoid_()  # output
        input_gate, forget_gate, candidate, output_gate = gates.split(size, dim=1)
        c = torch.addcmul(forget_gate * c, input_gate, candidate)
        return output_gate * torch.tanh(c), c

    def _gru(self, x: torch.Tensor, h: torch.Tensor, layer: int) -> torch.Tensor:
        size = self.hidden_size
        if layer == 0:
            from_input = self.table[x]  # (B, 3H): W_ih x + b_ih
        else:
            from_input = product(x, self.input_t[layer], self.input_bias[layer])
        from_hidden = product(h, self.hidden_t[layer], self.hidden_bias[layer])  # (B, 3H)
        reset_update = from_input[:, : 2 * size].add_(from_hidden[:, : 2 * size]).sigmoid_()
        reset, update = reset_update.split(size, dim=1)
        candidate = torch.addcmul(from_input[:, 2 * size :], reset, from_hidden[:, 2 * size :]).tanh_()
        return torch.lerp(candidate, h, update)  # (1 - z) * n + z * h
