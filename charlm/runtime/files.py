"""Files written whole or not at all: the one place that writes a file atomically (a temporary beside
it, then a rename), cleans up the temporaries a killed process left, and locks an output path
against a second writer. Standard library only; it knows nothing about what the files hold.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator

from charlm.errors import CharlmError

TEMPORARY_STEM_CHARS = 64  # of a file's name, in the name of its temporaries


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
