"""Runtime: the one place that picks a device, sets torch's CPU threads, seeds the random
generators, picks the precision (autocast), writes a file atomically, locks an output path, turns
stop signals into a flag and knows which of several processes this one is (`World`, under
torchrun). Everything that does one of these calls in here.

It knows nothing about models, data or checkpoints' contents.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import glob
import os
import random
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from charlm.errors import CharlmError
from charlm.presets import DEVICES

TEMPORARY_STEM_CHARS = 64  # of a file's name, in the name of its temporaries


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


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that a crash at any moment leaves either the old file or the new
    one there, never a part."""
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        file.write(data)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside `path` for the block to write a file at (e.g. from a library that
    streams to a file name); when the block ends the file is flushed to disk, given the mode the
    umask gives a new file, and renamed over `path`, so a crash at any moment leaves either the old
    file or the new one, never a part.

    The temporary lies in a private folder `.<name>.<pid>.<random>.tmp/` beside `path` (hidden,
    not named like the file), so that whatever a library writes there of its own (safetensors
    streams to a `.tmpXXXXXX` of its own and renames it) goes with it. The next write to the same
    folder removes the folders that a killed writer (a process no longer there) left."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    private = tempfile.mkdtemp(dir=folder, prefix=f".{_temporary_stem(name)}.{os.getpid()}.", suffix=".tmp")
    temporary = os.path.join(private, name)
    try:
        yield temporary
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
            os.fchmod(file.fileno(), 0o666 & ~current_umask())
        os.replace(temporary, path)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    with contextlib.suppress(OSError):  # make the rename itself durable
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    remove_stale_temporaries(path)


def _temporary_stem(name: str) -> str:
    """The part of a file's name that its temporaries carry: bounded, so that a name near the file
    system's limit still has room for a temporary beside it."""
    return name[:TEMPORARY_STEM_CHARS]


def temporary_names(path: str | os.PathLike) -> list[str]:
    """The longest names `atomic_path(path)` creates beside `path` and inside its private folder,
    for checking up front that they fit the file system."""
    name = os.path.basename(os.path.abspath(os.fspath(path)))
    return [f".{_temporary_stem(name)}.{'9' * 10}.{'x' * 8}.tmp", name, ".tmpXXXXXX"]


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Remove the temporaries of `path` that writers no longer running left (killed mid-write)."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    stem = _temporary_stem(name)
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(stem)}.*.tmp")):
        pid = os.path.basename(stale)[len(stem) + 2 :].split(".")[0]
        if pid.isdigit() and not _process_exists(int(pid)):
            if os.path.isdir(stale) and not os.path.islink(stale):
                shutil.rmtree(stale, ignore_errors=True)
            else:  # a temporary file of an older charlm
                with contextlib.suppress(OSError):
                    os.unlink(stale)


def current_umask() -> int:
    """The process's umask (read by setting it, then setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process is there
    except ProcessLookupError:
        return False
    except PermissionError:  # there, but someone else's
        return True
    return True


@contextlib.contextmanager
def exclusive_lock(lock_path: str | os.PathLike, what: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the file `lock_path` for the block, or fail at once with a clear
    message (naming `what` is locked) if another process holds it. The OS drops the lock when the
    process dies, even by kill -9. The file is removed when the block ends."""
    lock_path = os.fspath(lock_path)
    what = what or lock_path
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    while True:
        lock_file = open(lock_path, "a+")
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise CharlmError(
                f"another charlm process is training to {what}; wait for it, or choose another --out"
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


class StopSignals:
    """Within the block, SIGINT and SIGTERM only ask to stop: `received` is the first one's number,
    for a loop to finish its step and save; a second one stops at once (KeyboardInterrupt). Outside
    the main thread no handler can be set, and signals act as they always do."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, number: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = number

    def __enter__(self) -> StopSignals:
        try:
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handler)
        except ValueError:  # not the main thread
            pass
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for number, old in self._previous.items():
            signal.signal(number, old)
        self._previous.clear()


# ---------------------------------------------------------------------------------------------
# Several processes: torchrun


@dataclass(frozen=True)
class World:
    """The processes that train one model together, and this one's place among them. torchrun
    starts one per device and names it in RANK, LOCAL_RANK (its index on its machine) and
    WORLD_SIZE; a process started on its own is a world of one, where every collective below is a
    no-op, so callers never branch on it."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0

    def device(self, name: str = "auto") -> torch.device:
        """`pick_device(name)`, and with several processes on CUDA, this process's own GPU."""
        device = pick_device(name)
        if self.size > 1 and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        if self.size > 1 and device.type == "mps":
            raise CharlmError("training over several processes needs CUDA or the CPU; use --device cuda or cpu")
        return device

    def rows(self, batch_size: int) -> slice:
        """This process's share of a batch of `batch_size` rows: [rank*B/N, (rank+1)*B/N)."""
        if batch_size % self.size:
            raise CharlmError(
                f"--batch-size {batch_size} does not split evenly over {self.size} processes; "
                f"use a multiple of {self.size} (it is the batch size of all processes together)"
            )
        share = batch_size // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over the processes (gloo has no averaging all-reduce: sum, divide)."""
        if self.size == 1:
            return tensor
        tensor = tensor.detach().clone()
        dist.all_reduce(tensor)
        return tensor / self.size

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process if `flag` is true on any."""
        if self.size == 1:
            return flag
        value = torch.tensor(float(flag), device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value)

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value` (picklable), in rank order, on every process."""
        if self.size == 1:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (filling a cache, say) while the others wait, then the others."""
        if not self.is_main:
            dist.barrier()
        yield
        if self.is_main and self.size > 1:
            dist.barrier()


@contextlib.contextmanager
def distributed(device: str = "auto") -> Iterator[World]:
    """The `World` of this process, read from torchrun's environment. With more than one process
    the process group is set up for the block (NCCL on CUDA, gloo on the CPU) and torn down after;
    rendezvous (single or multi-node) is torchrun's job, through MASTER_ADDR / MASTER_PORT."""
    world = World(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                  int(os.environ.get("WORLD_SIZE", 1)))
    if world.size == 1:
        yield world
        return
    where = world.device(device)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    # An hour, not NCCL's 10 minutes: the others wait while rank 0 tokenizes a big corpus.
    dist.init_process_group("nccl" if where.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=1))
    try:
        yield world
    finally:
        dist.destroy_process_group()
