"""Trainer: fits any model that keeps the `loss_sum, count, state = model.batch_loss(batch, state)` contract.

It owns the loop (optimizer, clipping, stopping by epochs / steps / time), evaluation, the metrics
file, the best-model checkpoint and the resume checkpoint, signals and divergence. It never asks
which cell or architecture it holds, and it knows nothing about the CLI.

Under torchrun (a `World` of N processes) it trains with DistributedDataParallel: each process
takes rows [rank*B/N, (rank+1)*B/N) of every batch (B stays the batch size of all processes
together, and a sequential iterator's hidden state is carried per process, for its rows), the
gradients are averaged, and rank 0 alone writes files and shows progress. With equal rows per
process the result equals one process training on the whole batch. Every process evaluates (the
same weights on the same data give the same number), so all take the same decisions.

Files of a run whose checkpoint is `runs/x.safetensors` (named, locked and checked before they are
replaced by `charlm.runfiles`):
    runs/x.safetensors          the best model by validation loss (what `generate` uses), or
                                the last one evaluated with `keep="last"`
    runs/x.resume.safetensors   the latest full training state (what `--resume` uses)
    runs/x.metrics.jsonl        one JSON object per evaluation
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from charlm import checkpoint
from charlm.errors import CharlmError, CheckpointError, TrainingDiverged, TrainingInterrupted
from charlm.state import map_state
from charlm.runfiles import check_creatable, check_replaceable, locked_run, run_paths
from charlm.evaluation import evaluate, loss_report
from charlm.runtime import World, atomic_write, autocast, rng_states, seed_everything, set_rng_states

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine")
KEEPS = ("best", "last")
PRECISIONS = ("auto", "fp32", "bf16")
LOG_EVERY = 10  # steps between progress-bar updates (and the only host-device syncs of training)


@dataclass
class TrainConfig:
    optimizer: str = "adamw"
    lr: float = 3e-3
    lr_schedule: str = "cosine"  # over --epochs; --max-steps and --max-time only stop early
    min_lr_ratio: float = 0.1  # the cosine ends at lr * this
    weight_decay: float = 0.0
    clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    epochs: int = 10
    max_steps: int | None = None
    max_time: float | None = None  # seconds
    batch_size: int = 32
    seq_len: int = 35
    iterator: str = "sequential"
    val_fraction: float = 0.1
    eval_every: int | None = None  # steps; None evaluates once per epoch
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA with bf16 support, else fp32
    keep: str = "best"  # the model checkpoint: the best by validation loss, or the last evaluated


    def __post_init__(self) -> None:
        checks = [
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.lr_schedule in SCHEDULES, f"--lr-schedule must be one of {', '.join(SCHEDULES)}"),
            (0 <= self.min_lr_ratio <= 1, f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (self.keep in KEEPS, f"--keep must be one of {', '.join(KEEPS)}"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be a positive number, got {self.lr}"),
            # Finite, so that a bad value is refused here: an infinite weight decay surfaces steps
            # later as a NaN loss blamed on --lr, and an infinite clip is no clip, which 0 says.
            # --max-time inf stays: only compared with the clock, it is a limit never reached.
            (0 <= self.weight_decay < math.inf, f"--weight-decay must be finite, 0 or more, got {self.weight_decay}"),
            (0 <= self.clip < math.inf, f"--clip must be 0 (off) or a finite number, got {self.clip}"),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.max_steps is None or self.max_steps >= 1, f"--max-steps must be at least 1, got {self.max_steps}"),
            (self.max_time is None or self.max_time > 0, f"--max-time must be positive, got {self.max_time}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.seq_len >= 1, f"--seq-len must be at least 1, got {self.seq_len}"),
            (0 <= self.val_fraction < 1, f"--val-fraction must be in [0, 1), got {self.val_fraction}"),
            (self.eval_every is None or self.eval_every >= 1, f"--eval-every must be at least 1, got {self.eval_every}"),
        ]
        for ok, message in checks:
            if not ok:
                raise CharlmError(message)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    optimizer_class = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return optimizer_class(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _optimizer_layout(config: TrainConfig) -> dict[str, Any]:
    """What the optimizer of `config` keeps for each parameter, learnt from one stepped on a probe:
    {key: "parameter" (a tensor of the parameter's shape), "scalar" (a 0-dim tensor, such as the
    step count) or the type of a plain value}."""
    probe = nn.Parameter(torch.zeros(2))
    # The rates are no part of the layout, and the user's (say --lr 1e38) could overflow the probe's step.
    optimizer = make_optimizer(nn.ParameterList([probe]), replace(config, lr=1.0, weight_decay=0.0))
    probe.grad = torch.ones(2)
    optimizer.step()
    return {key: ("parameter" if value.shape == probe.shape else "scalar") if torch.is_tensor(value) else type(value)
            for key, value in optimizer.state[probe].items()}


def _state_problem(key: str, value: Any, kind: Any, shape: torch.Size, step: int) -> str | None:
    """What is wrong with `value` as the optimizer state `key` of a parameter of `shape` (laid out
    as `_optimizer_layout` says) after `step` steps, or None."""
    if not isinstance(kind, str):
        return None if type(value) is kind else f"is {value!r:.40}, not a {kind.__name__}"
    wanted = torch.Size() if kind == "scalar" else shape
    if not torch.is_tensor(value):
        return f"is a plain {type(value).__name__}, not a tensor of shape {tuple(wanted)}"
    if value.shape != wanted:
        return f"has shape {tuple(value.shape)}, not {tuple(wanted)}"
    if not torch.isfinite(value).all():
        return "is NaN or infinite"
    if key == "step" and not (float(value).is_integer() and 0 <= float(value) <= step):
        return f"counts {float(value):g} steps, where the run has taken {step}"
    return None


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of a run planned for `total_steps`:
    constant, or a cosine from --lr down to --lr x --min-lr-ratio. A pure function of the step, so
    a resumed run follows the same curve."""
    if config.lr_schedule == "constant" or total_steps <= 1:
        return config.lr
    progress = min(step / (total_steps - 1), 1.0)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _resume_position(info: Any) -> dict[str, Any]:
    """The position and history fields of a resume checkpoint's metadata, checked to be numbers."""
    counts = ("step", "epoch", "batch_index", "tokens", "best_step", "loss_count", "running_count")
    position = {key: info.get(key, 0) if key == "running_count" else info[key] for key in counts}
    position.update({key: info[key] for key in ("elapsed", "loss_sum", "best_val_loss")})
    bad = [key for key in counts if type(position[key]) is not int or position[key] < 0]
    # JSON holds NaN, Infinity and 10**400 too: compared, never converted, so that none overflows.
    finite = lambda value: type(value) in (int, float) and -math.inf < value < math.inf  # noqa: E731
    bad += [key for key in ("elapsed", "loss_sum", "best_val_loss")
            if not (finite(position[key]) or (key == "best_val_loss" and position[key] is None))]
    if bad:
        raise ValueError(f"bad {', '.join(bad)}")
    return position


