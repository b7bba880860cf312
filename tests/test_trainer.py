"""The learning-rate schedule: its curve, and that the metrics record what the optimizer used."""

from __future__ import annotations

import json
import math

import pytest

from charlm.trainer import TrainConfig, learning_rate
from tests.conftest import TINY_MODEL, run_cli


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
