"""Checkpoints: one self-contained `.safetensors` file per run, and the only home of safetensors.

A checkpoint holds tensors and, in the safetensors metadata under the key "charlm", one JSON object
(`charlm.checkpoints.metadata` types it, writes it and reads it):

    {"format_version": 1, "task": "lm", "kind": "model" | "resume",
     "model": asdict(ModelConfig), "vocab": Vocab.to_dict(), "tokens": "char", "preprocess": "none",
     "training": {"steps": ..., "tokens": ..., "best_val_loss": ...}, ...}

A translation checkpoint has "task": "translate", "architecture": "seq2seq" | "tagger", the
matching config from `charlm.models.seq2seq` under "model", and "source_vocab" / "target_vocab" in
place of "vocab".

Model weights are stored as "model.<parameter name>". A "resume" checkpoint adds the optimizer
state, RNG states, iterator position and carried hidden state (see `charlm.training.trainer`).

Loading never unpickles: the header is checked by hand (sizes bounded by the file's size) before
the safetensors library reads the tensors, and a pickle or torch.save file is refused unread. The
model is rebuilt on the meta device first and its shapes checked against the file, so hostile
metadata cannot make the loader allocate more than the file itself holds.
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
from typing import Any

import safetensors
import safetensors.torch
import torch

from charlm.errors import CheckpointError
from charlm.runtime.files import atomic_path

FORMAT_VERSION = 1
METADATA_KEY = "charlm"
MAX_HEADER_BYTES = 64 << 20  # what save writes and load reads; safetensors' own limit is 100 MB
TENSOR_ENTRY_BYTES = 256  # room in a header for one tensor's name, dtype, shape and offsets
TASK_NAMES = {"lm": "language-model", "translate": "translation"}
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle")  # refused by name as well as by content


def save(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write tensors and metadata to `path` atomically (the old file stays until the new is whole).
    The tensors stream to the file: no copy of them is made in memory (a corpus's ids are big).
    A header larger than `load` reads is a `CheckpointError` before anything is written; a failed
    write (a full disk) is an `OSError`, as from any other write."""
    meta = {"format_version": FORMAT_VERSION, **meta}
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    text = json.dumps(meta, ensure_ascii=False)
    check_header_fits(meta, tensors, text)
    with atomic_path(path) as temporary:
        try:
            safetensors.torch.save_file(tensors, temporary, metadata={METADATA_KEY: text})
        except safetensors.SafetensorError as error:  # not an OSError, though it mostly is one
            number = re.search(r"os error (\d+)", str(error))
            if number:
                raise OSError(int(number.group(1)), os.strerror(int(number.group(1))), os.fspath(path)) from None
            raise CheckpointError(f"cannot write {os.fspath(path)}: {error}") from None


def header_size(meta: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None, text: str | None = None) -> int:
    """An upper bound of the size of the safetensors header that `save` writes for `meta` and
    `tensors` (the metadata is a JSON string inside the JSON header, so it is escaped twice)."""
    text = json.dumps(meta, ensure_ascii=False) if text is None else text
    entries = {name: {"dtype": "float32", "shape": list(tensor.shape), "data_offsets": [2**63, 2**63]}
               for name, tensor in (tensors or {}).items()}
    header = json.dumps({"__metadata__": {METADATA_KEY: text}, **entries}, ensure_ascii=False)
    return len(header.encode("utf-8")) + 8


