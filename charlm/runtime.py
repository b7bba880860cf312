"""Runtime: the one place that picks a device, sets torch's CPU threads, seeds the random
generators, writes a file atomically and locks an output path. Everything that does one of these
calls in here.

It knows nothing about models, data or checkpoints' contents.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import tempfile
from collections.abc import Iterator

import torch

from charlm.errors import CharlmError

DEVICES = ("auto", "cpu", "cuda", "mps")


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


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op CPU threads set to `count` (None: as they are), then
    restore them. Small models, such as the pair models, run faster on one thread: on a small or
    shared machine several threads mostly wait for each other around tiny matrix products."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (all devices)."""
    random.seed(seed)
    torch.manual_seed(seed)


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


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that a crash at any moment leaves either the old file or the new
    one there, never a part: write a temporary file beside it, flush it to disk, rename it over."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock` for the block, or fail at once with a clear message
    if another process holds it. The OS drops the lock when the process dies, even by kill -9."""
    lock_path = f"{os.fspath(path)}.lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    while True:
        lock_file = open(lock_path, "a+")
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise CharlmError(
                f"another charlm process is training to {os.fspath(path)}; wait for it, or choose another --out"
            ) from None
        try:  # the holder before us may have unlinked the file we opened: then lock the new one
            if os.stat(lock_path).st_ino == os.fstat(lock_file.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        lock_file.close()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        lock_file.close()  # closing releases the lock
