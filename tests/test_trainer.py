"""The trainer: which model it keeps (with a toy model whose validation loss is known to rise after
the first epoch), and the learning-rate schedule."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from charlm.checkpoint import read_metadata
from charlm.trainer import TrainConfig, Trainer, learning_rate
from tests.conftest import TINY_MODEL, run_cli


class Toy(nn.Module):
    """One weight w, loss (w - target)^2: training pulls w to 1, the validation target is 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def batch_loss(self, batch, state=None):
        (target,) = batch
        return ((self.w - target) ** 2).sum(), target.numel(), None


class OnesBatches:
    carries_state = False

    def __len__(self) -> int:
        return 2

    def batches(self, epoch, start=0):
        for _ in range(start, len(self)):
            yield (torch.ones(1),)


@pytest.mark.parametrize(("keep", "saved_step"), [("best", 2), ("last", 6)])
def test_the_model_file_holds_the_best_or_the_last_model(tmp_path, keep, saved_step):
    config = TrainConfig(optimizer="sgd", lr=0.1, epochs=3, keep=keep, device="cpu")
    out = tmp_path / "toy.safetensors"
    summary = Trainer(Toy(), OnesBatches(), lambda: [(torch.zeros(1),)], config, out, {"task": "toy"},
                      progress=False).run()
    assert summary["steps"] == 6 and summary["best_step"] == 2  # validation only got worse after epoch 1
    assert read_metadata(out)["training"]["steps"] == saved_step


def test_cosine_runs_from_lr_to_its_floor_over_the_planned_steps():
    config = TrainConfig(lr=0.01, lr_schedule="cosine", min_lr_ratio=0.1)
    assert learning_rate(config, 0, 101) == pytest.approx(0.01)
    assert learning_rate(config, 50, 101) == pytest.approx(0.01 * (0.1 + 0.9 * 0.5))
    assert learning_rate(config, 100, 101) == pytest.approx(0.001)
    assert learning_rate(config, 500, 101) == pytest.approx(0.001)  # past the plan: the floor
    rates = [learning_rate(config, step, 101) for step in range(101)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert learning_rate(TrainConfig(lr=0.01, lr_schedule="constant"), 77, 101) == 0.01


def test_metrics_record_the_scheduled_rate(runner, tiny_corpus):
    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--epochs", "2", "--eval-every", "3", "--lr", "0.01")
    records = [json.loads(line) for line in open("checkpoints/tiny.metrics.jsonl")]
    steps_per_epoch = records[-1]["step"] // 2
    for record in records:  # the rate of the last step taken before the evaluation
        expected = learning_rate(TrainConfig(lr=0.01), record["step"] - 1, 2 * steps_per_epoch)
        assert math.isclose(record["lr"], expected, rel_tol=1e-9)
    assert records[-1]["lr"] == pytest.approx(0.001)
