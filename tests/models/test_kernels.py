"""charlm.models.recurrent_layers.recurrent must compute exactly what the torch module computes."""

import pytest
import torch
from torch import nn

from charlm.models.recurrent_layers import recurrent, supports

BATCH, STEPS, INPUT, HIDDEN = 3, 5, 7, 6
CELLS = ["rnn_tanh", "rnn_relu", "gru", "lstm"]


def make_module(cell: str, num_layers: int = 1, dtype=torch.float32, **kwargs) -> nn.RNNBase:
    torch.manual_seed(0)
    if cell.startswith("rnn"):
        kwargs["nonlinearity"] = cell.removeprefix("rnn_")
    module_class = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell.split("_")[0]]
    return module_class(INPUT, HIDDEN, num_layers, batch_first=True, **kwargs).to(dtype)


def make_inputs(cell: str, num_layers: int, with_state: bool, dtype):
    """x (B, T, I) and an initial state (or None), all requiring grad."""
    torch.manual_seed(1)

    def leaf(*shape):
        return torch.randn(*shape, dtype=dtype, requires_grad=True)

    x = leaf(BATCH, STEPS, INPUT)
    if not with_state:
        return x, None
    h = leaf(num_layers, BATCH, HIDDEN)
    return x, ((h, leaf(num_layers, BATCH, HIDDEN)) if cell == "lstm" else h)


def as_tuple(state) -> tuple:
    return state if isinstance(state, tuple) else (state,)


def outputs_and_grads(module, x, state, fast):
    """Output, final state, and gradients of a random linear loss w.r.t. x, state and parameters."""
    output, final = recurrent(module, x, state, fast=fast)
    results = [output, *as_tuple(final)]
    generator = torch.Generator().manual_seed(2)
    loss = sum((r * torch.randn(r.shape, generator=generator, dtype=r.dtype)).sum() for r in results)
    leaves = [x, *(as_tuple(state) if state is not None else ()), *module.parameters()]
    return results + list(torch.autograd.grad(loss, leaves))


@pytest.mark.parametrize(
    "dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)], ids=["float32", "float64"]
)
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "state"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_fast_path_matches_module(cell, num_layers, with_state, dtype, tolerance):
    module = make_module(cell, num_layers, dtype)
    x, state = make_inputs(cell, num_layers, with_state, dtype)
    expected = outputs_and_grads(module, x, state, fast=False)
    actual = outputs_and_grads(module, x, state, fast=True)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("fast", [None, True], ids=["default", "fast"])
@pytest.mark.parametrize("cell", CELLS)
def test_single_step_without_grad(cell, fast):
    # generation: one step at a time, no autograd
    module = make_module(cell, num_layers=2)
    x, state = make_inputs(cell, 2, with_state=True, dtype=torch.float32)
    with torch.no_grad():
        expected_output, expected_state = module(x[:, :1], state)
        output, final = recurrent(module, x[:, :1], state, fast=fast)
    torch.testing.assert_close(output, expected_output, atol=1e-5, rtol=1e-5)
    for a, e in zip(as_tuple(final), as_tuple(expected_state)):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_matches_in_eval_mode_and_with_zero_dropout(cell):
    x, _ = make_inputs(cell, 2, with_state=False, dtype=torch.float32)
    for dropout, training in [(0.5, False), (0.0, True)]:
        module = make_module(cell, num_layers=2, dropout=dropout).train(training)
        output, _ = recurrent(module, x, fast=True)
        torch.testing.assert_close(output, module(x)[0], atol=1e-5, rtol=1e-5)


def test_dropout_is_applied_between_layers_in_training():
    module = make_module("gru", num_layers=2, dropout=0.5).train()
    x, _ = make_inputs("gru", 2, with_state=False, dtype=torch.float32)
    eval_output, _ = recurrent(module.eval(), x, fast=True)
    train_output, _ = recurrent(module.train(), x, fast=True)
    assert not torch.allclose(train_output, eval_output)


def test_unsupported_module_falls_back_and_refuses_to_be_forced():
    module = nn.GRU(INPUT, HIDDEN, batch_first=True, bidirectional=True)
    x = torch.randn(BATCH, STEPS, INPUT)
    assert not supports(module, x)
    output, _ = recurrent(module, x)
    torch.testing.assert_close(output, module(x)[0])
    with pytest.raises(ValueError, match="fast path"):
        recurrent(module, x, fast=True)


@pytest.mark.parametrize("fast", [None, True, False], ids=["default", "fast", "module"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_ids_compute_what_their_one_hot_rows_compute(cell, num_layers, fast):
    # one-hot input given as ids: the fast path gathers columns of W_ih instead of a matmul
    module = make_module(cell, num_layers)
    ids = torch.randint(INPUT, (BATCH, STEPS), generator=torch.Generator().manual_seed(3))
    one_hot = torch.nn.functional.one_hot(ids, INPUT).float()
    _, state = make_inputs(cell, num_layers, with_state=True, dtype=torch.float32)

    def results(x, fast):
        output, final = recurrent(module, x, state, fast=fast)
        outputs = [output, *as_tuple(final)]
        generator = torch.Generator().manual_seed(2)
        loss = sum((r * torch.randn(r.shape, generator=generator)).sum() for r in outputs)
        return outputs + list(torch.autograd.grad(loss, [*as_tuple(state), *module.parameters()]))

    expected = results(one_hot, fast=False)  # torch's module on the one-hot rows
    actual = results(ids, fast)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)
    assert supports(module, ids)


def test_dropout_zeroes_a_fraction_p_and_scales_the_rest():
    from charlm.models.kernels import dropout

    torch.manual_seed(0)
    x = torch.ones(200, 500, requires_grad=True)
    y = dropout(x, 0.3)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.3) < 0.01
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # d(x * mask * scale)/dx = mask * scale
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0) is x
