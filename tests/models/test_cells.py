"""The scratch recurrent layers must be exact twins of torch's nn.RNN / nn.GRU / nn.LSTM."""

import pytest
import torch
from torch import nn

from charlm.models.cells import ScratchGRU, ScratchLSTM, ScratchRNN

INPUT_SIZE, HIDDEN_SIZE, BATCH_SIZE, SEQ_LEN = 5, 7, 3, 6

PAIRS = {"rnn": (ScratchRNN, nn.RNN), "gru": (ScratchGRU, nn.GRU), "lstm": (ScratchLSTM, nn.LSTM)}


def make_pair(cell: str, num_layers: int) -> tuple[nn.Module, nn.Module]:
    """A torch layer with seeded random weights and a scratch twin holding the same weights."""
    scratch_class, torch_class = PAIRS[cell]
    torch.manual_seed(0)
    reference = torch_class(INPUT_SIZE, HIDDEN_SIZE, num_layers=num_layers, batch_first=True)
    scratch = scratch_class(INPUT_SIZE, HIDDEN_SIZE, num_layers=num_layers)
    scratch.load_state_dict(reference.state_dict())
    return scratch, reference


def random_inputs(cell: str, num_layers: int) -> tuple[torch.Tensor, object]:
    generator = torch.Generator().manual_seed(1234)
    x = torch.randn(BATCH_SIZE, SEQ_LEN, INPUT_SIZE, generator=generator)  # (B, T, I)
    state_shape = (num_layers, BATCH_SIZE, HIDDEN_SIZE)  # (L, B, H)
    h = torch.randn(state_shape, generator=generator)
    if cell == "lstm":
        return x, (h, torch.randn(state_shape, generator=generator))
    return x, h


