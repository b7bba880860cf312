"""The model contract (`charlm.models.protocol`): every registered architecture keeps it, its optional hooks
have defaults, and charlm calls them without asking whether a model has them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import charlm
from charlm.models import registry
from charlm.models.protocol import LanguageModelContract, ModelDefaults, PairModelContract
from charlm.training.setup import model_config

TINY = {"hidden_size": 8, "embedding_size": 8, "num_layers": 1, "num_heads": 2, "seq_len": 8}


def build(architecture: registry.Architecture) -> nn.Module:
    sizes = {"vocab_size": 6} if architecture.task == "lm" else {"vocab_size": 6, "target_vocab_size": 7}
    model_class, config = model_config(architecture, TINY, **sizes)
    return model_class(config)


@pytest.mark.parametrize("architecture", list(registry.ARCHITECTURES.values()),
                         ids=lambda architecture: f"{architecture.task}-{architecture.name}")
def test_every_registered_architecture_keeps_its_tasks_contract(architecture):
    model = build(architecture)
    contract = LanguageModelContract if architecture.task == "lm" else PairModelContract
    assert isinstance(model, contract) and isinstance(model, ModelDefaults)
    assert isinstance(model.describe(), str) and model.num_parameters() > 0
    assert all(choice in (True, False) for choice in model.fast_path_choices())
    grouped = [parameter for group in model.parameter_groups(0.1)
               for parameter in (group["params"] if isinstance(group, dict) else [group])]
    assert sorted(map(id, grouped)) == sorted(map(id, model.parameters()))  # each parameter in one group
    if architecture.task == "lm":
        model.eval()
        ids = torch.tensor([1, 2])
        logits, _ = model.stepper([3])(ids, None)
        expected, _ = model.step(ids, None)
        assert logits.shape == (2, 6) and torch.isinf(logits[:, 3]).all()
        assert torch.allclose(logits[:, :3], expected[:, :3], atol=1e-5)
        assert set(model.stepper_precisions()) <= {"fp32", "bf16"}


class Plain(ModelDefaults, nn.Module):
    """A language model with no hook of its own: every default."""

    def __init__(self) -> None:
        super().__init__()
        self.config = {"vocab_size": 4}
        self.head = nn.Linear(2, 4)

    def forward(self, ids, state=None):
        return self.head(torch.ones(*ids.shape, 2)), state

    def step(self, ids, state):
        logits, state = self(ids[:, None], state)
        return logits[:, 0], state

    def init_state(self, batch_size):
        return None

    def batch_loss(self, batch, state=None):
        return self(batch[0])[0].sum(), 1, None


def test_the_hooks_defaults():
    model = Plain()
    assert isinstance(model, LanguageModelContract) and model.state_class is None and model.fast_path is None
    assert model.describe() == "" and model.fast_path_choices() == () and model.stepper_precisions() == ("fp32",)
    assert list(model.parameter_groups(0.1)) == list(model.parameters())
    assert model.num_parameters() == 2 * 4 + 4
    logits, _ = model.stepper([0, 2], "bf16")(torch.tensor([1]), None)  # fp32 whatever it is asked
    expected, _ = model.step(torch.tensor([1]), None)
    assert logits.dtype == torch.float32 and torch.isinf(logits[0, [0, 2]]).all()
    assert torch.equal(logits[0, [1, 3]], expected[0, [1, 3]])


def test_no_module_asks_whether_a_model_has_a_hook():
    source = Path(charlm.__file__).parent
    asking = [f"{path.relative_to(source)}:{number}" for path in sorted(source.rglob("*.py"))
              for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
              if re.search(r"hasattr\(\s*(self\.)?(model|\w+_model)\b", line)]
    assert asking == []
