"""Tuning: a choice between two correct ways to compute the same thing, made by measuring both on
this machine (as cuDNN's benchmark mode does), once per machine and shape, and remembered.

It decides, for training on a CPU, `--precision auto`: bf16 autocast where the CPU has bf16
matrix instructions (oneDNN: AMX, AVX-512 BF16) and a training step measures faster in it than in
fp32, with the loss of the same batch within `LOSS_TOLERANCE` of fp32's; else fp32. And for a
recurrent model in fp32, whether charlm's kernels or torch's own module (oneDNN's fused LSTM, where
torch uses it) runs its layers: the faster of the two here. A model whose step takes under
`MIN_STEP_SECONDS` is not measured (fp32 and the kernels' own rule: too small to gain, and its runs
stay as they always were). Measuring runs real forward and backward passes on the run's first batch, with the
random state saved and restored and the gradients cleared, so it changes nothing of the run.

For generation (`choose_generation_precision`) it decides whether the stepper's products run in
bf16 or fp32, by timing both on a short greedy probe at the rows asked for, with bf16's next-token
distributions within `KL_TOLERANCE` of fp32's along the same tokens.

Choices are measured in turns (each round times every way once), and a measurement taken while
other programs kept a quarter of a core or more busy (`charlm.runtime.cores.CpuWatch`) is used by
its run but not kept; a kept training decision whose chosen way now runs a step in under
CONTRADICTED of its recorded time was measured under load, and is measured again.

Decisions are kept in `tuning.json` in the token-cache folder (generation's in `.charlm-cache/`
beside the checkpoint), keyed by the CPU, torch's version and thread count, the model's config
and the batch's shape; a resumed run keeps its own. This
module knows nothing about files but that one, nor about the CLI.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

import torch

from charlm.runtime.cores import QUIET, CpuWatch, threads_for
from charlm.runtime.files import atomic_write
from charlm.text.folders import TUNING_FILE as FILE  # a corpus folder leaves it out by this name

MIN_STEP_SECONDS = 0.02  # an fp32 step shorter than this is not worth measuring
LOSS_TOLERANCE = 0.01  # relative: bf16's loss on the measured batch against fp32's
SPEEDUP = 1.1  # bf16 must be at least this much faster
REPEATS = 3  # timed steps of each precision, after one untimed
MAX_FILE_BYTES = 1 << 20  # a decisions file past this is not charlm's: it is measured again, not read
MIN_GENERATION_WORK = 1_000_000  # multiply-adds of a step (rows x weights) under which its calls cost, not its products
KL_TOLERANCE = 0.01  # nats: bf16's next-token distributions from fp32's, on average over the probe
PROBE_STEPS = 24  # generation steps of each precision, the first two untimed
CONTRADICTED = 0.6  # a kept step time that a step now takes under this share of was measured under load


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
    """The decisions kept in `folder/tuning.json` (none kept when `folder` is None); `measured`
    says whether one was measured, not read, through this object."""

    def __init__(self, folder: str | os.PathLike | None) -> None:
        self.path = os.path.join(os.fspath(folder), FILE) if folder is not None else None
        self.measured = False

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
        self.measured = True
        if self.path is None:
            return
        found = self._read()
        found[key] = value
        with contextlib.suppress(OSError):  # an unwritable folder costs the memory, not the run
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            atomic_write(self.path, json.dumps(found, indent=1, sort_keys=True).encode("utf-8"))


def _seconds(functions: dict[str, Callable[[], Any]], first_at_least: float = 0.0) -> dict[str, float] | None:
    """The best of REPEATS timed calls of each function, after one untimed, taken in turns (every
    round calls each once), so that another program's load hits them alike; None as soon as the
    first's untimed call took under `first_at_least` seconds."""
    for index, function in enumerate(functions.values()):
        started = time.perf_counter()
        function()
        if index == 0 and time.perf_counter() - started < first_at_least:
            return None
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(REPEATS):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


@dataclass(frozen=True)
class Setup:
    """How a run trains on this CPU: its precision, and for a recurrent model which code runs its
    layers: charlm's kernels (True), torch's own module (False, oneDNN's where torch uses it), or
    the kernels' own rule (None: what a model too small to measure keeps)."""

    precision: str = "fp32"
    fast_path: bool | None = None

    def shown(self) -> str:
        path = {True: "charlm's kernels", False: "torch's module", None: "the kernels' rule"}[self.fast_path]
        return self.precision + ("" if self.precision == "bf16" else f", {path}")


