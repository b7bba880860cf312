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

By default it calls the module itself wherever the fast path does not apply
(other devices, bidirectional, proj_size, autocast, ...) or measured slower:
without autograd (torch's fused C++ loops are as fast there), and when training
a float32 LSTM with oneDNN (mkldnn) on, whose fused LSTM beats separate matmuls.

This module knows nothing about tokens, models or training: it is a drop-in for
calling a recurrent module.
"""


import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _tanh(x: Tensor, out: Tensor) -> Tensor:
    # tanh(x) = 2 * sigmoid(2x) - 1: on the AVX-512 CPU we measured, torch.tanh
    # runs ~3x slower than torch.sigmoid, so these four ops beat the one.
    return torch.mul(x, 2, out=out).sigmoid_().mul_(2).sub_(1)


def _per_step(tensor: Tensor, start: int = 0, stop: int | None = None) -> tuple[Tensor, ...]:
    """(T, B, N) -> T views (B, stop - start) of columns start:stop. The time loops
    index these instead of slicing tensors: each slice costs a torch call."""
    return tensor[..., start:stop].unbind(0)


def _per_gate(tensor: Tensor, num_gates: int) -> list[tuple[Tensor, ...]]:
    """(T, B, G*H) -> for each gate, T views (B, H)."""
    size = tensor.shape[-1] // num_gates
    return [_per_step(tensor, k * size, (k + 1) * size) for k in range(num_gates)]


def dropout(x: Tensor, p: float, training: bool = True, locked_dim: int | None = None) -> Tensor:
    """`F.dropout(x, p, training)`, or with `locked_dim` (the time axis) variational ("locked")
    dropout: one mask per sequence, the same at every step. On CPU the mask is drawn as uniform
    floats compared with p, which measured twice as fast as torch's bernoulli here (3.2 vs 6.5 ms
    for (32, 35, 512))."""
    if not training or p == 0:
        return x
    if locked_dim is not None:  # drawn without the time axis, so time-major and batch-first draw alike
        shape = x.shape[:locked_dim] + x.shape[locked_dim + 1 :]
        mask = (torch.rand(shape, dtype=x.dtype, device=x.device) >= p).unsqueeze(locked_dim)  # 1 along time
        return x * mask.to(x.dtype).mul_(1 / (1 - p))
    if x.device.type != "cpu" or not 0 < p < 1:
        return F.dropout(x, p, training)
    return x * (torch.rand_like(x) >= p).to(x.dtype).mul_(1 / (1 - p))


class Dropout(nn.Dropout):
    """`nn.Dropout` through `dropout`; `locked_dim` makes it variational along that axis."""

    def __init__(self, p: float = 0.5, locked_dim: int | None = None) -> None:
        super().__init__(p)
        self.locked_dim = locked_dim

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training, self.locked_dim)


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
        if self.relu:
            w_hh_t, h = w_hh.t(), h0
            for step in _per_step(out):  # (B, H)
                h = step.addmm_(h, w_hh_t).relu_()
            return out, h.clone(), None, None
        # tanh(a) = 2 s - 1 with s = sigmoid(2a). Carrying s instead of h folds the affine parts
        # into the weights, so a step is one addmm and one sigmoid: with a_t = u_t + h_{t-1} W^T,
        # 2 a_t = (2 u_t - 2 W 1) + s_{t-1} (4 W)^T, where u_t is the input projection in `gates`.
        out.mul_(2).sub_(2 * w_hh.sum(1))
        w_hh_t4, s = (4 * w_hh).t(), (h0 + 1) / 2
        for step in _per_step(out):  # (B, H)
            s = step.addmm_(s, w_hh_t4).sigmoid_()
        out.mul_(2).sub_(1)  # every s_t back to h_t at once
        return out, out[-1].clone(), None, None

    def backward(self, saved, out, h0, c0, grad_out, grad_h, grad_c, w_hh, need_h0):
        # d(pre-activation) = dh * act'(pre): act' for every step at once, then one mul per step
        dgates = (out > 0).to(out.dtype) if self.relu else torch.addcmul(out.new_ones(()), out, out, value=-1)
        d = _per_step(dgates)  # (B, H) each
        dh = grad_h + grad_out[-1]  # (B, H), total gradient reaching h_t
        grad = _per_step(grad_out)
        for t in reversed(range(len(out))):
            d[t].mul_(dh)
            if t > 0:
                dh = torch.addmm(grad[t - 1], d[t], w_hh)
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
        # gates[t] becomes [r, z, h W_hn^T + b_hn]; n is kept apart, as 2 (x W_in^T + b_in) for
        # tanh(a) = 2 sigmoid(2a) - 1 (see `_tanh`), with 2a = that + 2 r * (h W_hn^T + b_hn).
        n_all = gates[..., 2 * hidden :].mul(2)  # (T, B, H), becomes n in the loop
        gates[..., 2 * hidden :] = b_hh[2 * hidden :]
        out = gates.new_empty(steps, batch, hidden)  # (T, B, H)
        diff = torch.empty_like(out)  # (T, B, H), h_{t-1} - n_t
        g, r_z, (r, z, hn) = _per_step(gates), _per_step(gates, 0, 2 * hidden), _per_gate(gates, 3)
        n, h_minus_n, h_next = _per_step(n_all), _per_step(diff), _per_step(out)
        w_hh_t, h = w_hh.t(), h0
        for t in range(steps):
            g[t].addmm_(h, w_hh_t)  # (B, 3H)
            r_z[t].sigmoid_()
            n[t].addcmul_(r[t], hn[t], value=2).sigmoid_().mul_(2).sub_(1)
            torch.sub(h, n[t], out=h_minus_n[t])
            h = torch.addcmul(n[t], z[t], h_minus_n[t], out=h_next[t])  # (1 - z) * n + z * h
        return out, h.clone(), None, (n_all, diff)

    def backward(self, saved, out, h0, c0, grad_out, grad_h, grad_c, w_hh, need_h0):
        gates, (n_all, diff) = saved
        steps, batch, hidden = out.shape
        zero = out.new_zeros(())
        # The activations' derivatives for every step at once, each in the buffer its gate
        # gradient will fill: sigmoid' = s (1 - s) for r and z, tanh' = 1 - n^2 for n.
        dgates_hh = torch.empty_like(gates)  # (T, B, 3H)
        dgates_ih = torch.empty_like(gates)  # (T, B, 3H), differs in the n block
        r_z_all = gates[..., : 2 * hidden]
        torch.addcmul(r_z_all, r_z_all, r_z_all, value=-1, out=dgates_hh[..., : 2 * hidden])
        torch.addcmul(out.new_ones(()), n_all, n_all, value=-1, out=dgates_ih[..., 2 * hidden :])
        dh = grad_h + grad_out[-1]  # (B, H)
        dn = torch.empty_like(dh)
        upstream = gates.new_empty(batch, 2 * hidden)  # (B, 2H): dL/dr, dL/dz
        up_r, up_z = upstream[:, :hidden], upstream[:, hidden:]
        (r, z, hn), h_minus_n = _per_gate(gates, 3), _per_step(diff)
        grad, d_hh, d_rz = _per_step(grad_out), _per_step(dgates_hh), _per_step(dgates_hh, 0, 2 * hidden)
        d_hn, d_n = _per_step(dgates_hh, 2 * hidden), _per_step(dgates_ih, 2 * hidden)
        for t in reversed(range(steps)):
            # the part of dh_{t-1} that flows straight through z * h_{t-1}
            carry = torch.addcmul(grad[t - 1] if t > 0 else zero, dh, z[t])
            torch.addcmul(dh, dh, z[t], value=-1, out=dn)  # dh * (1 - z)
            d_n[t].mul_(dn)
            torch.mul(d_n[t], hn[t], out=up_r)
            torch.mul(dh, h_minus_n[t], out=up_z)
            d_rz[t].mul_(upstream)
            torch.mul(d_n[t], r[t], out=d_hn[t])
            if t > 0 or need_h0:
                dh = carry.addmm_(d_hh[t], w_hh)
        dgates_ih[..., : 2 * hidden] = dgates_hh[..., : 2 * hidden]  # r and z: the same on both sides
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
        g_all, (i, f, g, o) = _per_step(gates), _per_gate(gates, 4)
        c_next, tc, h_next = _per_step(c_all), _per_step(tanh_c), _per_step(out)
        w_hh_t, h, c = w_hh.t(), h0, c0
        for t in range(steps):
            g_all[t].addmm_(h, w_hh_t)  # (B, 4H)
            g[t].mul_(2)
            g_all[t].sigmoid_()
            g[t].mul_(2).sub_(1)  # tanh, as in _tanh
            c = torch.mul(f[t], c, out=c_next[t]).addcmul_(i[t], g[t])
            h = torch.mul(o[t], _tanh(c, out=tc[t]), out=h_next[t])
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
        act_grad_g = act_grad[:, 2 * hidden : 3 * hidden]  # (B, H)
        g_all, (i, f, g, o), tc = _per_step(gates), _per_gate(gates, 4), _per_step(tanh_c)
        d_all, (d_i, d_f, d_g, d_o) = _per_step(dgates), _per_gate(dgates, 4)
        grad, c_prev = _per_step(grad_out), (c0, *_per_step(c_all))  # c_prev[t] = c_{t-1}
        for t in reversed(range(steps)):
            torch.mul(dh, tc[t], out=d_o[t])
            torch.mul(dh, o[t], out=dh_o)
            dc.addcmul_(dh_o, torch.addcmul(one, tc[t], tc[t], value=-1, out=scratch))
            torch.mul(dc, g[t], out=d_i[t])
            torch.mul(dc, i[t], out=d_g[t])
            torch.mul(dc, c_prev[t], out=d_f[t])
            dc.mul_(f[t])  # now the gradient of c_{t-1}
            torch.addcmul(g_all[t], g_all[t], g_all[t], value=-1, out=act_grad)  # sigmoid'
            torch.addcmul(one, g[t], g[t], value=-1, out=act_grad_g)  # tanh'
            d_all[t].mul_(act_grad)
            if t > 0:
                dh = torch.addmm(grad[t - 1], d_all[t], w_hh)
        dh0 = dgates[0] @ w_hh if need_h0 else None
        return dgates, dgates, dh0, dc


# ---------------------------------------------------------------- autograd layer


class _Layer(torch.autograd.Function):
    """One recurrent layer over a whole time-major sequence."""

    @staticmethod
    def forward(ctx, cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        # x (T, B, I), or ids (T, B) standing for one-hot rows; h0, c0 (B, H); w_ih (G*H, I); w_hh (G*H, H)
        steps, batch = x.shape[:2]
        bias = cell.input_bias(b_ih, b_hh)  # (G*H,)
        if x.is_floating_point():
            gates = torch.addmm(bias, x.reshape(steps * batch, -1), w_ih.t())
        else:  # a one-hot row times W_ih^T is a column of W_ih: gather instead of multiplying by zeros
            gates = torch.index_select(w_ih.t().contiguous(), 0, x.reshape(-1)).add_(bias)
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
            ctx.saved, out, h0, c0, grad_out, grad_h, grad_c, w_hh, need[2]
        )
        ctx.saved = None
        steps, batch = x.shape[:2]
        flat_hh = dgates_hh.view(steps * batch, -1)  # (T*B, G*H)
        flat_ih = flat_hh if dgates_ih is dgates_hh else dgates_ih.view(steps * batch, -1)
        dx = dw_ih = dw_hh = db_ih = db_hh = None
        if need[1]:
            dx = (flat_ih @ w_ih).view_as(x)  # (T, B, I)
        if need[4] and x.is_floating_point():
            dw_ih = flat_ih.t() @ x.reshape(steps * batch, -1)  # (G*H, I)
        elif need[4]:  # ids: each column of W_ih collects the d(gates) of the steps that read it
            dw_ih = w_ih.new_zeros(w_ih.shape[1], w_ih.shape[0]).index_add_(0, x.reshape(-1), flat_ih).t()
        if need[5]:  # sum over t of dgates_t^T h_{t-1}, h_{-1} being h0
            dw_hh = dgates_hh[0].t() @ h0  # (G*H, H)
            if steps > 1:
                previous = out[:-1].reshape((steps - 1) * batch, -1)  # (T-1)*B, H
                dw_hh.addmm_(flat_hh[batch:].t(), previous)
        if need[7]:
            db_hh = flat_hh.sum(0)
        if need[6]:  # RNN and LSTM share one d(gates): no need to sum it twice
            db_ih = db_hh.clone() if need[7] and flat_ih is flat_hh else flat_ih.sum(0)
        return None, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh


# ----------------------------------------------------------------------- dispatch








