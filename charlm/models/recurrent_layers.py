"""`recurrent(module, x, state)`: a batch-first nn.RNN, nn.GRU or nn.LSTM run by the path that is
exact and fastest here: charlm's CPU kernels (`charlm.models.kernels`: one input projection for
every step, a lean time loop, one autograd.Function per layer) or the module itself, where the
kernels do not apply (other devices, bidirectional, proj_size, autocast, ...) or measure slower:
without autograd (torch's fused C++ loops are as fast there), and when training a float32 LSTM
with oneDNN (mkldnn) on, whose fused LSTM beats separate matmuls.

It knows nothing about tokens, models or training: it is a drop-in for calling a recurrent module.
"""

import weakref
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from charlm.models.kernels import _GRUCell, _Layer, _LSTMCell, _RNNCell, dropout
from charlm.models.state import RecurrentState, TorchState


def _is_ids(x: Tensor) -> bool:
    return x.dim() == 2 and not x.is_floating_point() and not x.is_complex()


def one_hot(ids: Tensor, size: int, dtype: torch.dtype) -> Tensor:
    """ids (B, T) -> the one-hot vectors (B, T, size) they stand for, in `dtype`."""
    return F.one_hot(ids, size).to(dtype)


def supports(module: nn.Module, x: Tensor) -> bool:
    """Whether the fast path can compute `module(x)` exactly (x: input, or ids for one-hot input)."""
    dtype = module.weight_ih_l0.dtype if _is_ids(x) and hasattr(module, "weight_ih_l0") else x.dtype
    return (
        isinstance(module, (nn.RNN, nn.GRU, nn.LSTM))
        and module.mode in ("RNN_TANH", "RNN_RELU", "GRU", "LSTM")
        and module.batch_first
        and module.bias
        and not module.bidirectional
        and module.proj_size == 0
        and x.device.type == "cpu"
        and (x.dim() == 3 or _is_ids(x))
        and dtype in (torch.float32, torch.float64)
        and all(p.dtype == dtype and p.device.type == "cpu" for p in module.parameters())
        and not _autocast_on_cpu()  # the fast path computes in the parameters' dtype only
    )


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _is_faster(module: nn.RNNBase, x: Tensor, state: TorchState | None) -> bool:
    """Whether the fast path measured faster than the module itself (see
    scripts/bench_kernels.py) for this call; only asked where it `supports` it."""
    states = () if state is None else state if isinstance(state, tuple) else (state,)
    records_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, *states, *module.parameters())
    )
    # torch runs a float32 nn.LSTM through oneDNN's fused RNN primitive when mkldnn is on
    onednn_lstm = (
        module.mode == "LSTM"
        and module.weight_ih_l0.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )
    if records_grad:
        # Training: we beat autograd's per-step graph, but not oneDNN's fused LSTM.
        return not onednn_lstm
    # Inference: torch's fused C++ loops are as fast, except oneDNN's LSTM on single
    # steps with large weights, which it re-lays-out on every call (2-5x slower
    # than ours at H=512, 15% faster at H=128).
    return onednn_lstm and x.shape[1] == 1 and module.hidden_size >= 256


def _make_cell(module: nn.RNNBase):
    if module.mode == "GRU":
        return _GRUCell()
    if module.mode == "LSTM":
        return _LSTMCell()
    return _RNNCell("relu" if module.mode == "RNN_RELU" else "tanh")


