"""Trainer: fits any model that keeps the `loss_sum, count, state = model.batch_loss(batch, state)` contract.

It owns the loop (optimizer, learning-rate schedule, clipping, stopping by epochs / steps / time),
when to evaluate and what to keep (the metrics line, the best model, a sample), signals and
divergence. The loss is `charlm.evaluation.reports`'s, the resume file `charlm.training.resume`'s,
the --max-time plan `charlm.training.time_budget`'s and the run's files `charlm.training.run_files`'.
It never asks which architecture or state it holds, and it knows nothing about the CLI.

Under torchrun (a `World` of N processes) it trains with DistributedDataParallel: each process
takes rows [rank*B/N, (rank+1)*B/N) of every batch (B stays the batch size of all processes
together, and a sequential iterator's hidden state is carried per process, for its rows), the
gradients are averaged, and rank 0 alone writes files and shows progress. With equal rows per
process the result equals one process training on the whole batch. Every process evaluates (the
same weights on the same data give the same number), so all take the same decisions.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from charlm.checkpoints import files as checkpoint
from charlm.checkpoints import loading
from charlm.checkpoints.metadata import Metadata, read, write
from charlm.errors import CharlmError, CheckpointError, TrainingDiverged, TrainingInterrupted
from charlm.evaluation.reports import evaluate, loss_report
from charlm.models.state import map_state
from charlm.presets import record
from charlm.runtime.processes import StopSignals, World
from charlm.runtime.device import autocast, rng_states, seed_everything, set_rng_states
from charlm.runtime.measured import Decisions, choose_training_setup
from charlm.training.time_budget import TimeBudget
from charlm.training.watch import LossWatch
from charlm.training.optimization import TrainConfig, WeightAverage, learning_rate, make_optimizer, scheduled, set_rate
from charlm.training.progress import Progress, show_evaluation, tokens_per_second
from charlm.training.recipe import apply_passes
from charlm.training.resume import RunState, read_resume, write_resume
from charlm.training.run_files import (MetricsFile, check_creatable, check_replaceable, locked_run, remove_finished,
                                       run_paths)
from charlm.training.sharing import BatchLoss, RowShare

LOG_EVERY = 10  # steps between progress-bar updates (and the only host-device syncs of training)
clock = time.perf_counter  # the trainer's clock (a test may make time pass as it likes)


class Trainer:
    """Trains `model` on `train_batches`, evaluating on `val_batches()`, writing the run's files
    at `out`. `meta` is what the checkpoints carry besides the weights (task, model config, vocab:
    a `charlm.checkpoints.metadata.Metadata`, or its JSON object).

    `train_batches` is a `charlm.data.batches.BatchIterator` or anything with its interface: `len()`,
    `batches(epoch, start)` yielding tuples of tensors whose first is (B, ...), and
    `carries_state`. The model keeps the `batch_loss(batch, state)` contract, and where the batches
    carry state has `init_state(B)`, the zero state of B rows, and `state_class` (see
    `charlm.models.state`). `world` is the processes training together (see `charlm.runtime.processes.distributed`);
    by default this one alone. `inputs` are the files the run reads, which it never writes over."""

    def __init__(
        self, model: nn.Module, train_batches: Any, val_batches: Callable[[], Iterable] | None,
        config: TrainConfig, out: str | os.PathLike, meta: Metadata | dict[str, Any], progress: bool = True,
        world: World = World(), inputs: Sequence[str | os.PathLike] = (), tuning_dir: str | None = None,
        resume_meta: dict[str, Any] | None = None, sample: Callable[[nn.Module], str] | None = None, pilot: Any = None,
        by_passes: bool = False,
    ) -> None:
        self.config, self.meta, self.world, self.inputs = config, read(meta), world, list(inputs)
        self.by_passes = by_passes  # a --max-time run's plan sets the recipe's dropout (`recipe.apply_passes`)
        self.tuning_dir = tuning_dir  # where measured choices are kept (`charlm.runtime.measured`)
        self.resume_meta = resume_meta or {}  # what the resume file carries beyond `meta` (its corpus's identity)
        self.sample, self.pilot = sample, pilot  # what the model writes now; the threads' `charlm.runtime.cores.ThreadPilot`
        self.precision = config.precision  # "auto" on a CPU becomes what `_choose_setup` measures
        self.progress = progress and world.is_main
        self.paths = run_paths(out)
        self.metrics = MetricsFile(self.paths["metrics"])
        self.device = world.device(config.device)
        seed_everything(config.seed)
        self.model = model.to(self.device)
        self.batches, self.val_batches = train_batches if world.size == 1 else RowShare(train_batches, world), val_batches
        self.loss_module: nn.Module = BatchLoss(self.model)
        if world.size > 1:  # averages the gradients in backward; starts every process from rank 0's weights
            self.loss_module = DistributedDataParallel(self.loss_module, device_ids=[self.device.index]
                                                       if self.device.type == "cuda" else None)
            seed_everything(config.seed, world.rank)  # each process its own dropout masks
        self.optimizer = make_optimizer(self.model, config)
        self.average = WeightAverage(self.model, config.ema) if config.ema > 0 else None  # what is evaluated and kept
        self.run_state = RunState()  # position and history: what a resume restores besides weights and RNGs
        # the training loss since the last flush, on the device: a step never waits to log (`state.loss_sum`: flushed)
        self.running_loss = torch.zeros((), device=self.device)
        self.carried, self.saved_step = None, None  # the state carried between sequential batches; the last resume's step
        self.signals = StopSignals()  # SIGINT / SIGTERM: stop after the step, saving the run

    # -- the run ---------------------------------------------------------------------------------

    def run(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """Train until the epochs, steps or time run out. Returns the training summary. A run
        already at the output path is continued (`resume`) or replaced (`overwrite`), never lost
        unasked."""
        if self.world.is_main:
            check_creatable(self.paths["model"])
        lock = locked_run(self.paths["model"]) if self.world.is_main else contextlib.nullcontext()
        with lock, self.signals:
            if self.world.is_main:
                check_replaceable(self.paths["model"], self.inputs, resume, overwrite)
                # the resume state: the weights, an optimizer's moments for each, RNGs and the carried state
                checkpoint.check_header_fits(write(self._meta("resume")), entries=5 * len(self.model.state_dict()) + 16)
            if resume:
                self.load_resume()
            elif self.world.is_main:
                remove_finished(self.paths["model"])  # the run's own files: checked above
            self.precision = self._choose_setup()
            try:
                self._loop()
            except OSError as error:  # a full disk mid-run: the last state saved is whole (atomic writes)
                if self.saved_step is None:
                    raise
                raise CharlmError(
                    f"cannot write the run ({error.strerror or error}: {error.filename or self.paths['model']}); "
                    f"the training state of step {self.saved_step} is saved in {self.paths['resume']}: make room "
                    "and run the same command with --resume to continue"
                ) from None
        return self.summary()

    def _loop(self) -> None:
        config, state = self.config, self.run_state
        started = clock() - state.elapsed
        per_epoch = len(self.batches)
        self.budget = TimeBudget(config, state, self.world, per_epoch, started, clock, self.pilot,
                                 getattr(self.val_batches, "positions", 0), self._planned if self.by_passes else None)
        records = self.metrics.read()
        self.watch = LossWatch(records, config.early_stop)  # the evaluations so far, a resume's too
        self.evaluated_at = records[-1]["step"] if records else state.step  # the step of the last evaluation
        total = min(config.epochs * per_epoch, config.max_steps or config.epochs * per_epoch)
        bar = Progress(state.planned_steps or total, state.step, self.progress)
        self.model.train()
        keyboard = False  # a KeyboardInterrupt raised in the loop (a notebook's, a program's)
        try:
            try:
                while state.epoch < config.epochs and not self._stop_now(started):
                    for batch in self.batches.batches(state.epoch, start=state.batch_index):
                        # 1. one optimizer step; its loss stays on the device
                        loss = self._train_step(tuple(part.to(self.device, non_blocking=True) for part in batch))
                        self.running_loss += loss.detach()
                        state.running_count += 1
                        state.step, state.batch_index = state.step + 1, state.batch_index + 1
                        state.tokens += batch[0].numel() * self.world.size
                        # 2. every LOG_EVERY steps (and before an evaluation) the loss comes to the host:
                        # at steps fixed by the schedule alone, never at a stop, so that a resumed run
                        # sums the same losses in the same groups as an unbroken one
                        due = state.step - self.evaluated_at >= self.budget.every()
                        flush = state.step % LOG_EVERY == 0 or due or state.batch_index == per_epoch
                        if flush:
                            value, count = self._flush()
                            self.budget.plan()
                            now = clock()
                            rate = tokens_per_second(state.tokens, now - started)  # as the metrics say it
                            bar.update(state.step, value / count, rate, scheduled(self.optimizer), now - started,
                                       state.planned_steps)
                        # 3. evaluation every --eval-every steps: metrics, best model, resume file
                        if due:
                            self._evaluate(started)
                        # 4. a limit or a signal, agreed by every process
                        if self._stop_now(started, agree=flush):
                            break
                    else:  # the epoch ran to its end
                        state.epoch, state.batch_index, self.carried = state.epoch + 1, 0, None
                        continue
                    break
            except KeyboardInterrupt:
                # Not from `self.signals` (which turn a first signal into `received`): saved like
                # a signal, as of the last step counted, for --resume to go on from.
                if self.signals.received is not None:  # a second signal: stop at once
                    raise
                keyboard = True
            # 5. the stop: check the steps since the last flush, then save
            self._check_finite(float(self.world.mean(self.running_loss)))
            state.elapsed = clock() - started
            interrupted = self.world.any(self.signals.received is not None or keyboard, self.device)
            if interrupted:  # save the exact state, and no evaluation
                self.save_resume()
            elif state.loss_count or state.running_count or state.best_val_loss is None:
                # A planned stop between evaluations: evaluate for the user, but save the state as it
                # was before, so that --resume goes on as if the run had never stopped.
                before = replace(state)
                self._evaluate(started, stop=True)
                self.save_resume(stop_evaluated=True, best=before)
        finally:
            bar.close()
        if interrupted:
            name = ("KeyboardInterrupt" if keyboard else signal.Signals(self.signals.received).name
                    if self.signals.received is not None else "a signal to another process")
            raise TrainingInterrupted(
                f"stopped by {name} at step {state.step}; the run is saved in {self.paths['resume']}: "
                "run the same command with --resume to continue"
            )

    def _train_step(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """One optimizer step; returns the mean loss per predicted token."""
        config = self.config
        if self.carried is None or not self.batches.carries_state:
            self.carried = None  # the model starts from zeros
        else:
            self.carried = self.carried.map(torch.Tensor.detach)
        with autocast(self.device, self.precision):
            loss_sum, count, carried = self.loss_module(batch, self.carried)
            loss = loss_sum / count
        self.carried = map_state(lambda tensor: tensor.float(), carried) if self.batches.carries_state else None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        planned = config.lr_decay_steps or self.run_state.planned_steps or config.epochs * len(self.batches)
        set_rate(self.optimizer, learning_rate(config, self.run_state.step, planned))
        if config.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.clip)
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.model)
        return loss

    def _choose_setup(self) -> str:
        """The precision to train in, and for a recurrent model the code that runs its layers, as
        measured on this CPU on the run's first batch (`charlm.runtime.measured.choose_training_setup`).
        Elsewhere the precision as asked (auto on CUDA is bf16 where the GPU has it: `autocast`)."""
        if self.device.type != "cpu":
            return self.config.precision
        batch = next(iter(self.batches.batches(0)), None)
        if batch is None:
            return "fp32" if self.config.precision == "auto" else self.config.precision
        precision, self.model.fast_path, why = choose_training_setup(
            self.model, tuple(part.to(self.device) for part in batch), self.meta.model, Decisions(self.tuning_dir),
            self.config.precision, self.world, self.pilot is not None)
        if why and self.progress:
            tqdm.write(f"note: training in {why}", file=sys.stderr)
        return precision

    def _planned(self, passes: float) -> None:
        """A --max-time run's plan a tenth into it: the recipe's dropout for the `passes` it makes over the text."""
        if (line := apply_passes(self.model, self.meta, passes)) and self.progress:
            tqdm.write(f"note: {line}", file=sys.stderr)

    def _should_stop(self, started: float) -> bool:
        config = self.config
        return (
            self.signals.received is not None
            or (config.max_steps is not None and self.run_state.step >= config.max_steps)
            or (config.max_time is not None and clock() - started >= config.max_time)
            or self.watch.exhausted()  # --early-stop: no better held-out loss for that many evaluations
        )

    def _stop_now(self, started: float, agree: bool = True) -> bool:
        """`_should_stop`, agreed by all processes: they must stop at the same step, so a time limit
        or a signal is only acted on where they compare (at a flush, every LOG_EVERY steps)."""
        if self.world.size == 1:
            return self._should_stop(started)
        out_of_steps = self.config.max_steps is not None and self.run_state.step >= self.config.max_steps
        return out_of_steps or (agree and self.world.any(self._should_stop(started), self.device))

    def _flush(self) -> tuple[float, int]:
        """Move the device's loss sum to the host's (one host-device sync), checked; returns it."""
        state = self.run_state
        value, count = float(self.world.mean(self.running_loss)), state.running_count
        self._check_finite(value)
        state.loss_sum, state.loss_count = state.loss_sum + value, state.loss_count + count
        self.running_loss.zero_()
        state.running_count = 0
        return value, count

    def _check_finite(self, loss: float) -> None:
        """Stop with advice if a loss is NaN or infinite; nothing has been saved since it was."""
        if math.isfinite(loss):
            return
        kept = f"the best model so far (step {self.run_state.best_step}) is kept in {self.paths['model']} and the " \
            f"training state of step {self.saved_step} in {self.paths['resume']}" \
            if self.saved_step is not None else "no checkpoint was written yet"
        clip = f"a smaller --clip (now {self.config.clip})" if self.config.clip > 0 else "gradient clipping (--clip 1)"
        # A weight decay past 1 / lr flips the weights' sign each step: it diverges as surely as --lr.
        decay = f", a smaller --weight-decay (now {self.config.weight_decay})" if self.config.weight_decay > 0 else ""
        raise TrainingDiverged(
            f"the training loss became NaN or infinite near step {self.run_state.step}; {kept}; "
            f"try a lower --lr (now {self.config.lr}){decay} or {clip}"
            + (", with --resume to go on from there" if self.saved_step is not None else "")
        )

    # -- evaluation, metrics and the best model --------------------------------------------------

    def _evaluate(self, started: float, stop: bool = False) -> None:
        """Evaluate, append a metrics line, save the model if it is the best so far and the resume
        state. At a `stop` the training-loss sums and the resume state are left to the caller."""
        state = self.run_state
        began = clock()
        state.elapsed, self.evaluated_at = began - started, state.step
        val_loss = None
        if self.val_batches is not None:  # on every process (same weights, same number): same decisions
            with self._evaluated_weights():
                val_loss = evaluate(self.model, self.val_batches(), self.device, self.precision)
        count = state.loss_count + state.running_count
        train_loss = (state.loss_sum + float(self.world.mean(self.running_loss))) / count if count else None
        if val_loss is not None:
            self._check_finite(val_loss)
        record = {
            "step": state.step, "epoch": state.epoch + state.batch_index / max(len(self.batches), 1),
            "tokens": state.tokens, "train_loss": train_loss,
            "val_loss": val_loss, "val_ppl": None, "val_bpc": None,
            "tokens_per_sec": tokens_per_second(state.tokens, state.elapsed), "elapsed_s": state.elapsed,
            "lr": scheduled(self.optimizer),
        }
        if val_loss is not None:
            report = loss_report(val_loss)
            record["val_ppl"], record["val_bpc"] = report["ppl"], report["bpc"]
        if self.world.is_main:
            self.metrics.append(record)
        score = val_loss if val_loss is not None else train_loss
        improved = state.best_val_loss is None or (score is not None and score < state.best_val_loss)
        if improved:
            state.best_val_loss, state.best_step = score, state.step
        note = self.watch.add(val_loss, train_loss, state.best_step)
        if (improved or self.config.keep == "last") and self.world.is_main:
            with self._evaluated_weights():
                checkpoint.save(self.paths["model"], loading.model_tensors(self.model), write(self._meta("model")))
        if not stop:
            state.loss_sum, state.loss_count = 0.0, 0
            self.save_resume()
        if self.progress:
            with self._evaluated_weights():  # what the model writes now, seeded alike each time
                sample = self.sample(self.model) if self.sample is not None else None
            stopping = self.watch.exhausted() and f"no better held-out loss in {self.config.early_stop} evaluations"
            show_evaluation(record, sample, note or (stopping and f"note: stopping early: {stopping} (--early-stop)"))
        self.budget.evaluated(clock() - began)

    def _evaluated_weights(self) -> contextlib.AbstractContextManager:
        """The weights evaluated and kept: with --ema their average, else the model's own."""
        return self.average.applied(self.model) if self.average is not None else contextlib.nullcontext()

    def summary(self) -> dict[str, Any]:
        """The run so far. Without a validation split the best model is the one of the lowest
        training loss, and it is named so: best_train_loss, with best_val_loss None."""
        state = self.run_state
        best = {"best_val_loss": state.best_val_loss} if self.val_batches is not None else \
            {"best_val_loss": None, "best_train_loss": state.best_val_loss}
        return {"steps": state.step, "epochs": state.epoch, "tokens": state.tokens, **best, "best_step": state.best_step}

    def _meta(self, kind: str) -> Metadata:
        return replace(self.meta, kind=kind, train=record(self.config), training=self.summary())

    # -- the resume file -------------------------------------------------------------------------

    def save_resume(self, stop_evaluated: bool = False, best: RunState | None = None) -> None:
        """Write the full training state (`charlm.training.resume`). `stop_evaluated`: the last metrics line
        is a stop's evaluation, which --resume drops, and `best` the run state before it. Every process
        calls this: rank 0 writes all RNG states, the whole batch's carried state and the mean loss sum."""
        shares = self.world.gather((rng_states(), map_state(torch.Tensor.cpu, self.carried)))
        running_loss = self.world.mean(self.running_loss)
        self.saved_step = self.run_state.step
        if not self.world.is_main:
            return
        carried = type(shares[0][1]).join([state for _, state in shares]) if shares[0][1] is not None else None
        state = self.run_state
        if best is not None:
            state = replace(state, best_val_loss=best.best_val_loss, best_step=best.best_step)
        write_resume(self.paths["resume"], self.model, self.optimizer, [rngs for rngs, _ in shares], carried,
                     running_loss, state, replace(self._meta("resume"), **self.resume_meta), stop_evaluated,
                     self.average.tensors() if self.average is not None else {})

    def load_resume(self) -> None:
        """Restore everything `save_resume` wrote, checked whole first. The learning rate and
        weight decay are the command's own, and the schedule a function of the step, so
        `--resume --lr` goes on along the same curve scaled to the new rate."""
        resumed = read_resume(self.paths["resume"], self.meta, self.config, self.model, self.optimizer,
                              len(self.batches), self.batches.carries_state, self.world.rank, self.device)
        self.optimizer.load_state_dict({"state": resumed.optimizer_state,
                                        "param_groups": self.optimizer.state_dict()["param_groups"]})
        if resumed.rng_states or not self.world.rank:
            set_rng_states(resumed.rng_states)
        else:  # saved by fewer processes: a fresh stream for this one
            seed_everything(self.config.seed + resumed.run_state.step, self.world.rank)
        self.model.load_state_dict(resumed.weights)
        if self.average is not None:
            try:
                self.average.load(resumed.average, self.model)
            except ValueError as error:
                raise CheckpointError(f"{self.paths['resume']}: damaged resume state ({error}); "
                                      "train without --resume") from None
        self.run_state, self.running_loss, self.saved_step = resumed.run_state, resumed.running_loss, resumed.run_state.step
        rows = self.world.rows(self.config.batch_size) if self.world.size > 1 else slice(None)
        self.carried = None if resumed.carried is None else resumed.carried.rows(rows)
        if self.world.is_main:
            self.metrics.truncate(self.run_state.step, resumed.stop_evaluated)