def as_tuple(state: object) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_matches_torch_outputs_states_and_gradients(cell: str, num_layers: int) -> None:
    scratch, reference = make_pair(cell, num_layers)
    x, state = random_inputs(cell, num_layers)
    generator = torch.Generator().manual_seed(99)
    output_weights = torch.randn(BATCH_SIZE, SEQ_LEN, HIDDEN_SIZE, generator=generator)
    state_weights = [torch.randn(part.shape, generator=generator) for part in as_tuple(state)]

    results = []
    for module in (scratch, reference):
        x_leaf = x.clone().requires_grad_(True)
        state_leaves = tuple(part.clone().requires_grad_(True) for part in as_tuple(state))
        output, final_state = module(x_leaf, state_leaves if cell == "lstm" else state_leaves[0])
        # A random linear read-out so every output and final-state element gets its own gradient.
        loss = (output * output_weights).sum()
        loss = loss + sum((part * weight).sum() for part, weight in zip(as_tuple(final_state), state_weights))
        loss.backward()
        gradients = {name: parameter.grad for name, parameter in module.named_parameters()}
        gradients["input"] = x_leaf.grad
        for index, leaf in enumerate(state_leaves):
            gradients[f"initial_state_{index}"] = leaf.grad
        results.append((output, as_tuple(final_state), gradients))

    (scratch_output, scratch_state, scratch_gradients), (torch_output, torch_state, torch_gradients) = results
    assert scratch_output.shape == (BATCH_SIZE, SEQ_LEN, HIDDEN_SIZE)
    torch.testing.assert_close(scratch_output, torch_output, atol=1e-5, rtol=0)
    assert len(scratch_state) == len(torch_state)
    for scratch_part, torch_part in zip(scratch_state, torch_state):
        torch.testing.assert_close(scratch_part, torch_part, atol=1e-5, rtol=0)
    assert scratch_gradients.keys() == torch_gradients.keys()
    for name, gradient in torch_gradients.items():
        torch.testing.assert_close(scratch_gradients[name], gradient, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_zero_state_when_none(cell: str) -> None:
    scratch, reference = make_pair(cell, num_layers=2)
    x, _ = random_inputs(cell, num_layers=2)
    with torch.no_grad():
        scratch_output, scratch_state = scratch(x)
        torch_output, torch_state = reference(x)
    torch.testing.assert_close(scratch_output, torch_output, atol=1e-5, rtol=0)
    for scratch_part, torch_part in zip(as_tuple(scratch_state), as_tuple(torch_state)):
        torch.testing.assert_close(scratch_part, torch_part, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_state_dict_round_trip_both_ways(cell: str) -> None:
    scratch_class, torch_class = PAIRS[cell]
    torch.manual_seed(1)
    scratch = scratch_class(INPUT_SIZE, HIDDEN_SIZE, num_layers=2)
    reference = torch_class(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, batch_first=True)
    assert scratch.state_dict().keys() == reference.state_dict().keys()
    for name, tensor in reference.state_dict().items():
        assert scratch.state_dict()[name].shape == tensor.shape, name

    reference.load_state_dict(scratch.state_dict())  # scratch -> torch
    for name, tensor in scratch.state_dict().items():
        assert torch.equal(reference.state_dict()[name], tensor), name

    fresh_scratch = scratch_class(INPUT_SIZE, HIDDEN_SIZE, num_layers=2)
    fresh_scratch.load_state_dict(reference.state_dict())  # torch -> scratch
    for name, tensor in reference.state_dict().items():
        assert torch.equal(fresh_scratch.state_dict()[name], tensor), name


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_initialisation_is_torch_uniform(cell: str) -> None:
    scratch_class, _ = PAIRS[cell]
    hidden_size = 64
    scratch = scratch_class(INPUT_SIZE, hidden_size, num_layers=2)
    bound = hidden_size**-0.5
    for name, parameter in scratch.named_parameters():
        assert parameter.abs().max() <= bound, name
        assert parameter.abs().max() > 0.9 * bound, name  # spread over the range, not e.g. zeros


@pytest.mark.parametrize(
    ("nonlinearity", "expected"),
    [("identity", [4.0, 12.0, 32.0]), ("tanh", [1.9281, 1.9985, 2.0000])],
)
def test_hand_computed_simple_recurrent_network(nonlinearity: str, expected: list[float]) -> None:
    """The classroom SRN: 2 inputs, 2 hidden units, all weights 1, biases 0, y_t = sum(h_t)."""
    network = ScratchRNN(input_size=2, hidden_size=2, nonlinearity=nonlinearity)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            parameter.fill_(1.0 if name.startswith("weight") else 0.0)
        x = torch.tensor([[[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]]])  # (B=1, T=3, I=2)
        output, _ = network(x)  # (1, 3, 2)
        y = output.sum(dim=-1).squeeze(0)  # linear head of ones, no bias: (T,)
    torch.testing.assert_close(y, torch.tensor(expected), atol=1e-4, rtol=0)


def test_relu_matches_torch() -> None:
    torch.manual_seed(0)
    reference = nn.RNN(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, nonlinearity="relu", batch_first=True)
    scratch = ScratchRNN(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, nonlinearity="relu")
    scratch.load_state_dict(reference.state_dict())
    x, state = random_inputs("rnn", num_layers=2)
    with torch.no_grad():
        torch.testing.assert_close(scratch(x, state)[0], reference(x, state)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_dropout_only_in_training_and_only_between_layers(cell: str) -> None:
    scratch_class, _ = PAIRS[cell]
    torch.manual_seed(0)
    x, _ = random_inputs(cell, num_layers=2)
    network = scratch_class(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, dropout=0.5)

    network.eval()
    with torch.no_grad():
        first, _ = network(x)
        second, _ = network(x)
    assert torch.equal(first, second)

    network.train()
    with torch.no_grad():
        trained, _ = network(x)
    assert not torch.allclose(trained, first)

    # With one layer there is no "between": training output equals evaluation output.
    with pytest.warns(UserWarning, match="no effect"):
        single = scratch_class(INPUT_SIZE, HIDDEN_SIZE, num_layers=1, dropout=0.5)
    with torch.no_grad():
        single_train, _ = single.train()(x)
        single_eval, _ = single.eval()(x)
    assert torch.equal(single_train, single_eval)


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="nonlinearity"):
        ScratchRNN(INPUT_SIZE, HIDDEN_SIZE, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="dropout"):
        ScratchGRU(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, dropout=1.5)
    network = ScratchLSTM(INPUT_SIZE, HIDDEN_SIZE)
    with pytest.raises(ValueError, match="input of shape"):
        network(torch.zeros(BATCH_SIZE, SEQ_LEN, INPUT_SIZE + 1))
    with pytest.raises(ValueError, match=r"\(h, c\)"):
        network(torch.zeros(BATCH_SIZE, SEQ_LEN, INPUT_SIZE), torch.zeros(1, BATCH_SIZE, HIDDEN_SIZE))
