"""Training under torchrun: each process's share of every batch (`RowShare`: rows
`world.rows(B)`), and the model's batch loss as the module DistributedDataParallel wraps
(`BatchLoss`), so the trainer averages gradients without knowing which model it holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from charlm.runtime.processes import World


class BatchLoss(nn.Module):
    """`model.batch_loss` as a module's forward, the call DistributedDataParallel hooks into, so the
    trainer can average gradients without knowing which model it holds."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: tuple[torch.Tensor, ...], state: Any) -> tuple[torch.Tensor, int, Any]:
        return self.model.batch_loss(batch, state)


class RowShare:
    """This process's share of a batch source: rows `world.rows(B)` of every tensor of every batch."""

    def __init__(self, batches: Any, world: World) -> None:
        self.source, self.world = batches, world
        if hasattr(batches, "batch_size"):
            world.rows(batches.batch_size)  # a batch size that does not split fails now, not at step 1

    def __len__(self) -> int:
        return len(self.source)

    @property
    def carries_state(self) -> bool:
        return self.source.carries_state

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        for batch in self.source.batches(epoch, start):
            rows = self.world.rows(batch[0].shape[0])
            yield tuple(part[rows] for part in batch)
