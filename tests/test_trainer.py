"""The trainer with a toy model whose validation loss is known to rise after the first epoch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from charlm.checkpoint import read_metadata
from charlm.trainer import TrainConfig, Trainer


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