def recurrent(
    module: nn.RNNBase, x: Tensor, state: TorchState | None = None, fast: bool | None = None,
    weights: Mapping[str, Tensor] | None = None, locked: bool = False,
) -> tuple[Tensor, TorchState]:
    """Compute `module(x, state)` for a batch-first nn.RNN, nn.GRU or nn.LSTM.

    x is (B, T, I), or integer ids (B, T) standing for one-hot rows of size I (the
    fast path then gathers columns of W_ih instead of multiplying by the zeros);
    state is h (L, B, H), or (h, c) for an LSTM, None for zeros.
    Returns (output (B, T, H), final state) exactly as the module would.
    `fast=None` takes the fast path where it applies and measured faster,
    `True` insists on it (ValueError where it cannot), `False` calls the module.
    `weights` stand in for the module's parameters of those names (DropConnect's masked W_hh), and
    `locked` makes the dropout between layers variational (one mask per sequence, see `dropout`).
    """
    if fast is None:
        fast = supports(module, x) and _is_faster(module, x, state)
    elif fast and not supports(module, x):
        raise ValueError(f"the fast path does not support {module} with input {tuple(x.shape)} {x.dtype}")
    if not fast:
        inputs = one_hot(x, module.input_size, module.weight_ih_l0.dtype) if _is_ids(x) else x
        if locked and module.training and module.dropout > 0 and module.num_layers > 1:
            return _layer_by_layer(module, inputs, state, weights or {})
        return module(inputs, state) if not weights else torch.func.functional_call(module, dict(weights), (inputs, state))

    weight = lambda name: weights[name] if weights and name in weights else getattr(module, name)  # noqa: E731
    is_lstm = module.mode == "LSTM"
    batch = x.shape[0]
    initial = RecurrentState.of(state) or RecurrentState.zeros(
        module.num_layers, batch, module.hidden_size, is_lstm, like=module.weight_hh_l0)
    h_init, c_init = initial.h, initial.c

    cell = _make_cell(module)
    layer_input = x.transpose(0, 1).contiguous()  # (T, B, I), or ids (T, B)
    h_final, c_final = [], []
    for layer in range(module.num_layers):
        if layer > 0 and module.dropout > 0:
            layer_input = dropout(layer_input, module.dropout, module.training, 0 if locked else None)
        layer_input, h_n, c_n = _Layer.apply(
            cell,
            layer_input,
            h_init[layer],
            c_init[layer] if is_lstm else None,
            weight(f"weight_ih_l{layer}"),
            weight(f"weight_hh_l{layer}"),
            weight(f"bias_ih_l{layer}"),
            weight(f"bias_hh_l{layer}"),
        )
        h_final.append(h_n)
        c_final.append(c_n)
    output = layer_input.transpose(0, 1).contiguous()  # (B, T, H)
    h_n = torch.stack(h_final)  # (L, B, H)
    return output, ((h_n, torch.stack(c_final)) if is_lstm else h_n)


# A module's one-layer twins, on the meta device (no memory): `_layer_by_layer` calls them with the
# module's own weights for one layer at a time, so that locked dropout can go between the layers.
_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layer_by_layer(
    module: nn.RNNBase, x: Tensor, state: TorchState | None, weights: Mapping[str, Tensor],
) -> tuple[Tensor, TorchState]:
    """`module(x, state)` one layer at a time through torch's own one-layer module, with locked
    dropout between the layers; x (B, T, I) batch-first."""
    twins = _TWINS.get(module)
    if twins is None:
        kind = type(module)
        make = lambda size: kind(size, module.hidden_size, 1, batch_first=True, device="meta",  # noqa: E731
                                 **({"nonlinearity": module.nonlinearity} if kind is nn.RNN else {}))
        twins = _TWINS[module] = (make(module.input_size), make(module.hidden_size))
    is_lstm = module.mode == "LSTM"
    initial = RecurrentState.of(state)
    finals = []
    for layer in range(module.num_layers):
        if layer > 0:
            x = dropout(x, module.dropout, True, locked_dim=1)
        own = {name: weights.get(f"{name}_l{layer}", getattr(module, f"{name}_l{layer}"))
               for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        layer_state = None if initial is None else initial.map(lambda tensor: tensor[layer : layer + 1]).torch_form()
        x, final = torch.func.functional_call(twins[layer > 0], {f"{name}_l0": value for name, value in own.items()},
                                              (x, layer_state))
        finals.append(RecurrentState.of(final))
    joined = RecurrentState(torch.cat([final.h for final in finals]),
                            torch.cat([final.c for final in finals]) if is_lstm else None)
    return x, joined.torch_form()
