"""Device: the one place that picks a device, sets torch's CPU threads, seeds the random generators
and picks the precision (autocast). Everything that does one of these calls in here.

Files written atomically are `charlm.runtime.files`', processes and signals
`charlm.runtime.processes`'. It knows nothing about models, data or checkpoints' contents.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import torch

from charlm.errors import CharlmError
from charlm.presets import DEVICES


def pick_device(name: str = "auto") -> torch.device:
    """"auto" picks cuda, then mps, then cpu; a named device that is not there is an error."""
    if name not in DEVICES:
        raise CharlmError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise CharlmError(f"--device {name} asked for, but this machine has none; use --device cpu or auto")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast where asked for (or, with "auto", on a CUDA device that supports it)."""
    wanted = precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    return torch.autocast(device.type, dtype=torch.bfloat16) if wanted else contextlib.nullcontext()


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op CPU threads set to `count` (None: as they are, or as a
    `charlm.runtime.cores.ThreadPilot` sets them), then restore them. Small models, such as the pair models, run faster on one thread: on a small or
    shared machine several threads mostly wait for each other around tiny matrix products."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python's and torch's generators (all devices). Any integer is a seed: torch takes it
    modulo 2**64, as it already does for negative ones. Process `rank` > 0 of a distributed run
    gets a stream of its own (so its dropout masks differ from rank 0's); rank 0 gets `seed`'s."""
    seed = seed if rank == 0 else (seed * 1_000_003 + rank) % 2**63
    random.seed(seed)
    torch.manual_seed(seed % 2**64)


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A private generator seeded with any integer (modulo 2**64), for draws that must not
    depend on, or disturb, the global random state."""
    return torch.Generator(device=device).manual_seed(seed % 2**64)


def rng_states() -> dict[str, torch.Tensor]:
    """torch's CPU (and CUDA) generator states as uint8 tensors, to store in a checkpoint."""
    states = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"rng.cuda.{index}"] = state
    return states


def set_rng_states(states: dict[str, torch.Tensor]) -> None:
    if "rng.cpu" in states:
        torch.set_rng_state(states["rng.cpu"])
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            if f"rng.cuda.{index}" in states:
                torch.cuda.set_rng_state(states[f"rng.cuda.{index}"], index)








# ---------------------------------------------------------------------------------------------
# Several processes: torchrun


