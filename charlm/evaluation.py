"""Evaluation: the loss of a model on batches, and what it means (perplexity, bits per token).

`evaluate` serves the trainer's evaluations and `charlm eval` alike: any model that keeps the
`batch_loss(batch, state)` contract, its state carried from batch to batch whatever it holds. It
knows nothing about files, the CLI, or how batches are made.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from charlm.runtime import autocast


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]], device: torch.device | None = None,
    precision: str = "fp32",
) -> float:
    """Mean loss in nats per predicted token over `batches`, carrying the state from batch to
    batch (a batch with fewer rows continues the last rows). Uses no random numbers, so evaluating
    never changes a training run's trajectory."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    with autocast(device, precision):
        for batch in batches:
            rows = batch[0].shape[0]
            if state is not None and state.batch_size > rows:
                state = state.rows(slice(-rows, None))
            loss, predicted, state = model.batch_loss(tuple(part.to(device) for part in batch), state)
            total, count = total + float(loss), count + int(predicted)
    model.train(was_training)
    return total / max(count, 1)


def loss_report(loss: float) -> dict[str, float]:
    """Loss in nats/token, perplexity, and bits per token."""
    return {"loss": loss, "ppl": perplexity(loss), "bpc": loss / math.log(2)}


def perplexity(loss: float) -> float:
    """exp(loss), bounded so that a diverged loss prints as a huge number, not an overflow."""
    return math.exp(min(loss, 700.0))
