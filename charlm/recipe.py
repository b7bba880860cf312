"""Recipe: how a model is trained, as settings (`TrainConfig`), and the two things those settings
make: the optimizer and the learning rate of each step.

Both are pure functions of the settings (and, for the rate, of the step and the steps planned), so
the trainer and the resume file's checks build the same optimizer, and a resumed run follows the
same curve. Nothing here knows about data, models' insides, files or the loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from charlm.errors import CharlmError
from charlm.presets import KEEPS, LM, OPTIMIZERS, PRECISIONS, SCHEDULES


@dataclass
class TrainConfig:
    """How a model is trained: the optimizer, its schedule, the batches, when to stop and to
    evaluate. Defaults are the language-model task's (`charlm.presets`)."""

    optimizer: str = LM["optimizer"]
    lr: float = LM["lr"]
    lr_schedule: str = LM["lr_schedule"]  # over --epochs, or the steps --max-time allows; --max-steps only stops
    min_lr_ratio: float = LM["min_lr_ratio"]  # the cosine ends at lr * this
    weight_decay: float = LM["weight_decay"]
    clip: float = LM["clip"]  # max global gradient norm; 0 turns clipping off
    epochs: int = LM["epochs"]
    max_steps: int | None = LM["max_steps"]
    max_time: float | None = LM["max_time"]  # seconds
    batch_size: int = LM["batch_size"]
    seq_len: int = LM["seq_len"]
    iterator: str = LM["iterator"]
    val_fraction: float = LM["val_fraction"]
    eval_every: int | None = LM["eval_every"]  # steps; None evaluates once per epoch
    seed: int = LM["seed"]
    device: str = LM["device"]
    precision: str = LM["precision"]  # auto: bf16 on CUDA with it, or where measured faster on a CPU
    keep: str = LM["keep"]  # the model checkpoint: the best by validation loss, or the last evaluated

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


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of a run planned for `total_steps`:
    constant, or a cosine from --lr down to --lr x --min-lr-ratio. A pure function of the step, so
    a resumed run follows the same curve."""
    if config.lr_schedule == "constant" or total_steps <= 1:
        return config.lr
    progress = min(step / (total_steps - 1), 1.0)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
