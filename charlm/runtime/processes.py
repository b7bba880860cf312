"""Processes: stop signals turned into a flag (`StopSignals`), and which of several processes this
one is (`World`, under torchrun: its rank, its rows of a batch, the collectives the trainer
agrees by). It knows nothing about models or data.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from charlm.errors import CharlmError
from charlm.runtime.device import pick_device


class StopSignals:
    """Within the block, SIGINT and SIGTERM only ask to stop: `received` is the first one's number,
    for a loop to finish its step and save; a second one stops at once (KeyboardInterrupt). Outside
    the main thread no handler can be set, and signals act as they always do."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, number: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = number

    def __enter__(self) -> StopSignals:
        try:
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handler)
        except ValueError:  # not the main thread
            pass
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for number, old in self._previous.items():
            signal.signal(number, old)
        self._previous.clear()


@dataclass(frozen=True)
class World:
    """The processes that train one model together, and this one's place among them. torchrun
    starts one per device and names it in RANK, LOCAL_RANK (its index on its machine) and
    WORLD_SIZE; a process started on its own is a world of one, where every collective below is a
    no-op, so callers never branch on it."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0

    def device(self, name: str = "auto") -> torch.device:
        """`pick_device(name)`, and with several processes on CUDA, this process's own GPU."""
        device = pick_device(name)
        if self.size > 1 and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        if self.size > 1 and device.type == "mps":
            raise CharlmError("training over several processes needs CUDA or the CPU; use --device cuda or cpu")
        return device

    def rows(self, batch_size: int) -> slice:
        """This process's share of a batch of `batch_size` rows: [rank*B/N, (rank+1)*B/N)."""
        if batch_size % self.size:
            raise CharlmError(
                f"--batch-size {batch_size} does not split evenly over {self.size} processes; "
                f"use a multiple of {self.size} (it is the batch size of all processes together)"
            )
        share = batch_size // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over the processes (gloo has no averaging all-reduce: sum, divide)."""
        if self.size == 1:
            return tensor
        tensor = tensor.detach().clone()
        dist.all_reduce(tensor)
        return tensor / self.size

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process if `flag` is true on any."""
        if self.size == 1:
            return flag
        value = torch.tensor(float(flag), device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value)

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value` (picklable), in rank order, on every process."""
        if self.size == 1:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (filling a cache, say) while the others wait, then the others."""
        if not self.is_main:
            dist.barrier()
        yield
        if self.is_main and self.size > 1:
            dist.barrier()


@contextlib.contextmanager
def distributed(device: str = "auto") -> Iterator[World]:
    """The `World` of this process, read from torchrun's environment. With more than one process
    the process group is set up for the block (NCCL on CUDA, gloo on the CPU) and torn down after;
    rendezvous (single or multi-node) is torchrun's job, through MASTER_ADDR / MASTER_PORT."""
    world = World(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                  int(os.environ.get("WORLD_SIZE", 1)))
    if world.size == 1:
        yield world
        return
    where = world.device(device)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    # An hour, not NCCL's 10 minutes: the others wait while rank 0 tokenizes a big corpus.
    dist.init_process_group("nccl" if where.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=1))
    try:
        yield world
    finally:
        dist.destroy_process_group()
