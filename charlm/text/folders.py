"""The files a folder gives a corpus, by name, in the order of their sorted paths inside it; nothing
is read but the first line of a file named like a run's metrics.

Left out unsaid: hidden files and folders (a name starting with "."), files and folders an
`exclude` glob matches, files no `include` glob matches (a glob is matched against the path inside
the folder and against the name), and charlm's own files, whoever put them there (`own_file`: the
checkpoints, resume states, metrics and locks of a run whose `--out` is inside the folder, token
cache entries and their `tuning.json`), which are never corpus text. Named in `skipped`, not followed: a link to a folder,
and a link to a file outside the folder (what the folder's owner linked in is not what they
gave: name the file itself to read it). A link to a file inside the folder is read.

The walk keeps its own stack, so a folder nested thousands deep is walked like any other. Names
are shown and recorded as `printable` writes them. Standard library only.
"""

from __future__ import annotations

import fnmatch
import json
import os
import stat
from collections.abc import Iterator

METRICS_PROBE_BYTES = 1 << 16  # a run's metrics file is recognised by its first line
METRICS_SUFFIX = ".metrics.jsonl"  # as `charlm.training.run_files` names a run's files
CHECKPOINT_SUFFIX = ".safetensors"  # a run's checkpoint and resume state, a token cache entry: never text
LOCK_SUFFIX = ".lock"  # a run's lock: always empty
TUNING_FILE = "tuning.json"  # the choices measured on this machine, kept in a token cache's folder


def printable(path: str | os.PathLike) -> str:
    """A path as text that any terminal encoding can show and JSON can hold: its bytes read as
    UTF-8 whatever the locale (so `é.txt` is "é.txt" under LANG=C too), a byte that is not UTF-8
    written as a backslash escape ("\\xff")."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def walk(root: str, include: tuple[str, ...], exclude: tuple[str, ...],
         skipped: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """(path, name) of the files under `root` the folder gives a corpus (see the module docstring);
    what is named, not followed, goes to `skipped` as (name, why)."""
    shown_root = printable(os.path.normpath(root))
    real_root = os.path.realpath(root)
    chosen, folders = [], [""]  # paths inside `root`, "/"-separated; folders still to read
    while folders:
        inside = folders.pop()
        try:
            with os.scandir(os.path.join(root, *inside.split("/")) if inside else root) as scan:
                entries = list(scan)
        except OSError as error:
            skipped.append((_name(shown_root, inside.rstrip("/") or "."),
                            f"a folder that cannot be read ({error.strerror or error})"))
            continue
        for entry in entries:
            relative = inside + entry.name
            if entry.name.startswith(".") or _matches(relative, entry.name, exclude):
                continue
            if _is_folder(entry):
                if entry.is_symlink():
                    skipped.append((_name(shown_root, relative), "a link to a folder, not followed"))
                else:
                    folders.append(relative + "/")
            elif include and not _matches(relative, entry.name, include):
                continue
            elif entry.is_symlink() and not _inside(os.path.realpath(entry.path), real_root):
                skipped.append((_name(shown_root, relative), f"a link to a file outside {shown_root}, not "
                                "followed; name that file to read it"))
            elif not own_file(entry.path):
                chosen.append(relative)
    for relative in sorted(chosen):
        yield os.path.join(root, *relative.split("/")), _name(shown_root, relative)


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link loop, a name too long: reading it as a file says what is wrong
        return False


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _matches(relative: str, name: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(relative, glob) or fnmatch.fnmatchcase(name, glob) for glob in globs)


def _name(root: str, relative: str) -> str:
    relative = printable(relative)
    return relative if root == "." else f"{root}/{relative}"


def own_file(path: str | os.PathLike) -> bool:
    """Whether a file in a folder is one charlm wrote, so never corpus text: a checkpoint, resume
    state or token cache entry (`.safetensors`), a run's metrics file, its lock (empty), or the
    `tuning.json` of a `--cache-dir` inside the folder."""
    name = os.path.basename(os.fspath(path))
    if name.endswith(CHECKPOINT_SUFFIX) or name == TUNING_FILE:
        return True
    if name.endswith(METRICS_SUFFIX):
        return is_metrics_file(path)
    if name.endswith(LOCK_SUFFIX):
        try:
            return os.stat(path).st_size == 0
        except OSError:
            return False
    return False


def is_metrics_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a run's metrics file: a regular file, empty or starting with a metrics
    record (a FIFO or device is never opened)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as file:
            head = file.read(METRICS_PROBE_BYTES)
    except OSError:
        return False
    if not head:
        return True
    line = head.split(b"\n", 1)[0]
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return b"\n" not in head and head.startswith(b'{"step": ')  # one line, cut short by a kill
    return isinstance(record, dict) and isinstance(record.get("step"), int) and "val_loss" in record
