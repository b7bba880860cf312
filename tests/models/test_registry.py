"""Adding an architecture is one module and one registry line: a toy language model, written here
and registered by this test alone, goes through every command the recurrent models go through.

The toy carries a state unlike the recurrent cells' (one tensor, batch on dim 0, its own name), so
the trainer, the evaluator, the generator and the resume file are shown to handle a state they know
nothing about.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from charlm.checkpoints import files as checkpoint
from charlm.models import registry
from charlm.models.protocol import ModelDefaults
from tests.conftest import run_cli


@dataclass
class ToyConfig:
    vocab_size: int
    hidden_size: int = 8
    decay: float = 0.5  # how much of the memory each character keeps


@dataclass(frozen=True)
class ToyState:
    memory: torch.Tensor  # (B, H): the batch on dim 0, where the recurrent cells have it on dim 1

    @property
    def batch_size(self) -> int:
        return self.memory.shape[0]

    def map(self, function):
        return ToyState(function(self.memory))

    def rows(self, index):
        return ToyState(self.memory[index])

    def tensors(self):
        return {"memory": self.memory}

    @classmethod
    def from_tensors(cls, tensors):
        return cls(tensors["memory"])

    @classmethod
    def join(cls, states):
        return cls(torch.cat([state.memory for state in states]))


class ToyModel(ModelDefaults, nn.Module):
    """A decaying average of the characters' embeddings, read out by a linear head."""

    state_class = ToyState

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def init_state(self, batch_size: int) -> ToyState:
        return ToyState(self.head.weight.new_zeros(batch_size, self.config.hidden_size))

    def forward(self, ids, state=None):
        memory = (state or self.init_state(ids.shape[0])).memory
        outputs = []
        for embedded in self.embedding(ids).unbind(1):  # (B, H) per step
            memory = self.config.decay * memory + (1 - self.config.decay) * embedded
            outputs.append(memory)
        return self.head(torch.stack(outputs, 1)), ToyState(memory)

    def batch_loss(self, batch, state=None):
        inputs, targets = batch
        logits, state = self(inputs, state)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum"), targets.numel(), state

    def step(self, ids, state):
        logits, state = self(ids[:, None], state)
        return logits[:, 0], state

    def num_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())


@pytest.fixture
def toy():
    """The toy registered for the test, and gone after it."""
    registry.register(registry.Architecture("lm", "toy", ToyModel, ToyConfig, defaults={"lr": 0.01},
                                            help="a test's toy"))
    yield
    del registry.ARCHITECTURES["lm", "toy"]


TOY = ("--model", "toy", "--hidden-size", "6", "--batch-size", "4", "--seq-len", "8", "--eval-every", "3", "--quiet")


def test_a_registered_toy_trains_generates_evaluates_resumes_and_shows_its_info(runner, tiny_corpus, toy):
    run_cli(runner, "train", tiny_corpus, *TOY, "--max-steps", "6", "--out", "whole.safetensors")
    meta = checkpoint.read_metadata("whole.safetensors")
    assert meta["architecture"] == "toy" and meta["model"] == {"vocab_size": meta["model"]["vocab_size"],
                                                              "hidden_size": 6, "decay": 0.5}
    assert meta["train"]["lr"] == 0.01  # the architecture's own default
    resume = checkpoint.load("whole.resume.safetensors")[0]
    assert resume["carry.memory"].shape == (4, 6)  # its state, carried between batches, saved by its names

    # resumed from step 3, it is the unbroken run, bit for bit
    run_cli(runner, "train", tiny_corpus, *TOY, "--max-steps", "3", "--out", "broken.safetensors")
    run_cli(runner, "train", tiny_corpus, *TOY, "--max-steps", "6", "--out", "broken.safetensors", "--resume")
    assert Path("broken.safetensors").read_bytes() == Path("whole.safetensors").read_bytes()

    generated = run_cli(runner, "generate", "--checkpoint", "whole.safetensors", "--prefix", "the ", "--length", "20",
                        "--seed", "1").stdout
    assert generated.startswith("the ") and len(generated.rstrip("\n")) == 24
    again = run_cli(runner, "generate", "--checkpoint", "whole.safetensors", "--prefix", "the ", "--length", "20",
                    "--seed", "1").stdout
    assert again == generated

    report = json.loads(run_cli(runner, "eval", "--checkpoint", "whole.safetensors", tiny_corpus, "--json").stdout)
    assert report["tokens"] == len(tiny_corpus.read_text()) - 1 and 0 < report["loss"] < 5

    shown = run_cli(runner, "info", "whole.safetensors").stdout
    assert "toy" in shown and "hidden_size=6" in shown


def test_a_flag_the_architecture_has_no_setting_for_is_refused(runner, tiny_corpus, toy):
    result = run_cli(runner, "train", tiny_corpus, *TOY, "--max-steps", "1", "--from-scratch", ok=False)
    assert result.exit_code != 0 and "--from-scratch" in result.stderr and "toy" in result.stderr
    assert "Traceback" not in result.output


def test_every_registered_name_is_a_choice_of_the_cli(runner, toy):
    shown = run_cli(runner, "train", "--help").stdout
    assert all(name in shown for name in registry.names("lm")) and "toy" in shown
