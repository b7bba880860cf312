"""The files of a training run: their names, the lock that keeps one trainer per run, and which
existing files a run may replace.

A run whose checkpoint is `runs/x.safetensors` (`--out runs/x` names it too: the suffix is added) owns

    runs/x.safetensors          the model (the best by validation loss, or the last)
    runs/x.resume.safetensors   the latest full training state
    runs/x.metrics.jsonl        one JSON object per evaluation
    runs/x.lock                 held (flock) while a trainer writes the run; always empty

and their temporaries. Nothing else is ever written or removed: a file at one of these names that is
not a charlm file of that kind, or that is an input of the command (the corpus), is refused, with or
without --overwrite. The lock is keyed on the run (its folder's real path and its stem), not on the
spelling of --out, so `--out runs/x` and `--out ./runs/x.safetensors` are the same run.

Standard library only at import (plot names metrics files without torch); `charlm.runtime.files` (locks,
temporaries) and `charlm.checkpoints.files` (headers) are imported when a run's files are checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator

from charlm.errors import CharlmError, CheckpointError
from charlm.text.folders import CHECKPOINT_SUFFIX as SUFFIX, METRICS_SUFFIX, is_metrics_file

ROLES = ("model", "resume", "metrics", "lock")
CHECKPOINT_KINDS = {"model": "model", "resume": "resume"}
DRAWN = ("train_loss", "val_loss", "val_ppl")  # a record's values drawn against "tokens": numbers, or null


def run_paths(out: str | os.PathLike) -> dict[str, str]:
    """The files of a run, all beside its checkpoint (see the module docstring): `runs/x` and
    `runs/x.safetensors` name the same run, whose checkpoint is `runs/x.safetensors`."""
    out = os.fspath(out)
    stem = out[: -len(SUFFIX)] if out.endswith(SUFFIX) else out
    return {"model": f"{stem}{SUFFIX}", "resume": f"{stem}.resume{SUFFIX}", "metrics": f"{stem}{METRICS_SUFFIX}",
            "lock": f"{stem}.lock"}


def metrics_of(path: str | os.PathLike) -> str:
    """The metrics file of the run that `path`, its checkpoint or its resume file, belongs to."""
    path = os.fspath(path)
    resume = f".resume{SUFFIX}"
    return run_paths(path[: -len(resume)] if path.endswith(resume) else path)["metrics"]


def run_key(out: str | os.PathLike) -> str:
    """The run `out` names, whatever its spelling: the real path of its lock file."""
    lock = run_paths(out)["lock"]
    folder, name = os.path.split(os.path.abspath(lock))
    return os.path.join(os.path.realpath(folder), name)


@contextlib.contextmanager
def locked_run(out: str | os.PathLike) -> Iterator[None]:
    """Hold the run's lock for the block (see `runtime.exclusive_lock`), keyed on the run itself.
    A non-empty file where the lock goes is someone else's: refused, never truncated or removed."""
    from charlm.runtime.files import exclusive_lock

    key = run_key(out)
    if os.path.lexists(key) and (not os.path.isfile(key) or os.path.getsize(key) > 0):
        raise CharlmError(f"{run_paths(out)['lock']} exists and is not a charlm lock file; charlm will not "
                          "replace it: move it, or choose another --out")
    with exclusive_lock(key, what=os.fspath(out)):
        yield


def check_creatable(out: str | os.PathLike) -> None:
    """Fail now, before any training, if a file of the run or one of its temporaries cannot be
    created: a name longer than the file system allows, or a folder that cannot be written."""
    from charlm.runtime.files import temporary_names

    paths = run_paths(out)
    stem = os.path.basename(paths["lock"])[: -len(".lock")]
    if not stem or stem in (".", "..") or os.fspath(out).endswith(os.sep):
        raise CharlmError(f"--out {os.fspath(out)!r} names no file; give a checkpoint path such as runs/my.safetensors")
    if os.path.isdir(out):  # not a run beside it: `--out runs` meant runs/, not runs.safetensors
        raise CharlmError(f"--out {os.fspath(out)} is a directory; give a checkpoint path such as "
                          f"{os.path.join(os.fspath(out), 'my.safetensors')}")
    folder = os.path.dirname(os.path.abspath(paths["model"]))
    # Nothing is created here: the folders are made by the first save. The nearest folder that
    # exists must be one, and take new entries; the file system's limits are read from it.
    existing = next(parent for parent in _ancestors(folder) if os.path.lexists(parent))
    if not os.path.isdir(existing):
        raise CharlmError(f"cannot create the folder of --out {paths['model']} ({existing} is not a folder); "
                          "choose another --out")
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".charlm-probe."))
    except OSError as error:
        raise CharlmError(f"cannot write in {existing} ({error.strerror or error}); choose another --out") from None
    missing = os.path.relpath(folder, existing).split(os.sep) if folder != existing else []
    for part in missing:  # folders the first save will make
        if len(os.fsencode(part)) > name_max:
            raise CharlmError(f"--out {paths['model']} is too long: the folder name {part[:40]}... is more than the "
                              f"{name_max} bytes this file system allows; choose a shorter --out")
    for role in ROLES:
        names = [os.path.basename(paths[role])]
        if role in CHECKPOINT_KINDS:
            names += temporary_names(paths[role])
        for name in names:
            size = len(os.fsencode(name))
            if size > name_max:
                raise CharlmError(f"--out {paths['model']} is too long: the run's file name {name[:40]}... would be "
                                  f"{size} bytes, more than the {name_max} this file system allows; choose a shorter --out")
        if len(os.fsencode(os.path.abspath(paths[role]))) + 32 > path_max:
            raise CharlmError(f"--out {paths['model']} is too long a path for this file system ({path_max} bytes); "
                              "choose a shorter --out")