def choose_cpu_setup(
    step_loss: Callable[[bool, bool], torch.Tensor], model: torch.nn.Module, key_parts: dict[str, Any],
    decisions: Decisions, precision: str = "auto", follow: bool = False,
) -> tuple[Setup, str | None]:
    """(the `Setup` to train in, a line saying why, or None where nothing was worth measuring) on
    this CPU, for `precision` "auto" (bf16 where it measures faster and keeps the loss), "fp32" or
    "bf16" (then only the recurrent path is chosen). With `follow` (the run's threads follow the
    cores free) a measurement that other programs' work made on more threads than cores free sets
    the threads to those and is taken again. `step_loss(bf16, backward)` runs the forward
    pass on one batch (under bf16 autocast when asked), the backward pass too when asked, and
    returns the loss. A model offers a choice of recurrent path with `fast_path_choices()`, and
    takes the one chosen as its `fast_path`; bf16 autocast runs torch's module."""
    paths = tuple(model.fast_path_choices())
    bf16 = precision == "bf16" or (precision == "auto" and bf16_capable())
    if precision == "bf16" or not (paths or bf16):
        return Setup("bf16" if bf16 else "fp32"), None
    def decision_key() -> str:  # what a decision is kept for, at the threads torch has now
        return json.dumps({"cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                           **key_parts}, sort_keys=True)

    key = decision_key()
    kept = decisions.get(key)
    if isinstance(kept, dict) and isinstance(kept.get("seconds"), dict) and kept.get("precision") in ("bf16", "fp32") \
            and kept.get("fast_path") in (True, False, None) and (not bf16 or "bf16" in kept["seconds"]):
        setup = _decide(kept["seconds"], kept.get("loss_holds") is True, precision)
        if not _contradicted(kept["seconds"], setup, step_loss, model):
            return setup, f"{setup.shown()}: as measured before on this CPU ({kept.get('why', '')})"
    watch = CpuWatch()
    measured = _measure(step_loss, model, paths, bf16)
    busy = watch.others()
    if follow and measured is not None and busy is not None and (free := threads_for(busy)) < torch.get_num_threads():
        # threads that waited for each other on a busy core: measured again on the cores free, as the run goes on
        torch.set_num_threads(free)
        key = decision_key()
        watch.start()
        measured = _measure(step_loss, model, paths, bf16)
        busy = watch.others()
    if measured is None:
        return Setup(), None
    seconds, losses = measured
    loss_holds = "bf16" not in losses or abs(losses["bf16"] - losses["fp32"]) <= LOSS_TOLERANCE * abs(losses["fp32"])
    setup = _decide(seconds, loss_holds, precision)
    why = "a step measured " + ", ".join(f"{seconds[name] * 1e3:.0f} ms in {name}" for name in seconds) + \
        f" on {cpu_name()}" + (f"; bf16's loss {losses['bf16']:.4f} vs {losses['fp32']:.4f}" if "bf16" in losses else "") + \
        ("" if loss_holds else ", too far apart")
    auto = _decide(seconds, loss_holds, "auto")
    fp32 = _decide(seconds, loss_holds, "fp32")
    if busy is not None and busy >= QUIET:  # a measurement beside other work is this run's, not the machine's
        decisions.measured = True
        return setup, f"{setup.shown()}: {why}; measured beside other work ({busy:.1f} cores busy), so not kept"
    decisions.put(key, {"precision": auto.precision, "fast_path": fp32.fast_path, "seconds": seconds,
                        "loss_holds": loss_holds, "why": why})
    return setup, f"{setup.shown()}: {why}"


def _contradicted(seconds: dict[str, float], setup: Setup, step_loss: Callable[[bool, bool], torch.Tensor],
                  model: torch.nn.Module) -> bool:
    """Whether a kept decision is contradicted by this run: a step of the way it chose, timed now
    (the best of two, the random state and gradients left as they were), runs in under
    CONTRADICTED of the time it was measured at, so that measurement was slowed by something
    else (another program) and is to be taken again."""
    name = "bf16" if setup.precision == "bf16" else {True: "fp32 kernels", False: "fp32 torch"}.get(setup.fast_path,
                                                                                                     "fp32")
    recorded = seconds.get(name)
    if not isinstance(recorded, (int, float)) or recorded <= 0:
        return True
    with probing(model):
        if setup.fast_path is not None:
            model.fast_path = setup.fast_path
        now = min(_timed(lambda: step_loss(setup.precision == "bf16", True)) for _ in range(2))
    return now < CONTRADICTED * recorded


@contextlib.contextmanager
def probing(model: torch.nn.Module) -> Iterator[None]:
    """Steps of `model` that leave the run as it was: the random state forked, and the model's
    mode, recurrent path (`fast_path`, where it was changed) and gradients put back after."""
    was_training, was_path = model.training, getattr(model, "fast_path", None)
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            model.train(was_training)
            if getattr(model, "fast_path", None) != was_path:
                model.fast_path = was_path
            model.zero_grad(set_to_none=True)


def batch_step_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...], bf16: bool,
                    backward: bool) -> torch.Tensor:
    """A training step's loss of `model` on `batch` from a zero state (under bf16 autocast when
    asked), its backward pass too when asked: what a measurement times."""
    from charlm.runtime.device import autocast

    with autocast(batch[0].device, "bf16" if bf16 else "fp32"):
        loss_sum, count, _ = model.batch_loss(batch, None)
        loss = loss_sum / count
    if backward:
        loss.backward()
    return loss.detach()


