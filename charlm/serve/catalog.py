"""Catalog: the models a server serves, found and loaded once, at start, and named.

`load_catalog(paths)` takes checkpoint files and folders (a folder: every model checkpoint in
it, not resume files; no path: `checkpoints/`), loads each through `charlm.load` and names it by
its file stem (`timemachine`, then `timemachine-2` for a second of that name). A request names a
model from this list, never a path: after start, the only files read are these checkpoints'
metrics files, at paths fixed here.

It knows nothing about HTTP; what a request may ask of a model is `charlm.serve.app`'s.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charlm.trained import PairModel, TextModel
from charlm.api import load
from charlm.checkpoints.loading import model_checkpoints
from charlm.checkpoints.files import read_metadata
from charlm.errors import CharlmError
from charlm.checkpoints.metadata import describe
from charlm.presets import CHECKPOINT_DIR

METRIC_KEYS = ("step", "tokens", "train_loss", "val_loss")  # what a loss curve draws


@dataclass
class Served:
    """A model served under `name`, loaded from `path`; `summary` is what `charlm info` says."""

    name: str
    path: str
    model: TextModel | PairModel
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return "translate" if isinstance(self.model, PairModel) else "lm"

    def listing(self) -> dict[str, Any]:
        """The model as `GET /v1/models` lists it: its name, its file's name (not its folder) and
        what `charlm info` says of it."""
        return {"name": self.name, "checkpoint": os.path.basename(self.path), **self.summary}

    def metrics(self) -> dict[str, Any]:
        """The points of its loss curve, from its run's metrics file as it is now, or none with a
        note saying why."""
        from charlm.plot import read_metrics

        try:
            records = read_metrics(self.path)
        except CharlmError:
            return {"points": [], "note": "no evaluations recorded for this model"}
        return {"points": [{key: record.get(key) for key in METRIC_KEYS} for record in records]}


def find_checkpoints(paths: list[str]) -> list[str]:
    """The checkpoint files of `paths`: a file as given, a folder's model checkpoints by name, the
    same file once; with no paths, those of `checkpoints/`. None at all is a `CharlmError`."""
    found: list[str] = []
    for path in paths or [CHECKPOINT_DIR]:
        if not paths and not os.path.isdir(path):
            continue
        if os.path.isdir(path):
            found += [checkpoint for checkpoint, _ in model_checkpoints(path)]
        else:
            read_metadata(path)  # a file that is not a checkpoint fails here, in one line
            found.append(path)
    unique, seen = [], set()
    for path in found:  # the same file named twice, or through a link, is served once
        if os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            unique.append(path)
    if not unique:
        where = ", ".join(f"{path}/" for path in paths) if paths else f"{CHECKPOINT_DIR}/"
        raise CharlmError(f"no model checkpoint in {where}; train one first (charlm train corpora/timemachine.txt) "
                          "or name a checkpoint")
    return unique


def load_catalog(paths: list[str], device: str = "cpu") -> dict[str, Served]:
    """{name: model} of every checkpoint of `paths` (see `find_checkpoints`), in order."""
    catalog: dict[str, Served] = {}
    for path in find_checkpoints(paths):
        stem = Path(path).name.removesuffix(".safetensors")
        name = next(candidate for number in range(1, len(catalog) + 2)
                    if (candidate := stem if number == 1 else f"{stem}-{number}") not in catalog)
        model = load(path, device)
        catalog[name] = Served(name, path, model, json_safe(describe(model.meta)))
    return catalog


def json_safe(value: Any) -> Any:
    """`value` with every float JSON cannot hold (NaN, infinity) as None: metadata is anyone's data."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
