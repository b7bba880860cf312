from __future__ import annotations

import pytest
import torch

from charlm.models.recurrent import CELLS, LanguageModel, ModelConfig
from charlm.models.state import map_state


def make(cell: str, embedding_size: int, from_scratch: bool, num_layers: int = 2) -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=11, cell=cell, embedding_size=embedding_size, hidden_size=12,
                         num_layers=num_layers, from_scratch=from_scratch)
    return LanguageModel(config).eval()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("embedding_size", [0, 5])
def test_scratch_model_equals_torch_model_with_the_same_weights(cell, embedding_size):
    fused, scratch = make(cell, embedding_size, False), make(cell, embedding_size, True)
    scratch.load_state_dict(fused.state_dict())
    ids = torch.randint(0, 11, (3, 9), generator=torch.Generator().manual_seed(1))
    state = map_state(lambda t: torch.randn_like(t), fused.init_state(3))
    (logits_a, state_a), (logits_b, state_b) = fused(ids, state), scratch(ids, state)
    assert logits_a.shape == (3, 9, 11)
    torch.testing.assert_close(logits_a, logits_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(state_a.tensors(), state_b.tensors(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_stepping_equals_one_pass(cell):
    model = make(cell, 4, False)
    ids = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(2))
    logits, _ = model(ids)
    state, stepped = None, []
    for t in range(6):
        step_logits, state = model.step(ids[:, t], state)
        stepped.append(step_logits)
    torch.testing.assert_close(torch.stack(stepped, 1), logits, atol=1e-5, rtol=0)


def test_lstm_state_is_a_pair_and_others_a_tensor():
    lstm = make("lstm", 0, False).init_state(3)
    assert isinstance(lstm.torch_form(), tuple) and lstm.c.shape == lstm.h.shape == (2, 3, 12)
    gru = make("gru", 0, False).init_state(3)
    assert gru.c is None and gru.torch_form() is gru.h and gru.h.shape == (2, 3, 12)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="cell"):
        ModelConfig(vocab_size=5, cell="transformer")
    with pytest.raises(ValueError, match="hidden_size"):
        ModelConfig(vocab_size=5, hidden_size=0)
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(vocab_size=5, dropout=1.0)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("embedding_size", [0, 5])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("from_scratch", [False, True], ids=["torch", "scratch"])
def test_fast_stepper_equals_the_model(cell, embedding_size, num_layers, from_scratch):
    model = make(cell, embedding_size, from_scratch, num_layers)
    banned = [0, 7]
    stepper = model.stepper(banned)
    ids = torch.randint(0, 11, (4, 5), generator=torch.Generator().manual_seed(3))
    state_a = state_b = map_state(lambda t: torch.randn_like(t), model.init_state(4))
    for t in range(5):
        logits_a, state_a = model.step(ids[:, t], state_a)
        logits_b, state_b = stepper(ids[:, t], state_b)
        assert torch.isneginf(logits_b[:, banned]).all()
        allowed = [k for k in range(11) if k not in banned]
        torch.testing.assert_close(logits_b[:, allowed], logits_a[:, allowed], atol=1e-5, rtol=0)
        torch.testing.assert_close(state_b.tensors(), state_a.tensors(), atol=1e-5, rtol=0)
