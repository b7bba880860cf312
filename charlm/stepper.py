"""Stepper: one token at a time through a trained `LanguageModel`, as fast as the matvecs allow.

Generation feeds one token per step, where calling the recurrent module costs far more than its
arithmetic (oneDNN's single-step LSTM takes ~47 ms here). A `Stepper` is built once from a model
in eval mode and runs each step as a handful of matrix-vector products on weights prepared for it:

- the first layer's input projection is folded into a (V, G*H) table: embedding (or one-hot) times
  W_ih plus both biases, so a token's contribution is one row lookup, not a matvec;
- each deeper layer's input and hidden projections are one matmul over [x, h] (two for the GRU,
  whose reset gate touches only the hidden part);
- gate math runs in place on the gate buffer.

Weights are taken from the parameter names torch's modules and `charlm.cells` share, so it serves
fused and from-scratch models alike. It knows nothing about sampling (see `charlm.generate`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from charlm.state import RecurrentState


class Stepper:
    """`logits, state = stepper(ids, state)`: ids (B,) -> logits (B, V); state a `RecurrentState`
    as the model's, None for zeros. Equal to `model.step` in eval mode, but for
    the `banned` ids, whose logits are -inf."""

    @torch.no_grad()
    def __init__(self, model: nn.Module, banned: Sequence[int] = ()) -> None:
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
                    gates = torch.addmm(self.table[ids], h, self.hidden_t[0])  # (B, G*H)
                else:
                    gates = torch.addmm(self.joint_bias[layer], torch.cat([x, h], dim=1), self.joint_t[layer])
                if self.cell == "lstm":
                    x, c = self._lstm(gates, c_all[layer])
                    new_c.append(c)
                else:
                    x = gates.tanh_()
            new_h.append(x)
        logits = torch.addmm(self.head_bias, x, self.head_t)  # (B, V)
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
            from_input = torch.addmm(self.input_bias[layer], x, self.input_t[layer])
        from_hidden = torch.addmm(self.hidden_bias[layer], h, self.hidden_t[layer])  # (B, 3H)
        reset_update = from_input[:, : 2 * size].add_(from_hidden[:, : 2 * size]).sigmoid_()
        reset, update = reset_update.split(size, dim=1)
        candidate = torch.addcmul(from_input[:, 2 * size :], reset, from_hidden[:, 2 * size :]).tanh_()
        return torch.lerp(candidate, h, update)  # (1 - z) * n + z * h
