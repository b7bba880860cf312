"""The pace of one model on this machine now: its training steps, timed before a --max-time run
whose recipe waits on the steps and passes over the text the time allows (`charlm.training.recipe.by_pace`).

The steps are the run's own on a model of its own: the run's first batch, the precision and
recurrent path that `charlm.runtime.measured` chooses (and keeps, so a run that trains this model
measures nothing again), and the run's optimizer, each step forward, backward and update. The
random state is saved and restored, so they change nothing of the run. They are timed as the
machine is now: another program's work slows them, and the steps they promise fall with it.
A step's time varies by a fifth from one to the next, so the pace is the mean of at least
TIMED_STEPS of them over at least PACE_SECONDS (or PACE_SHARE of the time, where that is less).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from charlm.runtime.measured import Decisions, batch_step_loss, choose_training_setup, probing
from charlm.runtime.processes import World

WARM_UP_STEPS = 2  # untimed: the first steps allocate and set up what the next reuse
TIMED_STEPS = 5  # at least
MOST_STEPS = 200  # at most: a tiny model's pace is known long before
PACE_SECONDS = 1.0  # timed at least this long
PACE_SHARE = 0.01  # or this share of the time, where that is less


def steps_in(seconds: float, model: torch.nn.Module, batch: tuple[torch.Tensor, ...], model_config: Any,
             decisions: Decisions, precision: str = "auto", optimizer: torch.optim.Optimizer | None = None,
             clock: Callable[[], float] = time.perf_counter) -> float:
    """The training steps `model` (its recorded config `model_config`) makes in `seconds` at the
    pace of its steps on `batch` (the run's first) here now, in `precision` as the run would train,
    each updated by `optimizer` (None: forward and backward only, the weights left as they are)."""
    chosen, fast_path, _ = choose_training_setup(model, batch, model_config, decisions, precision, World())
    with probing(model):
        model.train()
        if fast_path is not None:
            model.fast_path = fast_path

        def step() -> None:
            batch_step_loss(model, batch, chosen == "bf16", True)
            if optimizer is not None:
                optimizer.step()
            model.zero_grad(set_to_none=True)

        for _ in range(WARM_UP_STEPS):
            step()
        least, started, count = min(PACE_SECONDS, PACE_SHARE * seconds), clock(), 0
        while count < MOST_STEPS and (count < TIMED_STEPS or clock() - started < least):
            step()
            count += 1
        per_step = (clock() - started) / count
    return seconds / max(per_step, 1e-9)
