"""Tuning: a choice between two correct ways to compute the same thing, made by measuring both on
this machine (as cuDNN's benchmark mode does), once per machine and shape, and remembered.

Today it decides `--precision auto` on a CPU: bf16 autocast where the CPU has bf16 matrix
instructions (oneDNN: AMX, AVX-512 BF16) and a training step measures faster in it than in fp32,
with the loss of the same batch within `LOSS_TOLERANCE` of fp32's; else fp32. A model whose step
takes under `MIN_STEP_SECONDS` is not measured (fp32: too small to gain, and its runs stay as they
always were). Measuring runs real forward and backward passes on the run's first batch, with the
random state saved and restored and the gradients cleared, so it changes nothing of the run.

Decisions are kept in `tuning.json` in the token-cache folder, keyed by the CPU, torch's version
and thread count, the model's config and the batch's shape; a resumed run keeps its own. This
module knows nothing about files but that one, nor about the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from charlm.runtime import atomic_write

MIN_STEP_SECONDS = 0.02  # an fp32 step shorter than this is not worth measuring
LOSS_TOLERANCE = 0.01  # relative: bf16's loss on the measured batch against fp32's
SPEEDUP = 1.1  # bf16 must be at least this much faster
REPEATS = 3  # timed steps of each precision, after one untimed
FILE = "tuning.json"
MAX_FILE_BYTES = 1 << 20  # a decisions file past this is not charlm's: it is measured again, not read


def cpu_name() -> str:
    """The CPU's model name (what /proc/cpuinfo says), or the platform's word for it."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def bf16_capable() -> bool:
    """Whether oneDNN runs bf16 matrix products natively on this CPU."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Decisions:
    """The decisions kept in `folder/tuning.json` (none kept when `folder` is None)."""

    def __init__(self, folder: str | os.PathLike | None) -> None:
        self.path = os.path.join(os.fspath(folder), FILE) if folder is not None else None

    def _read(self) -> dict[str, Any]:
        if self.path is None or not os.path.isfile(self.path) or os.path.getsize(self.path) > MAX_FILE_BYTES:
            return {}  # none yet; or a FIFO (which would block the read), a folder, a giant: measure again
        try:
            with open(self.path, encoding="utf-8") as file:
                found = json.load(file)
            return found if isinstance(found, dict) else {}
        except (OSError, ValueError):  # none yet, or damaged: measure again
            return {}

    def get(self, key: str) -> Any:
        return self._read().get(key)

    def put(self, key: str, value: Any) -> None:
        if self.path is None:
            return
        found = self._read()
        found[key] = value
        with contextlib.suppress(OSError):  # an unwritable folder costs the memory, not the run
            atomic_write(self.path, json.dumps(found, indent=1, sort_keys=True).encode("utf-8"))


def _seconds(function: Callable[[], Any]) -> float:
    """The best of REPEATS timed calls, after one untimed."""
    function()
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def choose_cpu_precision(
    step_loss: Callable[[bool, bool], torch.Tensor], model: torch.nn.Module, key_parts: dict[str, Any],
    decisions: Decisions,
) -> tuple[str, str | None]:
    """("bf16" or "fp32", a line saying why, or None where nothing was worth measuring) for
    training on this CPU. `step_loss(bf16, backward)` runs the forward pass on one batch (under
    bf16 autocast when asked), the backward pass too when asked, and returns the loss."""
    if not bf16_capable():
        return "fp32", None
    key = json.dumps({"cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                      **key_parts}, sort_keys=True)
    kept = decisions.get(key)
    if isinstance(kept, dict) and kept.get("precision") in ("bf16", "fp32"):
        return kept["precision"], f"{kept['precision']}: as measured before on this CPU ({kept.get('why', '')})"
    with torch.random.fork_rng(devices=[]):
        was_training = model.training
        try:
            fp32 = _seconds(lambda: step_loss(False, True))
            if fp32 < MIN_STEP_SECONDS:
                return "fp32", None
            bf16 = _seconds(lambda: step_loss(True, True))
            model.eval()
            with torch.no_grad():
                loss_fp32, loss_bf16 = float(step_loss(False, False)), float(step_loss(True, False))
        finally:
            model.train(was_training)
            model.zero_grad(set_to_none=True)
    close = abs(loss_bf16 - loss_fp32) <= LOSS_TOLERANCE * abs(loss_fp32)
    faster = fp32 / bf16
    precision = "bf16" if close and faster >= SPEEDUP else "fp32"
    why = (f"a bf16 step measured {faster:.2f}x fp32's on {cpu_name()}, loss {loss_bf16:.4f} vs {loss_fp32:.4f}"
           + ("" if close else ", too far apart"))
    decisions.put(key, {"precision": precision, "why": why})
    return precision, f"{precision}: {why}"
