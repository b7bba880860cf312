"""From-scratch twins of torch's recurrent layers, written out gate by gate for learning.

`ScratchRNN`, `ScratchGRU` and `ScratchLSTM` do what `nn.RNN`, `nn.GRU` and `nn.LSTM` do with
`batch_first=True` and `bias=True`, but every equation is spelled out as in the textbook (d2l, the
classic lessons). They are drop-in twins, not approximations:

- parameters are named, shaped, ordered and initialised exactly like torch's
  (`weight_ih_l{k}` (G*H, in), `weight_hh_l{k}` (G*H, H), `bias_ih_l{k}`, `bias_hh_l{k}`, all
  uniform(-1/sqrt(H), 1/sqrt(H))), so `load_state_dict` works in both directions;
- the gate order is torch's (GRU: reset, update, new; LSTM: input, forget, cell, output);
- `forward(x (B, T, I), state=None) -> (output (B, T, H), state)`, where state is h (L, B, H) for
  RNN/GRU and (h, c) for LSTM, None meaning zeros; dropout between layers in training mode only.

For speed the input projection of a whole layer is one matmul before the time loop; the loop does
only the hidden matmul and elementwise gate math.

This module knows nothing about tokens, embeddings, output heads, training or which cell a model
picks by name: it is only the recurrent layer. Only torch and the standard library are imported.
"""

import math
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from charlm.models.state import RecurrentState, TorchState

# Per-layer state inside this module is always a tuple whose first element is h: (h,) for
# RNN/GRU, (h, c) for LSTM. Only `_unpack_state` and `_pack_state` know the public form.
LayerState = tuple[torch.Tensor, ...]