class Trainer:
    """Trains `model` on `train_batches`, evaluating on `val_batches()`, writing the run's files
    at `out`. `meta` is what the checkpoints carry besides the weights (task, model config, vocab).

    `train_batches` is a `charlm.data.BatchIterator` or anything with its interface: `len()`,
    `batches(epoch, start)` yielding tuples of tensors whose first is (B, ...), and
    `carries_state`. The model keeps the `batch_loss(batch, state)` contract, and where the batches
    carry state has `init_state(B)`, the zero state of B rows, and `state_class` (see `charlm.state`). `world` is the
    processes training together (see `charlm.runtime.distributed`); by default this one alone."""

    def __init__(
        self, model: nn.Module, train_batches: Any, val_batches: Callable[[], Iterable] | None,
        config: TrainConfig, out: str | os.PathLike, meta: dict[str, Any], progress: bool = True,
        world: World = World(), inputs: Sequence[str | os.PathLike] = (),
    ) -> None:
        self.config, self.meta, self.world = config, meta, world
        self.inputs = list(inputs)  # files the run reads (the corpus), which it must never write over
        self.progress = progress and world.is_main
        self.paths = run_paths(out)
        self.device = world.device(config.device)
        seed_everything(config.seed)
        self.model = model.to(self.device)
        self.batches = train_batches if world.size == 1 else _RowShare(train_batches, world)
        self.val_batches = val_batches
        self.loss_module: nn.Module = _BatchLoss(self.model)
        if world.size > 1:  # averages the gradients in backward; starts every process from rank 0's weights
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.loss_module = DistributedDataParallel(self.loss_module, device_ids=device_ids)
            seed_everything(config.seed, world.rank)  # each process its own dropout masks
        self.optimizer = make_optimizer(self.model, config)
        # Position and history: everything a resume restores besides weights and RNGs.
        self.step = self.epoch = self.batch_index = self.tokens = 0
        self.best_val_loss: float | None = None
        self.best_step = 0
        self.saved_step: int | None = None  # the step of the last resume checkpoint
        self.elapsed = 0.0
        # The training loss since the last evaluation: summed on the host up to the last flush, and
        # on the device since (so that a step never waits on the device just to log).
        self.loss_sum, self.loss_count = 0.0, 0
        self.running_loss, self.running_count = torch.zeros((), device=self.device), 0
        self.state = None  # the hidden state carried between sequential batches
        self._signal: int | None = None

    # -- the loop ------------------------------------------------------------------------------

    def run(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """Train until the epochs, steps or time run out. Returns the training summary. A run
        already at the output path is continued (`resume`) or replaced (`overwrite`), never lost
        unasked."""
        if self.world.is_main:
            check_creatable(self.paths["model"])
        lock = locked_run(self.paths["model"]) if self.world.is_main else contextlib.nullcontext()
        with lock, self._signals():
            if self.world.is_main:
                check_replaceable(self.paths["model"], self.inputs, resume, overwrite)
                # the resume state: the weights, an optimizer's moments for each, RNGs and the carried state
                checkpoint.check_header_fits(self._meta("resume"), entries=4 * len(self.model.state_dict()) + 16)
            if resume:
                self.load_resume()
            elif self.world.is_main:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.paths["metrics"])  # a charlm metrics file: checked above
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
        config, model = self.config, self.model
        started = time.perf_counter() - self.elapsed
        per_epoch = len(self.batches)
        total = config.epochs * per_epoch
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        bar = tqdm(total=total, initial=self.step, disable=not self.progress, unit="step",
                   dynamic_ncols=True, leave=False, file=sys.stderr)
        last_log, last_tokens = time.perf_counter(), self.tokens
        model.train()
        try:
            while self.epoch < config.epochs and not self._stop_now(started):
                for batch in self.batches.batches(self.epoch, start=self.batch_index):
                    loss = self._train_step(tuple(part.to(self.device, non_blocking=True) for part in batch))
                    self.running_loss += loss.detach()
                    self.running_count += 1
                    self.step, self.batch_index = self.step + 1, self.batch_index + 1
                    self.tokens += batch[0].numel() * self.world.size
                    due = config.eval_every is not None and self.step % config.eval_every == 0
                    # Flushes happen at steps fixed by the schedule alone, never at a stop, so that a
                    # resumed run sums the same losses in the same groups as an unbroken one.
                    flush = self.step % LOG_EVERY == 0 or due or self.batch_index == per_epoch
                    if flush:
                        value, count = self._flush()
                        now = time.perf_counter()
                        rate = (self.tokens - last_tokens) / max(now - last_log, 1e-9)
                        bar.update(self.step - bar.n)
                        bar.set_postfix(loss=f"{value / count:.3f}", tok_s=f"{rate:,.0f}")
                        last_log, last_tokens = now, self.tokens
                    if due:
                        self._evaluate(started)
                    if self._stop_now(started, agree=flush):
                        break
                else:  # the epoch ran to its end
                    self.epoch, self.batch_index, self.state = self.epoch + 1, 0, None
                    if config.eval_every is None:
                        self._evaluate(started)
                    continue
                break
            self._check_finite(float(self.world.mean(self.running_loss)))  # the steps since the last flush
            self.elapsed = time.perf_counter() - started
            interrupted = self.world.any(self._signal is not None, self.device)
            if interrupted:  # save the exact state, and no evaluation
                self.save_resume()
            elif self.loss_count or self.running_count or self.best_val_loss is None:
                # A planned stop between evaluations: evaluate for the user, but save the state as it
                # was before, so that --resume goes on as if the run had never stopped.
                before = self.best_val_loss, self.best_step
                self._evaluate(started, stop=True)
                self.save_resume(stop_evaluated=True, best=before)
        finally:
            bar.close()
        if interrupted:
            name = signal.Signals(self._signal).name if self._signal is not None else "a signal to another process"
            raise TrainingInterrupted(
                f"stopped by {name} at step {self.step}; the run is saved in {self.paths['resume']}: "
                "run the same command with --resume to continue"
            )

    def _train_step(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """One optimizer step; returns the mean loss per predicted token."""
        model, config = self.model, self.config
        if self.state is None or not self.batches.carries_state:
            self.state = None  # the model starts from zeros
        else:
            self.state = map_state(torch.Tensor.detach, self.state)
        with autocast(self.device, config.precision):
            loss_sum, count, state = self.loss_module(batch, self.state)
            loss = loss_sum / count
        self.state = map_state(lambda tensor: tensor.float(), state) if self.batches.carries_state else None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        rate = learning_rate(config, self.step, config.epochs * len(self.batches))
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        if config.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        self.optimizer.step()
        return loss

    def _should_stop(self, started: float) -> bool:
        config = self.config
        return (
            self._signal is not None
            or (config.max_steps is not None and self.step >= config.max_steps)
            or (config.max_time is not None and time.perf_counter() - started >= config.max_time)
        )

    def _stop_now(self, started: float, agree: bool = True) -> bool:
        """`_should_stop`, agreed by all processes: they must stop at the same step, so a time limit
        or a signal is only acted on where they compare (at a flush, every LOG_EVERY steps)."""
        if self.world.size == 1:
            return self._should_stop(started)
        out_of_steps = self.config.max_steps is not None and self.step >= self.config.max_steps
        return out_of_steps or (agree and self.world.any(self._should_stop(started), self.device))

    def _flush(self) -> tuple[float, int]:
        """Move the device's loss sum to the host's (one host-device sync), checked; returns it."""
        value, count = float(self.world.mean(self.running_loss)), self.running_count
        self._check_finite(value)
        self.loss_sum, self.loss_count = self.loss_sum + value, self.loss_count + count
        self.running_loss.zero_()
        self.running_count = 0
        return value, count

    def _check_finite(self, loss: float) -> None:
        """Stop with advice if a loss is NaN or infinite; nothing has been saved since it was."""
        if math.isfinite(loss):
            return
        kept = f"the best model so far (step {self.best_step}) is kept in {self.paths['model']} and the " \
            f"training state of step {self.saved_step} in {self.paths['resume']}" \
            if self.saved_step is not None else "no checkpoint was written yet"
        clip = f"a smaller --clip (now {self.config.clip})" if self.config.clip > 0 else "gradient clipping (--clip 1)"
        # A weight decay past 1 / lr flips the weights' sign each step: it diverges as surely as --lr.
        decay = f", a smaller --weight-decay (now {self.config.weight_decay})" if self.config.weight_decay > 0 else ""
        raise TrainingDiverged(
            f"the training loss became NaN or infinite near step {self.step}; {kept}; "
            f"try a lower --lr (now {self.config.lr}){decay} or {clip}"
            + (", with --resume to go on from there" if self.saved_step is not None else "")
        )

    # -- evaluation and files --------------------------------------------------------------------

    def _evaluate(self, started: float, stop: bool = False) -> None:
        """Evaluate, append a metrics line, save the model if it is the best so far and the resume
        state. At a `stop` the training-loss sums and the resume state are left to the caller."""
        self.elapsed = time.perf_counter() - started
        val_loss = None
        if self.val_batches is not None:  # on every process (same weights, same number): same decisions
            val_loss = evaluate(self.model, self.val_batches(), self.device, self.config.precision)
        count = self.loss_count + self.running_count
        train_loss = (self.loss_sum + float(self.world.mean(self.running_loss))) / count if count else None
        if val_loss is not None:
            self._check_finite(val_loss)
        record = {
            "step": self.step, "epoch": self.epoch + self.batch_index / max(len(self.batches), 1),
            "tokens": self.tokens, "train_loss": train_loss,
            "val_loss": val_loss, "val_ppl": None, "val_bpc": None,
            "tokens_per_sec": self.tokens / max(self.elapsed, 1e-9), "elapsed_s": self.elapsed,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if val_loss is not None:
            report = loss_report(val_loss)
            record["val_ppl"], record["val_bpc"] = report["ppl"], report["bpc"]
        if self.world.is_main:
            with open(self.paths["metrics"], "a", encoding="utf-8") as file:
                file.write(json.dumps(record) + "\n")
        score = val_loss if val_loss is not None else train_loss
        improved = self.best_val_loss is None or (score is not None and score < self.best_val_loss)
        if improved:
            self.best_val_loss, self.best_step = score, self.step
        if (improved or self.config.keep == "last") and self.world.is_main:
            checkpoint.save(self.paths["model"], checkpoint.model_tensors(self.model), self._meta("model"))
        if not stop:
            self.loss_sum, self.loss_count = 0.0, 0
            self.save_resume()
        if self.progress:
            shown = f"val loss {val_loss:.4f}, ppl {record['val_ppl']:.2f}" if val_loss is not None else "no validation split"
            tqdm.write(file=sys.stderr, s=f"step {self.step}  epoch {record['epoch']:.2f}  train loss "
                       f"{train_loss if train_loss is None else round(train_loss, 4)}  {shown}  "
                       f"{record['tokens_per_sec']:,.0f} tok/s")

    def summary(self) -> dict[str, Any]:
        """The run so far. Without a validation split the best model is the one of the lowest
        training loss, and it is named so: best_train_loss, with best_val_loss None."""
        best = {"best_val_loss": self.best_val_loss} if self.val_batches is not None else \
            {"best_val_loss": None, "best_train_loss": self.best_val_loss}
        return {"steps": self.step, "epochs": self.epoch, "tokens": self.tokens, **best, "best_step": self.best_step}

    def _meta(self, kind: str) -> dict[str, Any]:
        return {**self.meta, "kind": kind, "train": asdict(self.config), "training": self.summary()}

    def save_resume(self, stop_evaluated: bool = False, best: tuple[float | None, int] | None = None) -> None:
        """Write the full training state: weights, optimizer, RNGs, position, carried state and the
        loss sums. `stop_evaluated`: the last metrics line is a stop's evaluation, which --resume
        drops; `best` is then the (loss, step) of the best model before it. With several processes
        every one calls this: rank 0 writes its own and the others' RNG states ("rng.rank<r>.*"),
        the carried state of the whole batch (rows joined in rank order) and the mean loss sum."""
        shares = self.world.gather((rng_states(), map_state(torch.Tensor.cpu, self.state)))
        running_loss = self.world.mean(self.running_loss)
        self.saved_step = self.step
        if not self.world.is_main:
            return
        tensors = checkpoint.model_tensors(self.model)
        scalars: dict[str, dict[str, Any]] = {}
        for index, values in self.optimizer.state_dict()["state"].items():
            for key, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{index}.{key}"] = value
                else:
                    scalars.setdefault(str(index), {})[key] = value
        for rank, (rngs, _) in enumerate(shares):
            tensors.update({name.replace("rng.", f"rng.rank{rank}." if rank else "rng.", 1): state
                            for name, state in rngs.items()})
        if shares[0][1] is not None:  # every process's rows, in rank order
            carried = type(shares[0][1]).join([state for _, state in shares])
            tensors.update({f"carry.{name}": tensor for name, tensor in carried.tensors().items()})
        tensors["train.running_loss"] = running_loss
        best_val_loss, best_step = best or (self.best_val_loss, self.best_step)
        meta = self._meta("resume")
        meta["resume"] = {
            "step": self.step, "epoch": self.epoch, "batch_index": self.batch_index, "tokens": self.tokens,
            "best_val_loss": best_val_loss, "best_step": best_step, "elapsed": self.elapsed,
            "loss_sum": self.loss_sum, "loss_count": self.loss_count, "running_count": self.running_count,
            "stop_evaluated": stop_evaluated, "optimizer_scalars": scalars,
        }
        checkpoint.save(self.paths["resume"], tensors, meta)

    def load_resume(self) -> None:
        """Restore everything `save_resume` wrote. The learning rate and weight decay are the
        command's own, and the schedule a function of the step, so `--resume --lr` goes on along
        the same curve scaled to the new rate."""
        path = self.paths["resume"]
        if not os.path.exists(path):
            raise CharlmError(f"nothing to resume: {path} does not exist; train without --resume first")
        tensors, meta = checkpoint.load(path, task=self.meta["task"], kind="resume")
        self._check_same_run(path, meta)
        model = checkpoint.build_model(tensors, meta, path)
        try:
            info = meta["resume"]
            position = _resume_position(info)
            if position["batch_index"] > len(self.batches):
                raise ValueError(f"batch_index {position['batch_index']} is past the end of an epoch "
                                 f"({len(self.batches)} batches)")
            state = self._optimizer_state(tensors, info["optimizer_scalars"], position["step"])
            self.optimizer.load_state_dict({"state": state, "param_groups": self.optimizer.state_dict()["param_groups"]})
            carried = self._carried_state(tensors)
            prefix = f"rng.rank{self.world.rank}." if self.world.rank else "rng."
            own = {name.replace(prefix, "rng.", 1): tensor for name, tensor in tensors.items()
                   if name.startswith(prefix) and (self.world.rank or not name.startswith("rng.rank"))}
            if own or not self.world.rank:
                set_rng_states(own)
            else:  # saved by fewer processes: a fresh stream for this one
                seed_everything(self.config.seed + position["step"], self.world.rank)
            running = tensors.get("train.running_loss", torch.zeros(())).to(self.device, torch.float32).reshape(())
            if not torch.isfinite(running):
                raise ValueError("train.running_loss is NaN or infinite")
        except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{path}: damaged resume state ({error}); train without --resume") from None
        self.model.load_state_dict(model.state_dict())
        for key, value in position.items():
            setattr(self, key, value)
        self.running_loss, self.saved_step = running, self.step
        rows = self.world.rows(self.config.batch_size) if self.world.size > 1 else slice(None)
        self.state = None if carried is None else carried.rows(rows)
        if self.world.is_main:
            self._truncate_metrics(stop_evaluated=info.get("stop_evaluated") is True)

    def _optimizer_state(self, tensors: dict[str, torch.Tensor], scalars: Any, step: int) -> dict[int, dict[str, Any]]:
        """The optimizer state of a resume file ("optim.<index>.<key>" tensors and the JSON
        `scalars`), checked against what this optimizer keeps for each parameter: every key, of the
        right shape, finite, and no more steps than the run has taken. torch itself checks none of
        this until the first step, and then a wrong shape is a traceback and a NaN a diverged loss."""
        parameters = [parameter for group in self.optimizer.param_groups for parameter in group["params"]]
        layout = _optimizer_layout(self.config)
        state: dict[int, dict[str, Any]] = {}
        for name, tensor in tensors.items():
            if name.startswith("optim."):
                _, index, key = name.split(".", 2)
                state.setdefault(int(index), {})[key] = tensor.to(self.device) if key != "step" else tensor
        for index, values in scalars.items():
            state.setdefault(int(index), {}).update(values)
        for index, values in state.items():  # a parameter with no state starts afresh, as at step 0
            if not 0 <= index < len(parameters):
                raise ValueError(f"optimizer state for parameter {index} of {len(parameters)}")
            missing = sorted(layout.keys() - values.keys())
            if missing:
                raise ValueError(f"optimizer state of parameter {index} lacks {', '.join(missing)}, which "
                                 f"--optimizer {self.config.optimizer} keeps")
            for key, kind in layout.items():
                problem = _state_problem(key, values[key], kind, parameters[index].shape, step)
                if problem:
                    raise ValueError(f"optimizer state {key} of parameter {index} {problem}")
            # What this optimizer does not keep is left out: another torch may have kept more (SGD
            # once stored momentum_buffer None), and torch would pass it through unchecked.
            state[index] = {key: values[key] for key in layout}
        return state

    def _carried_state(self, tensors: dict[str, torch.Tensor]) -> Any:
        """The state a resume file carries into the next batch ("carry.<name>"), checked against the
        zero state the model starts a batch of this run from: the same tensors and shapes, finite."""
        carried = {name[len("carry."):]: tensor for name, tensor in tensors.items() if name.startswith("carry.")}
        if not carried or not self.batches.carries_state:
            return None
        expected = self.model.init_state(self.config.batch_size).tensors()
        if carried.keys() != expected.keys():
            raise ValueError(f"carried state tensors {sorted(carried)}, where this model carries {sorted(expected)}")
        for name, tensor in carried.items():
            if tensor.shape != expected[name].shape:
                raise ValueError(f"carried state of shape {tuple(tensor.shape)}, where this model and --batch-size "
                                 f"carry {tuple(expected[name].shape)}")
        if not all(torch.isfinite(tensor).all() for tensor in carried.values()):
            raise ValueError("the carried state is NaN or infinite")
        return self.model.state_class.from_tensors(
            {name: tensor.to(self.device, expected[name].dtype) for name, tensor in carried.items()})

    def _check_same_run(self, path: str, meta: dict[str, Any]) -> None:
        """A resume must use the same data, model and batches: everything in the run's metadata but
        the corpus's name, and the training flags that fix the order of the batches."""
        saved = meta.get("train") if isinstance(meta.get("train"), dict) else {}
        changed = [key for key in ("batch_size", "seq_len", "iterator", "seed", "optimizer", "val_fraction")
                   if key in saved and saved[key] != getattr(self.config, key)]
        changed += [key for key in self.meta if key != "corpus" and meta.get(key) != self.meta[key]]
        if changed:
            raise CharlmError(f"{path} was trained with different settings ({', '.join(changed)}); "
                              "resume with the same flags and corpus")

    def _truncate_metrics(self, stop_evaluated: bool) -> None:
        """Drop metrics lines from after the resume point (a run killed before its next save), a
        stop's evaluation at it, and any line cut short by a kill."""
        path = self.paths["metrics"]
        if not os.path.exists(path):
            return
        if not os.path.isfile(path):  # a FIFO would block the read below forever
            raise CharlmError(f"{path}: not a regular file, so not this run's metrics; move it away and resume")
        kept = []
        with open(path, encoding="utf-8", errors="replace") as file:
            for line in file:
                try:
                    step = json.loads(line)["step"]
                    if step < self.step or (step == self.step and not stop_evaluated):
                        kept.append(line.rstrip("\n") + "\n")
                except (KeyError, TypeError, ValueError):
                    continue
        atomic_write(path, "".join(kept).encode("utf-8"))

    # -- signals ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT / SIGTERM ask the loop to stop after the current step (a second one stops at once)."""
        def handler(number: int, frame: Any) -> None:
            if self._signal is not None:
                raise KeyboardInterrupt
            self._signal = number

        previous = {}
        try:
            for number in (signal.SIGINT, signal.SIGTERM):
                previous[number] = signal.signal(number, handler)
        except ValueError:  # not the main thread: no handlers
            pass
        try:
            yield
        finally:
            for number, old in previous.items():
                signal.signal(number, old)


class _BatchLoss(nn.Module):
    """`model.batch_loss` as a module's forward, the call DistributedDataParallel hooks into, so the
    trainer can average gradients without knowing which model it holds."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: tuple[torch.Tensor, ...], state: Any) -> tuple[torch.Tensor, int, Any]:
        return self.model.batch_loss(batch, state)


class _RowShare:
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