def check_header_fits(meta: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None,
                      text: str | None = None, entries: int = 0) -> None:
    """Refuse metadata too large for a checkpoint that `load` can read back: what save writes,
    load reads. Without `tensors`, `entries` tensors of a typical entry's size are counted. The
    vocab is all that grows, so the message says how many tokens would fit."""
    margin = entries * TENSOR_ENTRY_BYTES
    size = header_size(meta, tensors, text) + margin
    if size <= MAX_HEADER_BYTES:
        return
    vocab_key = next((key for key in ("vocab", "target_vocab", "source_vocab")
                      if isinstance(meta.get(key), dict) and isinstance(meta[key].get("itos"), list)), None)
    hint = ""
    if vocab_key:
        tokens = len(meta[vocab_key]["itos"])
        base = header_size({**meta, vocab_key: {**meta[vocab_key], "itos": []}}, tensors) + margin
        fitting = int((MAX_HEADER_BYTES - base) / max((size - base) / max(tokens, 1), 1e-9) * 0.9)
        if fitting >= 2:
            hint = f"; the vocab of {tokens:,} tokens is most of it: use --max-vocab {fitting} or fewer"
    raise CheckpointError(f"a checkpoint of this run would need a {size / 2**20:.1f} MB header, more than the "
                          f"{MAX_HEADER_BYTES / 2**20:.1f} MB charlm reads back{hint}")


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The charlm metadata of a checkpoint as its JSON object, read from its header alone (no
    tensors loaded); `charlm.checkpoints.metadata.read` types it."""
    return _read_header(os.fspath(path))[1]


def load(
    path: str | os.PathLike, task: str | None = None, kind: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors on the CPU, metadata), after checking the file is a charlm checkpoint of `task`."""
    path = os.fspath(path)
    _, meta = _read_header(path)
    if task is not None and meta.get("task") != task:
        have = TASK_NAMES.get(meta["task"], repr(meta["task"])) if isinstance(meta.get("task"), str) \
            else repr(meta.get("task"))
        raise CheckpointError(
            f"{path} is a {have} checkpoint; this command needs a {TASK_NAMES.get(task, task)} checkpoint"
        )
    if kind is not None and meta.get("kind", "model") != kind:
        raise CheckpointError(f"{path} is a {meta.get('kind')} checkpoint, not a {kind} checkpoint")
    try:
        tensors = safetensors.torch.load_file(path, device="cpu")
    except Exception as error:  # the library's own checks: overlapping or missing data, bad dtypes
        raise CheckpointError(f"{path}: damaged safetensors file ({error}); retrain or restore it") from None
    return tensors, meta


def _read_header(path: str) -> tuple[dict, dict[str, Any]]:
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint; train one with `charlm train CORPUS`")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory; give a .safetensors checkpoint file")
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):  # opening a FIFO waits for a writer, forever; a device never ends
        raise CheckpointError(f"{path}: not a regular file (a FIFO, socket or device); "
                              "give a .safetensors checkpoint file")
    size = status.st_size
    with open(path, "rb") as file:
        start = file.read(9)  # the header's size (8 bytes, little-endian), then the header's "{"
        header_size = struct.unpack("<Q", start[:8])[0] if len(start) >= 8 else None
        fits = header_size is not None and header_size <= min(size - 8, MAX_HEADER_BYTES)
        if not (fits and start[8:] == b"{"):  # a header size can start with b"\x80" or b"PK" too
            if start[:2] == b"PK" or start[:1] == b"\x80" or path.endswith(PICKLE_SUFFIXES):
                raise CheckpointError(
                    f"{path}: a pickle / torch.save file, which charlm never loads (unpickling runs code); "
                    "use a charlm .safetensors checkpoint"
                )
            if header_size is None:
                raise CheckpointError(f"{path}: not a safetensors file (too short)")
            if not fits:
                raise CheckpointError(f"{path}: not a safetensors file, or truncated (bad header size)")
            raise CheckpointError(f"{path}: not a safetensors file (unreadable header)")
        header = _parse_json(start[8:] + file.read(header_size - 1), path, "not a safetensors file (unreadable header)")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (unreadable header)")
    data_size = size - 8 - header_size
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise CheckpointError(f"{path}: damaged safetensors header (tensor {name!r})")
        if offsets[1] > data_size:
            raise CheckpointError(f"{path}: truncated checkpoint (tensor {name!r} runs past the end); "
                                  "use an earlier copy or retrain")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        raise CheckpointError(f"{path}: a safetensors file, but not a charlm checkpoint (no charlm metadata)")
    meta = _parse_json(metadata[METADATA_KEY], path, "damaged charlm metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("format_version"), int):
        raise CheckpointError(f"{path}: damaged charlm metadata")
    if meta["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: made by a newer charlm (checkpoint format {meta['format_version']}, this charlm "
            f"reads up to {FORMAT_VERSION}); upgrade charlm"
        )
    return header, meta


def _parse_json(text: Any, path: str, what: str) -> Any:
    """JSON as data; anything it cannot be (not text, not JSON, nested past Python's recursion
    limit) is a `CheckpointError` saying `what`."""
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        raise CheckpointError(f"{path}: {what}") from None


# ---------------------------------------------------------------------------------------------
# Models in and out