def _ancestors(folder: str) -> Iterator[str]:
    """`folder`, its parent, and so on up to the root."""
    while True:
        yield folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return
        folder = parent


def check_replaceable(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], resume: bool,
                      overwrite: bool) -> None:
    """Refuse to start a run that would write over something it must not: an input of the command;
    a file at a run file's name that is not a charlm file of that kind; or, without `resume` or
    `overwrite`, a finished run."""
    paths = run_paths(out)
    present = {role: path for role, path in paths.items() if os.path.lexists(path)}
    for role, path in present.items():
        for source in inputs:
            if _same_file(path, source):
                raise CharlmError(f"--out {paths['model']} would write over the input {os.fspath(source)} "
                                  f"(as the run's {role} file); choose another --out")
    for role, path in present.items():
        if role == "lock" or (role == "resume" and resume):
            continue  # checked by `locked_run`; a resume state is checked whole when it is loaded
        if not _is_run_file(path, role):
            what = "a charlm metrics file" if role == "metrics" else f"a charlm {CHECKPOINT_KINDS[role]} checkpoint"
            found = f"{path} exists and is not {what}"
            if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
                found = f"{path}: not a regular file (a FIFO, socket or device)"  # never opened: a FIFO would wait
            raise CharlmError(f"{found}; charlm will not replace it: move it, or choose another --out")
    existing = [path for role, path in present.items() if role in CHECKPOINT_KINDS]
    if existing and not (resume or overwrite):
        raise CharlmError(f"{existing[0]} already holds a run; pass --resume to continue it, --overwrite to "
                          "replace it, or --out to train elsewhere")


def remove_finished(out: str | os.PathLike) -> None:
    """Remove the finished run at `out` that a new one replaces (`check_replaceable` found its files
    the run's own): its checkpoint, resume state and metrics go together, before the new run writes
    any, so no file of one run is ever left beside those of another."""
    for role in ("model", "resume", "metrics"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(run_paths(out)[role])


def _same_file(path: str, other: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(path, other)
    except OSError:
        return False


def _is_run_file(path: str, role: str) -> bool:
    """Whether `path` is a charlm file of `role`: a checkpoint of that kind, or a metrics file
    (empty, or starting with a metrics record)."""
    if not os.path.isfile(path):
        return False
    if role in CHECKPOINT_KINDS:
        from charlm.checkpoints import files as checkpoint
        from charlm.checkpoints.metadata import read

        try:
            return read(checkpoint.read_metadata(path)).file_kind == CHECKPOINT_KINDS[role]
        except (CheckpointError, OSError):
            return False
    return is_metrics_file(path)


class MetricsFile:
    """A run's `X.metrics.jsonl`: one JSON object per evaluation, appended as the run goes. `read`
    is the one reader of it (the plot, the server's loss curves and `charlm.Run.metrics` use it)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)

    def read(self, notes: list[str] | None = None) -> list[dict]:
        """The evaluations recorded, in order; none for a missing file. A last line cut short (what a
        kill in the middle of a write leaves, and `--resume` drops) is skipped, with a note added to
        `notes`; any other line that is not a metrics record is a `CharlmError` naming the line."""
        if not os.path.exists(self.path):
            return []
        if not os.path.isfile(self.path):  # a FIFO would block the read forever
            raise CharlmError(f"{self.path}: not a regular file, so not a run's metrics")
        records = []
        with open(self.path, "rb") as file:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                record, problem = _metrics_record(line)
                if problem and not line.endswith(b"\n"):  # only the last line can lack its newline
                    if notes is not None:
                        notes.append(f"{self.path}: skipped line {number}, cut short (by a kill while it was written)")
                    continue
                if problem:
                    raise CharlmError(f"{self.path}: line {number} is not a charlm metrics record ({problem}); fix "
                                      "or delete that line")
                records.append(record)
        return records

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")

    def truncate(self, step: int, stop_evaluated: bool) -> None:
        """Keep the records a run resumed at `step` has made: drop those from after it (a run killed
        before its next save), a stop's evaluation at it, and any line cut short by a kill."""
        from charlm.runtime.files import atomic_write

        if not os.path.exists(self.path):
            return
        if not os.path.isfile(self.path):  # a FIFO would block the read below forever
            raise CharlmError(f"{self.path}: not a regular file, so not this run's metrics; move it away and resume")
        kept = []
        with open(self.path, encoding="utf-8", errors="replace") as file:
            for line in file:
                try:
                    at = json.loads(line)["step"]
                    if at < step or (at == step and not stop_evaluated):
                        kept.append(line.rstrip("\n") + "\n")
                except (KeyError, TypeError, ValueError):
                    continue
        atomic_write(self.path, "".join(kept).encode("utf-8"))


def _metrics_record(line: bytes) -> tuple[dict, str | None]:
    """(the record on a metrics line, None), or ({}, what is wrong with the line). Every value that
    is drawn must be a number a float holds (the loss ones may be null): a string would be drawn as
    a category, and JSON's ints have no bound."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return {}, "not UTF-8"
    except (ValueError, RecursionError):
        return {}, "not JSON"
    if not isinstance(record, dict):
        return {}, "not a JSON object"
    for key in ("tokens", *DRAWN):
        value = record.get(key)
        number = isinstance(value, float) or (type(value) is int and -1e308 < value < 1e308)
        if not (number or (value is None and key != "tokens")):
            return {}, f"{key} is {'missing' if key not in record else 'not a number'}"
    return record, None
