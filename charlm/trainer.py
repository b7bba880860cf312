"""Trainer: fits any model that keeps the `logits, state = model(inputs, state)` contract.

It owns the loop (optimizer, clipping, stopping by epochs / steps / time), evaluation, the metrics
file, the best-model checkpoint and the resume checkpoint, signals and divergence. It never asks
which cell or architecture it holds, and it knows nothing about the CLI.

Files of a run whose checkpoint is `runs/x.safetensors`:
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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from charlm import checkpoint
from charlm.errors import CharlmError, CheckpointError, TrainingDiverged, TrainingInterrupted
from charlm.model import map_state, state_from_tensors, state_tensors
from charlm.runtime import exclusive_lock, pick_device, rng_states, seed_everything, set_rng_states

OPTIMIZERS = ("sgd", "adam", "adamw")
KEEPS = ("best", "last")
PRECISIONS = ("auto", "fp32", "bf16")
LOG_EVERY = 10  # steps between progress-bar updates (and the only host-device syncs of training)


@dataclass
class TrainConfig:
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.0
    clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    epochs: int = 20
    max_steps: int | None = None
    max_time: float | None = None  # seconds
    batch_size: int = 32
    seq_len: int = 64
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
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (self.keep in KEEPS, f"--keep must be one of {', '.join(KEEPS)}"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be a positive number, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be 0 or more, got {self.weight_decay}"),
            (self.clip >= 0, f"--clip must be 0 (off) or more, got {self.clip}"),
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


def run_paths(out: str | os.PathLike) -> dict[str, str]:
    """The files of a run, all beside its checkpoint."""
    out = os.fspath(out)
    stem = out[: -len(".safetensors")] if out.endswith(".safetensors") else out
    return {"model": out, "resume": f"{stem}.resume.safetensors", "metrics": f"{stem}.metrics.jsonl"}


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    optimizer_class = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return optimizer_class(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast where asked for (or, with "auto", on a CUDA device that supports it)."""
    wanted = precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    return torch.autocast(device.type, dtype=torch.bfloat16) if wanted else contextlib.nullcontext()


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
            if state is not None and state_tensors(state)[0].shape[1] > rows:
                state = map_state(lambda tensor: tensor[:, -rows:], state)
            loss, predicted, state = model.batch_loss(tuple(part.to(device) for part in batch), state)
            total, count = total + float(loss), count + int(predicted)
    model.train(was_training)
    return total / max(count, 1)


def loss_report(loss: float) -> dict[str, float]:
    """Loss in nats/token, perplexity, and bits per token."""
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bpc": loss / math.log(2)}


