"""Models from checkpoints: a model rebuilt through the registry from a checkpoint's metadata, its
shapes checked against the file on the meta device before any memory is taken, its vocabs
checked against its config; and finding the model checkpoints of a folder (the newest of a task).

The file format itself (headers, atomic writes, never pickle) is `charlm.checkpoints.files`'.
"""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, fields
from typing import Any

import torch
from torch import nn

from charlm.checkpoints.files import load, read_metadata
from charlm.checkpoints.metadata import Metadata, read
from charlm.errors import CharlmError, CheckpointError
from charlm.models import registry
from charlm.models.ensemble import ENSEMBLE, Ensemble
from charlm.presets import PREPROCESS_MODES, TOKEN_KINDS
from charlm.text.pairs import is_pair_vocab
from charlm.text.tokens import Vocab


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"model.{name}": tensor for name, tensor in model.state_dict().items()}


def build_model(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: str = "checkpoint") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights. The config comes from the
    metadata; it is built on the meta device first so that its shapes are checked against the file
    before any memory is allocated."""
    task, name = meta.get("task"), registry.name_of(meta)
    try:
        model_class, config_class = registry.get(task, name).classes()
    except (CharlmError, TypeError):  # TypeError: a task of a JSON type that cannot be a key
        shown = meta.get("architecture", name)
        raise CheckpointError(f"{path}: unknown task {task!r} (architecture {shown!r}) in charlm metadata") from None
    weights = {name[len("model."):]: tensor for name, tensor in tensors.items() if name.startswith("model.")}
    try:
        known = {field.name for field in fields(config_class)}
        config = config_class(**{key: value for key, value in meta["model"].items() if key in known})
        members = meta["model"].get(ENSEMBLE, 1) if task == "lm" else 1
        if not isinstance(members, int) or isinstance(members, bool) or not 1 <= members <= len(weights):
            raise ValueError(f"{ENSEMBLE} {members!r} is not a number of members the file has weights for")
        # Shapes cost nothing on the meta device, but every layer is a module: bound their number.
        layers = {name: value for name, value in asdict(config).items() if name.endswith("layers")}
        if any(value > len(weights) for value in layers.values()):
            raise ValueError(f"{layers} is more layers than the file has weights ({len(weights)})")
        with torch.device("meta"):
            skeleton = Ensemble.of(model_class, config, members)
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: damaged model config in charlm metadata ({error})") from None
    expected = {name: (tuple(tensor.shape), tensor.dtype) for name, tensor in skeleton.state_dict().items()}
    found = {name: (tuple(tensor.shape), tensor.dtype) for name, tensor in weights.items()}
    if expected.keys() != found.keys() or any(expected[n][0] != found[n][0] for n in expected):
        raise CheckpointError(f"{path}: the weights do not match the model config in its metadata")
    if not all(torch.isfinite(tensor).all() for tensor in weights.values() if tensor.is_floating_point()):
        raise CheckpointError(f"{path}: holds NaN or infinite weights; use an earlier checkpoint or retrain")
    model = Ensemble.of(model_class, config, members)
    model.load_state_dict(weights)
    return model


def load_model(
    path: str | os.PathLike, task: str, device: torch.device | str = "cpu"
) -> tuple[nn.Module, Metadata, Vocab]:
    """(model in eval mode on `device`, metadata, vocab) from a language-model checkpoint (task
    "lm"); `load_translator` reads translation checkpoints."""
    model, meta, vocabs = load_with_vocabs(path, task, device)
    return model, meta, vocabs["vocab"]


def load_translator(
    path: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[nn.Module, Metadata, Vocab, Vocab]:
    """(model in eval mode on `device`, metadata, source vocab, target vocab) from a translation checkpoint."""
    model, meta, vocabs = load_with_vocabs(path, "translate", device)
    return model, meta, vocabs["source_vocab"], vocabs["target_vocab"]


def load_with_vocabs(
    path: str | os.PathLike, task: str, device: torch.device | str = "cpu"
) -> tuple[nn.Module, Metadata, dict[str, Vocab]]:
    """(model in eval mode on `device`, metadata, {metadata key: vocab}) from a model checkpoint of
    `task`, with every vocab checked against the model's config."""
    path = os.fspath(path)
    tensors, header = load(path, task=task)
    meta = read(header)
    try:
        vocabs = {key: Vocab.from_dict(meta[key]) for key in meta.VOCABS}  # as read: a vocab of any type fails here
        if meta.tokens not in TOKEN_KINDS or meta.preprocess not in PREPROCESS_MODES:
            raise ValueError("tokens / preprocess")
        if task == "translate" and not all(is_pair_vocab(vocab) for vocab in vocabs.values()):
            raise ValueError("special tokens")
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: damaged vocab or text settings in charlm metadata ({error})") from None
    model = build_model(tensors, meta, path)
    if any(getattr(model.config, size) != len(vocabs[key]) for key, size in meta.VOCABS.items()):
        raise CheckpointError(f"{path}: the vocab does not match the model in its metadata")
    return model.to(device).eval(), meta, vocabs


def model_checkpoints(folder: str | os.PathLike) -> list[tuple[str, dict[str, Any]]]:
    """(path, metadata) of every model checkpoint in `folder` (not resume files, nor files that
    are not checkpoints or this user cannot read), in name order."""
    found = []
    for path in sorted(glob.glob(os.path.join(os.fspath(folder), "*.safetensors"))):
        try:
            meta = read_metadata(path)
        except (CheckpointError, OSError):  # not a checkpoint, or one this user cannot read: look on
            continue
        if read(meta).file_kind == "model":
            found.append((path, meta))
    return found


def latest(folder: str | os.PathLike, task: str) -> str | None:
    """The most recently written model checkpoint of `task` in `folder`, or None."""
    found = []
    for path, meta in model_checkpoints(folder):
        try:
            written = os.path.getmtime(path)
        except OSError:
            continue
        if read(meta).task == task:
            found.append((written, path))
    return max(found)[1] if found else None
