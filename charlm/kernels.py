"""Fast CPU forward and backward for torch's own recurrent layers.

`recurrent(module, x, state)` computes what `module(x, state)` computes for an
nn.RNN (tanh or relu), nn.GRU or nn.LSTM, reading the module's own parameters,
but runs the sequence its own way on CPU:

  forward   one big matmul for the input projection of every time step, then a
            time loop that only does h @ W_hh^T plus in-place gate math into
            buffers allocated once per call;
  backward  one autograd.Function per layer for the whole sequence: a reverse
            time loop that only computes d(gates) and dh @ W_hh, then the weight
            gradients as single big matmuls over all time steps, instead of
            autograd's 2*T small ones.

Everything runs time-major, (T, B, ...), so each step reads and writes
contiguous (B, ...) slices; the batch-first layout is restored only at the ends.

This module knows nothing about tokens, models or training: it is a drop-in for
calling a recurrent module, and falls back to the module itself wherever the
fast path does not apply (other devices, bidirectional, proj_size, ...).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = Tensor | tuple[Tensor, Tensor]  # h (L, B, H), or (h, c) for an LSTM


def _tanh(x: Tensor, out: Tensor) -> Tensor:
    # tanh(x) = 2 * sigmoid(2x) - 1: on the AVX-512 CPU we measured, torch.tanh
    # runs ~3x slower than torch.sigmoid, so these four ops beat the one.
    return torch.mul(x, 2, out=out).sigmoid_().mul_(2).sub_(1)


# --------------------------------------------------------------------------- cells
# A cell turns the gate pre-activations of all steps into hidden states (forward)
# and the hidden-state gradients back into gate gradients (backward). Shapes:
# T time steps, B batch, H hidden, G gates; `gates` arrives as the input
# projection x @ W_ih^T + bias, (T, B, G*H), and is overwritten in place.


class _RNNCell:
    num_gates = 1

    def __init__(self, nonlinearity: str):
        self.relu = nonlinearity == "relu"

    def input_bias(self, b_ih: Tensor, b_hh: Tensor) -> Tensor:
        return b_ih + b_hh

    def forward(self, gates, h0, c0, w_hh, b_hh):
        out = gates  # (T, B, H): each pre-activation becomes its own output
        h = h0
        for t in range(len(gates)):
            out[t].addmm_(h, w_hh.t())
            h = out[t].relu_() if self.relu else _tanh(out[t], out=out[t])
        return out, h.clone(), None, None

    def backward(self, saved, out, h0, c0, grad_out, grad_h, grad_c, w_hh, need_h0):
        steps = len(out)
        dgates = torch.empty_like(out)  # (T, B, H)
        one, zero = out.new_ones(()), out.new_zeros(())
        dh = grad_h + grad_out[-1]  # (B, H), total gradient reaching h_t
        scratch = torch.empty_like(dh)
        for t in reversed(range(steps)):
            if self.relu:
                torch.where(out[t] > 0, dh, zero, out=dgates[t])
            else:  # dh * (1 - h^2)
                torch.mul(dh, torch.addcmul(one, out[t], out[t], value=-1, out=scratch), out=dgates[t])
            if t > 0:
                dh = torch.addmm(grad_out[t - 1], dgates[t], w_hh)
        dh0 = dgates[0] @ w_hh if need_h0 else None
        return dgates, dgates, dh0, None


class _GRUCell:
    """r, z, n = gates; n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))."""

    num_gates = 3

    def input_bias(self, b_ih: Tensor, b_hh: Tensor) -> Tensor:
        # b_hr and b_hz can join the input projection; b_hn sits inside r * (...).
        hidden = b_hh.shape[0] // 3
        return b_ih + torch.cat([b_hh[: 2 * hidden], b_hh.new_zeros(hidden)])

    def forward(self, gates, h0, c0, w_hh, b_hh):
        steps, batch, hidden = gates.shape[0], gates.shape[1], gates.shape[2] // 3
        # gates[t] becomes [r, z, h W_hn^T + b_hn]; n is kept apart as x W_in^T + b_in.
        n_all = gates[..., 2 * hidden :].clone()  # (T, B, H), becomes n in the loop
        gates[..., 2 * hidden :] = b_hh[2 * hidden :]
        out = gates.new_empty(steps, batch, hidden)  # (T, B, H)
        diff = torch.empty_like(out)  # (T, B, H), h_{t-1} - n_t
        h = h0
        for t in range(steps):
            g = gates[t].addmm_(h, w_hh.t())  # (B, 3H)
            r_z = g[:, : 2 * hidden].sigmoid_()
            r, hn = r_z[:, :hidden], g[:, 2 * hidden :]
            n = _tanh(n_all[t].addcmul_(r, hn), out=n_all[t])
            z = g[:, hidden : 2 * hidden]
            torch.sub(h, n, out=diff[t])
            h = torch.addcmul(n, z, diff[t], out=out[t])  # (1 - z) * n + z * h
        return out, h.clone(), None, (n_all, diff)

    def backward(self, saved, out, h0, c0, grad_out, grad_h, grad_c, w_hh, need_h0):
        gates, (n_all, diff) = saved
        steps, batch, hidden = out.shape
        dgates_hh = torch.empty_like(gates)  # (T, B, 3H)
        dgates_ih = torch.empty_like(gates)  # (T, B, 3H), differs in the n block
        one, zero = out.new_ones(()), out.new_zeros(())
        dh = grad_h + grad_out[-1]  # (B, H)
        dn, scratch = torch.empty_like(dh), torch.empty_like(dh)
        sigmoid_grad = gates.new_empty(batch, 2 * hidden)  # (B, 2H)
        for t in reversed(range(steps)):
            g, d_hh, d_ih = gates[t], dgates_hh[t], dgates_ih[t]
            r, z, hn = g[:, :hidden], g[:, hidden : 2 * hidden], g[:, 2 * hidden :]
            n = n_all[t]
            d_n = d_ih[:, 2 * hidden :]
            # the part of dh_{t-1} that flows straight through z * h_{t-1}
            carry = torch.addcmul(grad_out[t - 1] if t > 0 else zero, dh, z)
            torch.addcmul(dh, dh, z, value=-1, out=dn)  # dh * (1 - z)
            torch.mul(dn, torch.addcmul(one, n, n, value=-1, out=scratch), out=d_n)
            torch.mul(d_n, hn, out=d_hh[:, :hidden])  # d r
            torch.mul(dh, diff[t], out=d_hh[:, hidden : 2 * hidden])  # d z
            r_z = g[:, : 2 * hidden]
            d_hh[:, : 2 * hidden].mul_(torch.addcmul(r_z, r_z, r_z, value=-1, out=sigmoid_grad))
            torch.mul(d_n, r, out=d_hh[:, 2 * hidden :])
            d_ih[:, : 2 * hidden] = d_hh[:, : 2 * hidden]
            if t > 0 or need_h0:
                dh = carry.addmm_(d_hh, w_hh)
        return dgates_hh, dgates_ih, dh if need_h0 else None, None


class _LSTMCell:
    """i, f, g, o = gates; c' = f * c + i * g; h' = o * tanh(c')."""

    num_gates = 4

    def input_bias(self, b_ih: Tensor, b_hh: Tensor) -> Tensor:
        return b_ih + b_hh

    def forward(self, gates, h0, c0, w_hh, b_hh):
        steps, batch, hidden = gates.shape[0], gates.shape[1], gates.shape[2] // 4
        out = gates.new_empty(steps, batch, hidden)  # (T, B, H)
        c_all = torch.empty_like(out)  # (T, B, H)
        tanh_c = torch.empty_like(out)  # (T, B, H)
        h, c = h0, c0
        for t in range(steps):
            g_all = gates[t].addmm_(h, w_hh.t())  # (B, 4H)
            i, f, g, o = g_all.chunk(4, dim=1)
            g.mul_(2)
            g_all.sigmoid_()
            g.mul_(2).sub_(1)  # tanh, as in _tanh
            c = torch.mul(f, c, out=c_all[t]).addcmul_(i, g)
            _tanh(c, out=tanh_c[t])
            h = torch.mul(o, tanh_c[t], out=out[t])
        return out, h.clone(), c.clone(), (c_all, tanh_c)

    def backward(self, saved, out, h0, c0, grad_out, grad_h, grad_c, w_hh, need_h0):
        gates, (c_all, tanh_c) = saved
        steps, batch, hidden = out.shape
        dgates = torch.empty_like(gates)  # (T, B, 4H)
        one = out.new_ones(())
        dh = grad_h + grad_out[-1]  # (B, H)
        dc = grad_c.clone()  # (B, H)
        dh_o, scratch = torch.empty_like(dh), torch.empty_like(dh)
        act_grad = gates.new_empty(batch, 4 * hidden)  # (B, 4H)
        for t in reversed(range(steps)):
            i, f, g, o = gates[t].chunk(4, dim=1)
            d_i, d_f, d_g, d_o = dgates[t].chunk(4, dim=1)
            c_prev = c_all[t - 1] if t > 0 else c0
            torch.mul(dh, tanh_c[t], out=d_o)
            torch.mul(dh, o, out=dh_o)
            dc.addcmul_(dh_o, torch.addcmul(one, tanh_c[t], tanh_c[t], value=-1, out=scratch))
            torch.mul(dc, g, out=d_i)
            torch.mul(dc, i, out=d_g)
            torch.mul(dc, c_prev, out=d_f)
            dc.mul_(f)  # now the gradient of c_{t-1}
            torch.addcmul(gates[t], gates[t], gates[t], value=-1, out=act_grad)  # sigmoid'
            torch.addcmul(one, g, g, value=-1, out=act_grad[:, 2 * hidden : 3 * hidden])  # tanh'
            dgates[t].mul_(act_grad)
            if t > 0:
                dh = torch.addmm(grad_out[t - 1], dgates[t], w_hh)
        dh0 = dgates[0] @ w_hh if need_h0 else None
        return dgates, dgates, dh0, dc


# ---------------------------------------------------------------- autograd layer


class _Layer(torch.autograd.Function):
    """One recurrent layer over a whole time-major sequence."""

    @staticmethod
    def forward(ctx, cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        # x (T, B, I); h0, c0 (B, H); w_ih (G*H, I); w_hh (G*H, H)
        steps, batch, _ = x.shape
        bias = cell.input_bias(b_ih, b_hh)  # (G*H,)
        gates = torch.addmm(bias, x.reshape(steps * batch, -1), w_ih.t())
        gates = gates.view(steps, batch, -1)  # (T, B, G*H)
        out, h_n, c_n, saved = cell.forward(gates, h0, c0, w_hh, b_hh)
        ctx.cell, ctx.saved = cell, (gates, saved)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, out)
        return out, h_n, c_n

    @staticmethod
    def backward(ctx, grad_out, grad_h, grad_c):
        x, h0, c0, w_ih, w_hh, out = ctx.saved_tensors
        need = ctx.needs_input_grad  # cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh
        dgates_hh, dgates_ih, dh0, dc0 = ctx.cell.backward(
            ctx.saved, out, h0, c0, grad_out.contiguous(), grad_h, grad_c, w_hh, need[2]
        )
        ctx.saved = None
        steps, batch, _ = x.shape
        flat_hh = dgates_hh.view(steps * batch, -1)  # (T*B, G*H)
        flat_ih = dgates_ih.view(steps * batch, -1)  # (T*B, G*H)
        dx = dw_ih = dw_hh = db_ih = db_hh = None
        if need[1]:
            dx = (flat_ih @ w_ih).view_as(x)  # (T, B, I)
        if need[4]:
            dw_ih = flat_ih.t() @ x.reshape(steps * batch, -1)  # (G*H, I)
        if need[5]:  # sum over t of dgates_t^T h_{t-1}, h_{-1} being h0
            dw_hh = dgates_hh[0].t() @ h0  # (G*H, H)
            if steps > 1:
                previous = out[:-1].reshape((steps - 1) * batch, -1)  # (T-1)*B, H
                dw_hh.addmm_(flat_hh[batch:].t(), previous)
        if need[6]:
            db_ih = flat_ih.sum(0)
        if need[7]:
            db_hh = flat_hh.sum(0)
        return None, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh


# ----------------------------------------------------------------------- dispatch


def supports(module: nn.Module, x: Tensor) -> bool:
    """Whether the fast path can compute `module(x)` exactly."""
    return (
        isinstance(module, (nn.RNN, nn.GRU, nn.LSTM))
        and module.mode in ("RNN_TANH", "RNN_RELU", "GRU", "LSTM")
        and module.batch_first
        and module.bias
        and not module.bidirectional
        and module.proj_size == 0
        and x.device.type == "cpu"
        and x.dim() == 3
        and x.dtype in (torch.float32, torch.float64)
        and all(p.dtype == x.dtype and p.device.type == "cpu" for p in module.parameters())
        and not _autocast_on_cpu()  # the fast path computes in the parameters' dtype only
    )


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _make_cell(module: nn.RNNBase):
    if module.mode == "GRU":
        return _GRUCell()
    if module.mode == "LSTM":
        return _LSTMCell()
    return _RNNCell("relu" if module.mode == "RNN_RELU" else "tanh")


def recurrent(
    module: nn.RNNBase, x: Tensor, state: State | None = None, fast: bool | None = None
) -> tuple[Tensor, State]:
    """Compute `module(x, state)` for a batch-first nn.RNN, nn.GRU or nn.LSTM.

    x is (B, T, I); state is h (L, B, H), or (h, c) for an LSTM, None for zeros.
    Returns (output (B, T, H), final state) exactly as the module would.
    `fast=None` takes the fast path wherever it applies, `True` insists on it
    (ValueError where it cannot), `False` calls the module.
    """
    if fast is None:
        fast = supports(module, x)
    elif fast and not supports(module, x):
        raise ValueError(f"the fast path does not support {module} with input {tuple(x.shape)} {x.dtype}")
    if not fast:
        return module(x, state)

    is_lstm = module.mode == "LSTM"
    batch = x.shape[0]
    if state is None:
        zeros = x.new_zeros(module.num_layers, batch, module.hidden_size)
        h_init, c_init = zeros, (zeros if is_lstm else None)
    else:
        h_init, c_init = state if is_lstm else (state, None)

    cell = _make_cell(module)
    layer_input = x.transpose(0, 1).contiguous()  # (T, B, I)
    h_final, c_final = [], []
    for layer in range(module.num_layers):
        if layer > 0 and module.dropout > 0:
            layer_input = F.dropout(layer_input, module.dropout, module.training)
        layer_input, h_n, c_n = _Layer.apply(
            cell,
            layer_input,
            h_init[layer],
            c_init[layer] if is_lstm else None,
            getattr(module, f"weight_ih_l{layer}"),
            getattr(module, f"weight_hh_l{layer}"),
            getattr(module, f"bias_ih_l{layer}"),
            getattr(module, f"bias_hh_l{layer}"),
        )
        h_final.append(h_n)
        c_final.append(c_n)
    output = layer_input.transpose(0, 1).contiguous()  # (B, T, H)
    h_n = torch.stack(h_final)  # (L, B, H)
    return output, ((h_n, torch.stack(c_final)) if is_lstm else h_n)
