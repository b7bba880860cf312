"""The pace of a run: the learning-rate schedule fitted to --max-time (the steps it runs over are
the steps done and as many as the time left holds, measured as the run trains), how often it
evaluates, and at each flush the threads kept at the cores free (a `ThreadPilot`'s look).

It knows the run's position (`RunState`), its settings and the processes training together; it
knows nothing about models, batches or files.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import Any

import torch

from charlm.training.optimization import TrainConfig

PLAN_AFTER = 0.02  # of --max-time: the throughput is measured this long before the schedule is fitted
PLAN_WINDOW = 6  # flushes: the throughput that plans a --max-time run is that of the last few
PASSES_AFTER = 0.1  # of --max-time: the plan that tells `on_plan` the passes is the first after this (not a warm-up's)
EVALUATIONS = 20  # without --eval-every, a run evaluates about this many times, whatever its epochs
EVAL_SHARE = 0.1  # and, by the arithmetic, its evaluations take no more than about this share of its work


class TimeBudget:
    """The plan of a --max-time run, kept in `state.planned_steps`. `clock` is the trainer's."""

    def __init__(self, config: TrainConfig, state: Any, world: Any, batches_per_epoch: int, started: float,
                 clock: Callable[[], float], pilot: Any = None, eval_positions: int = 0,
                 on_plan: Callable[[float], None] | None = None) -> None:
        self.config, self.state, self.world, self.batches_per_epoch = config, state, world, batches_per_epoch
        self.pilot = pilot  # the threads, kept at the cores free (`charlm.runtime.cores.ThreadPilot`), or None
        self.eval_positions = eval_positions  # tokens an evaluation predicts, where known (text)
        self.on_plan = on_plan  # told once the passes over the text the run plans, PASSES_AFTER into it
        self.started, self.clock = started, clock
        self.evaluating = [0.0, 0]  # seconds spent in evaluations by this process, and how many
        # (time, step, seconds spent evaluating so far) at recent flushes
        self.recent = collections.deque([(clock(), state.step, 0.0)], maxlen=PLAN_WINDOW)

    def every(self) -> int:
        """The steps between evaluations: --eval-every's, or the run's planned steps (those
        --max-time allows once measured, else --epochs', no more than --max-steps) over
        EVALUATIONS, so that a run of a few kilobytes for hundreds of epochs and one of a large
        text that never ends an epoch both show and keep about as many evaluations; spaced out
        further where an evaluation's tokens would make them over EVAL_SHARE of the work (counted,
        not timed: the same run evaluates at the same steps, and keeps the same model)."""
        config = self.config
        if config.eval_every is not None:
            return config.eval_every
        planned = self.state.planned_steps or config.lr_decay_steps or config.epochs * self.batches_per_epoch
        if config.max_steps is not None:
            planned = min(planned, config.max_steps)
        every = math.ceil(planned / EVALUATIONS)
        if self.eval_positions:  # an evaluation's forward passes cost about a third of training on as many tokens
            step_tokens = config.batch_size * config.seq_len
            every = max(every, math.ceil(self.eval_positions / (3 * step_tokens * EVAL_SHARE)))
        return max(1, every)

    def evaluated(self, seconds: float) -> None:
        """An evaluation took `seconds`: left out of the training rate, and set aside for those to come."""
        self.evaluating[0] += seconds
        self.evaluating[1] += 1

    def plan(self) -> None:
        """With --max-time, fit the schedule to the time: the steps it runs over are the steps done
        and as many as the time left holds, at the training rate of the last PLAN_WINDOW flushes
        (time spent evaluating left out) with the evaluations still to come (each as long as those
        so far, the stop's one included) set aside; no more than --epochs (and --max-steps) allow.
        Planned first after PLAN_AFTER of the budget, then again at every flush, so a machine that
        slows down (another job on it) still ends its cosine at the floor when the time is up.
        Every process takes the same plan (the mean of theirs); the run state keeps it, so a
        resume goes on with it."""
        config, state = self.config, self.state
        if self.pilot is not None:  # first, at every flush of any run: the threads
            self.pilot.check(state.step)
        if config.max_time is None or config.lr_decay_steps is not None:  # no time limit, or a length told
            return
        now = self.clock()
        evaluating, evaluations = self.evaluating
        measured_at, measured_step, measured_evaluating = self.recent[0]
        self.recent.append((now, state.step, evaluating))
        training_seconds = (now - measured_at) - (evaluating - measured_evaluating)
        if now - self.started < PLAN_AFTER * config.max_time or state.step <= measured_step or training_seconds <= 0:
            return
        seconds_per_step = training_seconds / (state.step - measured_step)
        per_evaluation = evaluating / evaluations if evaluations else 0.0
        every = self.every()  # steps between evaluations
        left = max(config.max_time - (now - self.started) - per_evaluation, 0.0)  # the stop's evaluation set aside
        fits = state.step + left / (seconds_per_step + per_evaluation / every)
        cap = config.epochs * self.batches_per_epoch
        if config.max_steps is not None:
            cap = min(cap, config.max_steps)
        planned = float(self.world.mean(torch.tensor(min(fits, cap), dtype=torch.float64)))
        state.planned_steps = max(int(planned), state.step)
        if self.on_plan is not None and now - self.started >= PASSES_AFTER * config.max_time:
            on_plan, self.on_plan = self.on_plan, None
            on_plan(state.planned_steps / max(self.batches_per_epoch, 1))