class _ScratchRecurrent(nn.Module):
    """Shared machinery: torch-compatible parameters, the layer and time loops, dropout, state.

    A subclass sets `gate_count` (G, the number of H-sized blocks in each weight matrix),
    `carries_cell_state` (True for LSTM) and writes `step`, the equations of one time step.
    """

    gate_count: int = 1
    carries_cell_state: bool = False

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
                 locked: bool = False) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1 or num_layers < 1:
            raise ValueError(
                f"input_size, hidden_size and num_layers must be positive, got "
                f"{input_size}, {hidden_size}, {num_layers}"
            )
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        if dropout > 0.0 and num_layers == 1:
            warnings.warn(
                f"dropout={dropout} has no effect with num_layers=1: dropout is applied only between layers",
                stacklevel=2,
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.locked = locked  # variational dropout between layers: one mask per sequence, for every step
        gates_size = self.gate_count * hidden_size
        for layer in range(num_layers):
            layer_input_size = input_size if layer == 0 else hidden_size
            # Same names and registration order as torch, so state dicts line up key for key.
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(gates_size, layer_input_size)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(gates_size, hidden_size)))
            self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(gates_size)))
            self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.empty(gates_size)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every weight and bias uniformly in (-1/sqrt(H), 1/sqrt(H)), as torch does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        return text + (f", dropout={self.dropout}" if self.dropout else "")

    def step(
        self, input_projection: torch.Tensor, state: LayerState, weight_hh: torch.Tensor, bias_hh: torch.Tensor
    ) -> LayerState:
        """One time step: input_projection (B, G*H) is W_ih x_t + b_ih, already computed."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state: TorchState | None = None) -> tuple[torch.Tensor, TorchState]:
        """Run all layers over x (B, T, I); return output (B, T, H) of the last layer and the final state."""
        if x.dim() != 3 or x.size(-1) != self.input_size:
            raise ValueError(f"expected input of shape (B, T, {self.input_size}), got {tuple(x.shape)}")
        batch_size, seq_len, _ = x.shape
        layer_states = self._unpack_state(state, x)
        final_states = []
        layer_input = x  # (B, T, I) for the first layer, (B, T, H) after
        for layer in range(self.num_layers):
            if layer > 0 and self.locked and self.training and self.dropout > 0:
                keep = (torch.rand(batch_size, layer_input.shape[-1], dtype=x.dtype, device=x.device)
                        >= self.dropout).unsqueeze(1)  # (B, 1, H): drawn as kernels.dropout draws it
                layer_input = layer_input * keep.to(layer_input.dtype) / (1 - self.dropout)
            elif layer > 0:
                layer_input = F.dropout(layer_input, self.dropout, self.training)
            weight_ih = getattr(self, f"weight_ih_l{layer}")
            weight_hh = getattr(self, f"weight_hh_l{layer}")
            bias_ih = getattr(self, f"bias_ih_l{layer}")
            bias_hh = getattr(self, f"bias_hh_l{layer}")
            # One matmul for every time step at once; only the hidden matmul stays in the loop.
            input_projection = F.linear(layer_input, weight_ih, bias_ih)  # (B, T, G*H)
            # unbind, not [:, t]: its backward stacks the T gradients once, where indexing would
            # allocate a full (B, T, G*H) gradient at every step.
            input_projections = input_projection.unbind(dim=1)  # T x (B, G*H)
            layer_state = layer_states[layer]
            hidden_states = []
            for time in range(seq_len):
                layer_state = self.step(input_projections[time], layer_state, weight_hh, bias_hh)
                hidden_states.append(layer_state[0])  # h_t (B, H)
            layer_input = torch.stack(hidden_states, dim=1)  # (B, T, H)
            final_states.append(layer_state)
        return layer_input, self._pack_state(final_states)

    def _unpack_state(self, state: TorchState | None, x: torch.Tensor) -> list[LayerState]:
        """Public state (h or (h, c), each (L, B, H), or None) -> one (h,) or (h, c) tuple per layer."""
        expected_shape = (self.num_layers, x.size(0), self.hidden_size)
        if state is None:
            zeros = RecurrentState.zeros(self.num_layers, x.size(0), self.hidden_size, self.carries_cell_state, like=x)
            parts = tuple(zeros.tensors().values())
        elif self.carries_cell_state:
            if not isinstance(state, tuple) or len(state) != 2:
                raise ValueError("LSTM state must be a tuple (h, c)")
            parts = state
        else:
            parts = (state,)
        for part in parts:
            if tuple(part.shape) != expected_shape:
                raise ValueError(f"expected state of shape {expected_shape}, got {tuple(part.shape)}")
        return [tuple(part[layer] for part in parts) for layer in range(self.num_layers)]

    def _pack_state(self, layer_states: list[LayerState]) -> TorchState:
        """One (h,) or (h, c) tuple per layer -> public state h or (h, c), each (L, B, H)."""
        parts = tuple(torch.stack(per_layer, dim=0) for per_layer in zip(*layer_states))
        return parts if self.carries_cell_state else parts[0]


class ScratchRNN(_ScratchRecurrent):
    """Elman RNN: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).

    `nonlinearity` is "tanh" (torch's default), "relu", or "identity", the linear SRN of the
    hand-computed classroom examples.
    """

    gate_count = 1
    activations = {"tanh": torch.tanh, "relu": torch.relu, "identity": lambda pre_activation: pre_activation}

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        nonlinearity: str = "tanh",
        locked: bool = False,
    ) -> None:
        if nonlinearity not in self.activations:
            raise ValueError(f"nonlinearity must be one of {sorted(self.activations)}, got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, dropout, locked)
        self.nonlinearity = nonlinearity

    def extra_repr(self) -> str:
        return super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"

    def step(
        self, input_projection: torch.Tensor, state: LayerState, weight_hh: torch.Tensor, bias_hh: torch.Tensor
    ) -> LayerState:
        (hidden,) = state  # (B, H)
        hidden = self.activations[self.nonlinearity](input_projection + F.linear(hidden, weight_hh, bias_hh))
        return (hidden,)


class ScratchGRU(_ScratchRecurrent):
    """Gated recurrent unit, torch's gate order (reset, update, new):

        r_t = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
        z_t = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
        n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}
    """

    gate_count = 3

    def step(
        self, input_projection: torch.Tensor, state: LayerState, weight_hh: torch.Tensor, bias_hh: torch.Tensor
    ) -> LayerState:
        (hidden,) = state  # (B, H)
        input_reset, input_update, input_new = input_projection.chunk(3, dim=-1)  # 3 x (B, H)
        hidden_reset, hidden_update, hidden_new = F.linear(hidden, weight_hh, bias_hh).chunk(3, dim=-1)
        reset = torch.sigmoid(input_reset + hidden_reset)
        update = torch.sigmoid(input_update + hidden_update)
        # The reset gate scales the hidden projection *including* b_hn, which is why the hidden
        # bias cannot be folded into the input projection for this gate.
        candidate = torch.tanh(input_new + reset * hidden_new)
        hidden = (1 - update) * candidate + update * hidden
        return (hidden,)


class ScratchLSTM(_ScratchRecurrent):
    """Long short-term memory, torch's gate order (input, forget, cell, output):

        i_t = sigmoid(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)
        f_t = sigmoid(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
        g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
        o_t = sigmoid(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
        c_t = f_t * c_{t-1} + i_t * g_t
        h_t = o_t * tanh(c_t)
    """

    gate_count = 4
    carries_cell_state = True

    def step(
        self, input_projection: torch.Tensor, state: LayerState, weight_hh: torch.Tensor, bias_hh: torch.Tensor
    ) -> LayerState:
        hidden, cell = state  # (B, H) each
        gates = input_projection + F.linear(hidden, weight_hh, bias_hh)  # (B, 4H)
        input_gate, forget_gate, cell_candidate, output_gate = gates.chunk(4, dim=-1)  # 4 x (B, H)
        input_gate = torch.sigmoid(input_gate)
        forget_gate = torch.sigmoid(forget_gate)
        cell_candidate = torch.tanh(cell_candidate)
        output_gate = torch.sigmoid(output_gate)
        cell = forget_gate * cell + input_gate * cell_candidate
        hidden = output_gate * torch.tanh(cell)
        return (hidden, cell)