class Trainer:
    """Trains `model` on `train_batches`, evaluating on `val_batches()`, writing the run's files
    at `out`. `meta` is what the checkpoints carry besides the weights (task, model config, vocab).

    `train_batches` is a `charlm.data.BatchIterator` or anything with its interface: `len()`,
    `batches(epoch, start)` yielding tuples of tensors whose first is (B, ...), and
    `carries_state`. The model keeps the `batch_loss(batch, state)` contract."""

    def __init__(
        self, model: nn.Module, train_batches: Any, val_batches: Callable[[], Iterable] | None,
        config: TrainConfig, out: str | os.PathLike, meta: dict[str, Any], progress: bool = True,
    ) -> None:
        self.config, self.meta, self.progress = config, meta, progress
        self.paths = run_paths(out)
        self.device = pick_device(config.device)
        seed_everything(config.seed)
        self.model = model.to(self.device)
        self.batches = train_batches
        self.val_batches = val_batches
        self.optimizer = make_optimizer(self.model, config)
        # Position and history: everything a resume restores besides weights and RNGs.
        self.step = self.epoch = self.batch_index = self.tokens = 0
        self.best_val_loss: float | None = None
        self.best_step = 0
        self.elapsed = 0.0
        self.loss_sum, self.loss_count = 0.0, 0  # training loss since the last evaluation
        self.state = None  # the hidden state carried between sequential batches
        self._signal: int | None = None

    # -- the loop ------------------------------------------------------------------------------

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train until the epochs, steps or time run out. Returns the training summary."""
        with exclusive_lock(self.paths["model"]), self._signals():
            if resume:
                self.load_resume()
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.paths["metrics"])
            self._loop()
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
        running = torch.zeros((), device=self.device)  # loss sum since the last host sync
        running_count, last_log, last_tokens = 0, time.perf_counter(), self.tokens
        model.train()
        try:
            while self.epoch < config.epochs and not self._should_stop(started):
                for batch in self.batches.batches(self.epoch, start=self.batch_index):
                    loss = self._train_step(tuple(part.to(self.device, non_blocking=True) for part in batch))
                    running += loss.detach()
                    running_count += 1
                    self.step, self.batch_index = self.step + 1, self.batch_index + 1
                    self.tokens += batch[0].numel()
                    due = config.eval_every is not None and self.step % config.eval_every == 0
                    stopping = self._should_stop(started)
                    if running_count >= LOG_EVERY or due or stopping or self.batch_index == per_epoch:
                        value = float(running)  # one host-device sync per LOG_EVERY steps
                        if not math.isfinite(value):
                            self._diverged()
                        self.loss_sum, self.loss_count = self.loss_sum + value, self.loss_count + running_count
                        now = time.perf_counter()
                        rate = (self.tokens - last_tokens) / max(now - last_log, 1e-9)
                        bar.update(self.step - bar.n)
                        bar.set_postfix(loss=f"{value / running_count:.3f}", tok_s=f"{rate:,.0f}")
                        running.zero_()
                        running_count, last_log, last_tokens = 0, now, self.tokens
                    if due:
                        self._evaluate(started)
                    if stopping:
                        break
                else:  # the epoch ran to its end
                    self.epoch, self.batch_index, self.state = self.epoch + 1, 0, None
                    if config.eval_every is None:
                        self._evaluate(started)
                    continue
                break
            if self._signal is not None:  # save the exact state; no evaluation, so a resumed
                self.elapsed = time.perf_counter() - started  # run's metrics match an unbroken one
                self.save_resume()
            elif self.loss_count or self.best_val_loss is None:  # steps since the last evaluation
                self._evaluate(started)
        finally:
            bar.close()
        if self._signal is not None:
            name = signal.Signals(self._signal).name
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
            loss_sum, count, state = model.batch_loss(batch, self.state)
            loss = loss_sum / count
        self.state = map_state(lambda tensor: tensor.float(), state) if self.batches.carries_state else None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
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

    def _diverged(self) -> None:
        kept = f"the best model so far (step {self.best_step}) is kept in {self.paths['model']}" \
            if self.best_val_loss is not None else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"the training loss became NaN or infinite near step {self.step}; {kept}; "
            f"try a lower --lr (now {self.config.lr}) or gradient clipping (--clip 1)"
        )

    # -- evaluation and files --------------------------------------------------------------------

    def _evaluate(self, started: float) -> None:
        self.elapsed = time.perf_counter() - started
        val_loss = None
        if self.val_batches is not None:
            val_loss = evaluate(self.model, self.val_batches(), self.device, self.config.precision)
        train_loss = self.loss_sum / self.loss_count if self.loss_count else None
        if val_loss is not None and not math.isfinite(val_loss):
            self._diverged()
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
        with open(self.paths["metrics"], "a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
        self.loss_sum, self.loss_count = 0.0, 0
        score = val_loss if val_loss is not None else train_loss
        improved = self.best_val_loss is None or (score is not None and score < self.best_val_loss)
        if improved:
            self.best_val_loss, self.best_step = score, self.step
        if improved or self.config.keep == "last":
            checkpoint.save(self.paths["model"], checkpoint.model_tensors(self.model), self._meta("model"))
        self.save_resume()
        if self.progress:
            shown = f"val loss {val_loss:.4f}, ppl {record['val_ppl']:.2f}" if val_loss is not None else "no validation split"
            tqdm.write(file=sys.stderr, s=f"step {self.step}  epoch {record['epoch']:.2f}  train loss "
                       f"{train_loss if train_loss is None else round(train_loss, 4)}  {shown}  "
                       f"{record['tokens_per_sec']:,.0f} tok/s")

    def summary(self) -> dict[str, Any]:
        return {"steps": self.step, "epochs": self.epoch, "tokens": self.tokens,
                "best_val_loss": self.best_val_loss, "best_step": self.best_step}

    def _meta(self, kind: str) -> dict[str, Any]:
        return {**self.meta, "kind": kind, "train": asdict(self.config), "training": self.summary()}

    def save_resume(self) -> None:
        """Write the full training state: weights, optimizer, RNGs, position, carried state."""
        tensors = checkpoint.model_tensors(self.model)
        optimizer_state = self.optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, values in optimizer_state["state"].items():
            for key, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{index}.{key}"] = value
                else:
                    scalars.setdefault(str(index), {})[key] = value
        tensors.update(rng_states())
        if self.state is not None:
            for index, tensor in enumerate(state_tensors(self.state)):
                tensors[f"carry.{index}"] = tensor
        meta = self._meta("resume")
        meta["resume"] = {
            "step": self.step, "epoch": self.epoch, "batch_index": self.batch_index, "tokens": self.tokens,
            "best_val_loss": self.best_val_loss, "best_step": self.best_step, "elapsed": self.elapsed,
            "loss_sum": self.loss_sum, "loss_count": self.loss_count,
            "param_groups": optimizer_state["param_groups"], "optimizer_scalars": scalars,
        }
        checkpoint.save(self.paths["resume"], tensors, meta)

    def load_resume(self) -> None:
        path = self.paths["resume"]
        if not os.path.exists(path):
            raise CharlmError(f"nothing to resume: {path} does not exist; train without --resume first")
        tensors, meta = checkpoint.load(path, task=self.meta["task"], kind="resume")
        saved = meta.get("train", {})
        changed = [key for key in ("batch_size", "seq_len", "iterator", "seed", "optimizer", "val_fraction")
                   if key in saved and saved[key] != getattr(self.config, key)]
        if meta.get("model") != self.meta.get("model") or changed:
            what = ", ".join(changed) if changed else "the model config"
            raise CharlmError(f"{path} was trained with different settings ({what}); resume with the same flags")
        model = checkpoint.build_model(tensors, meta, path)
        self.model.load_state_dict(model.state_dict())
        info = meta["resume"]
        for key in ("step", "epoch", "batch_index", "tokens", "best_val_loss", "best_step", "elapsed",
                    "loss_sum", "loss_count"):
            setattr(self, key, info[key])
        state: dict[int, dict[str, Any]] = {}
        for name, tensor in tensors.items():
            if name.startswith("optim."):
                _, index, key = name.split(".", 2)
                state.setdefault(int(index), {})[key] = tensor.to(self.device) if key != "step" else tensor
        for index, values in info["optimizer_scalars"].items():
            state.setdefault(int(index), {}).update(values)
        try:
            self.optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"{path}: damaged optimizer state ({error})") from None
        set_rng_states({name: tensor for name, tensor in tensors.items() if name.startswith("rng.")})
        carried = [tensors[f"carry.{index}"].to(self.device) for index in range(2) if f"carry.{index}" in tensors]
        self.state = state_from_tensors(carried) if carried else None
        self._truncate_metrics()

    def _truncate_metrics(self) -> None:
        """Drop metrics lines written after the resume point (by a run killed before its next save)."""
        path = self.paths["metrics"]
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as file:
            lines = [line for line in file if line.strip() and json.loads(line)["step"] <= self.step]
        with open(path, "w", encoding="utf-8") as file:
            file.writelines(lines)

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