def _timed(function: Callable[[], Any]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def choose_training_setup(
    model: torch.nn.Module, batch: tuple[torch.Tensor, ...], model_config: Any, decisions: Decisions,
    precision: str, world: Any, follow: bool = False,
) -> tuple[str, bool | None, str | None]:
    """(the precision to train in, the recurrent path a model takes as its `fast_path`, a line
    saying why or None) for a run whose model is `model` (its config `model_config`), measured on
    one `batch` through `choose_cpu_setup` and kept in `decisions`: `--precision auto` takes bf16
    autocast where it is faster and keeps the loss. Every process of `world` takes one setup."""
    key = {"model": model_config, "batch": [list(part.shape) for part in batch]}
    setup, why = choose_cpu_setup(functools.partial(batch_step_loss, model, batch), model, key, decisions, precision,
                                  follow)
    agreed = lambda value: world.any(value, batch[0].device)  # noqa: E731
    fast_path = True if agreed(setup.fast_path is True) else False if agreed(setup.fast_path is False) else None
    return "bf16" if agreed(setup.precision == "bf16") else "fp32", fast_path, why


def _measure(
    step_loss: Callable[[bool, bool], torch.Tensor], model: torch.nn.Module, paths: tuple[bool, ...], bf16: bool,
) -> tuple[dict[str, float], dict[str, float]] | None:
    """The best time of a training step in each way this model can take ("fp32 kernels", "fp32
    torch", "bf16"; "fp32" alone where it has no choice of path), and the eval-mode loss of fp32
    and bf16 on the batch; None when fp32 takes under MIN_STEP_SECONDS."""
    names = {True: "fp32 kernels", False: "fp32 torch"}

    def step(path: bool | None, bf16: bool) -> torch.Tensor:
        if paths:
            model.fast_path = path
        return step_loss(bf16, True)

    with probing(model):
        was_path = getattr(model, "fast_path", None)
        ways = {names.get(path, "fp32"): functools.partial(step, path, False) for path in paths or (None,)}
        if bf16:
            ways["bf16"] = functools.partial(step, was_path, True)
        seconds = _seconds(ways, MIN_STEP_SECONDS)
        if seconds is None or min(value for name, value in seconds.items() if name != "bf16") < MIN_STEP_SECONDS:
            return None
        if paths:
            model.fast_path = was_path
        losses = {}
        if bf16:
            model.eval()
            with torch.no_grad():
                losses = {"fp32": float(step_loss(False, False)), "bf16": float(step_loss(True, False))}
    return seconds, losses


def _decide(seconds: dict[str, float], loss_holds: bool, precision: str) -> Setup:
    """The fastest way to train in `precision` ("auto": bf16 only if it keeps the loss and is
    SPEEDUP times faster than fp32's fastest), from the measured `seconds`."""
    fp32 = {name: value for name, value in seconds.items() if name.startswith("fp32")}
    fastest = min(fp32, key=fp32.get)
    fast_path = {"fp32 kernels": True, "fp32 torch": False}.get(fastest)
    if precision == "bf16" or (precision == "auto" and "bf16" in seconds and loss_holds
                               and fp32[fastest] / seconds["bf16"] >= SPEEDUP):
        return Setup("bf16")
    return Setup("fp32", fast_path)


def device_name(device: torch.device) -> str:
    """What a decision is kept for: the CPU's model name, or the GPU's."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def choose_generation_precision(
    model: torch.nn.Module, rows: int | tuple[int, ...], decisions: Decisions, precision: str = "auto",
) -> tuple[str, str | None]:
    """(the precision for the products of `model.stepper`'s generation steps, a line saying why,
    or None where nothing was measured) for batches of `rows` rows (several: bf16 only where it
    is faster at each). "fp32" and "bf16" are kept as told; "auto" takes bf16 on a device with
    bf16 matrix units when a step measures at least SPEEDUP times faster in it and its next-token
    distributions hold, else fp32. A step of under MIN_GENERATION_WORK multiply-adds is not measured."""
    if precision != "auto":
        return precision, None
    counts = (rows,) if isinstance(rows, int) else tuple(rows)
    device = next(model.parameters()).device
    capable = torch.cuda.is_bf16_supported() if device.type == "cuda" else device.type == "cpu" and bf16_capable()
    weights = sum(parameter.numel() for parameter in model.parameters() if parameter.dim() >= 2)
    if not capable or "bf16" not in model.stepper_precisions() or max(counts) * weights < MIN_GENERATION_WORK:
        return "fp32", None
    config = model.config
    key = json.dumps({"task": "generate", "device": device_name(device), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "rows": counts,
                      "model": asdict(config) if is_dataclass(config) else repr(config)}, sort_keys=True, default=str)
    kept = decisions.get(key)
    if isinstance(kept, dict) and kept.get("precision") in ("bf16", "fp32") and isinstance(kept.get("why"), str):
        return kept["precision"], f"as measured before on this {device.type.upper()} ({kept['why']})"
    parts, chosen, watch = [], "bf16", CpuWatch()
    with torch.inference_mode():
        for count in counts:
            seconds, divergence = _probe(model, count, device)
            holds = divergence <= KL_TOLERANCE
            if not (holds and seconds["fp32"] / seconds["bf16"] >= SPEEDUP):
                chosen = "fp32"
            parts.append(f"a step of {count} row{'s' if count > 1 else ''} measured {seconds['fp32'] * 1e6:.0f} µs "
                         f"in fp32, {seconds['bf16'] * 1e6:.0f} µs in bf16, next-token KL {divergence:.2g} nats"
                         + ("" if holds else " (too far apart)"))
    why = "; ".join(parts) + f" on {device_name(device)}"
    busy = watch.others()
    if busy is not None and busy >= QUIET:  # beside other work: this run's choice, not the machine's
        decisions.measured = True
        return chosen, f"{why}; measured beside other work ({busy:.1f} cores busy), so not kept"
    decisions.put(key, {"precision": chosen, "why": why})
    return chosen, why


def _probe(model: torch.nn.Module, rows: int, device: torch.device) -> tuple[dict[str, float], float]:
    """({precision: the median time of a generation step}, the mean KL divergence in nats of bf16's
    next-token distributions from fp32's) over PROBE_STEPS greedy steps of fp32 from a zero state and
    random first ids, bf16 fed the same ids; each precision run twice, in turns, its faster run kept.
    It draws no random numbers but from its own generator."""
    steppers = {name: model.stepper((), name) for name in ("fp32", "bf16")}
    first = torch.randint(model.config.vocab_size, (rows,), generator=torch.Generator().manual_seed(0))
    fed: list[torch.Tensor] = [first.to(device)]
    seconds = {name: float("inf") for name in steppers}
    log_probs: dict[str, list[torch.Tensor]] = {}
    for _ in range(2):
        for name, step in steppers.items():
            times, outputs, state = [], [], None
            for position in range(PROBE_STEPS):
                started = time.perf_counter()
                logits, state = step(fed[position], state)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - started)
                outputs.append(torch.log_softmax(logits.float(), dim=-1).clamp_(min=-1e4))  # a banned -inf: finite
                if len(fed) < PROBE_STEPS:
                    fed.append(logits.argmax(dim=-1))
            timed = sorted(times[2:])
            seconds[name] = min(seconds[name], timed[len(timed) // 2])
            log_probs[name] = outputs
    fp32, bf16 = torch.stack(log_probs["fp32"]), torch.stack(log_probs["bf16"])  # (steps, rows, V)
    divergence = float((fp32.exp() * (fp32 - bf16)).sum(dim=-1).mean())
    return seconds, divergence
