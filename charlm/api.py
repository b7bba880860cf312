"""The Python API: what the commands do, for a notebook or a program.

    import charlm
    run = charlm.train("corpora/timemachine.txt", preprocess="d2l", max_time=120)
    model = charlm.load(run.checkpoint)
    print(model.generate("time ", length=200, top_p=0.9, seed=1))
    for piece in model.stream("time ", length=200): ...
    model.evaluate("some held-out text")     # loss, perplexity, bits per char
    pairs = charlm.load("checkpoints/wordpairs.safetensors"); pairs.translate(["man", "king"], beam=4)

Each function takes the options of its command, underscored, with the same defaults, and gives
what the command prints as Python values: `train` runs `charlm.training.launch` as `charlm train` does. A
mistake in the input raises `charlm.CharlmError` with the line the command would print; nothing
here exits the interpreter. Progress goes to stderr, or to a notebook's bar (`charlm.training.trainer`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charlm.errors import KeywordError, UsageError
from charlm.settings import STATS, TRAIN, Setting, for_command, parameters
from charlm.settings.rows import shown_value
from charlm.arguments import PathLike, callers_terms, paths
from charlm.trained import PairModel, TextModel, say
from charlm.training.launch import DEFAULTS, launch


@dataclass
class Run:
    """A finished training run: its checkpoint, the best validation loss (None for a run without a
    validation split) and the trainer's summary; `metrics` reads the evaluations it recorded."""

    checkpoint: Path
    best_val_loss: float | None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """One dict per evaluation (step, train and val loss, ...), read from the run's metrics file (a
        last line cut short by a kill is left out, as `charlm plot` leaves it out)."""
        from charlm.training.run_files import MetricsFile, run_paths

        return MetricsFile(run_paths(self.checkpoint)["metrics"]).read()


# The options of `train` and `stats`: their commands' settings (`charlm.settings`), by keyword (train's
# `model` is the setting `cell`, as its flag is --model).
_TRAIN_ROWS = {row.argument: row for row in for_command(TRAIN, "train")}
_STATS_ROWS = {row.argument: row for row in for_command({**TRAIN, **STATS}, "stats")}
TRAIN_OPTIONS: dict[str, Any] = {keyword: row.default for keyword, row in _TRAIN_ROWS.items()}


@callers_terms(TRAIN)
def train(corpus: PathLike | Sequence[PathLike], **options: Any) -> Run:
    """Train as `charlm train CORPUS` does, and return the run. CORPUS is a text file, a folder,
    several of them, or one source<TAB>target file (a translation model).

    The options are `charlm train`'s flags, underscored, with the same defaults and meaning
    (`charlm train --help` says what each does); those left out take the task's and the
    architecture's defaults, as a flag left out does. For example::

        charlm.train("corpora/timemachine.txt", preprocess="d2l", model="gru", max_time=120)
        charlm.train("my.txt", out="runs/my.safetensors", resume=True)

    Progress shows as a bar (in a notebook, the notebook's), nothing with `quiet=True`.
    Interrupting the cell saves the run: the same call with `resume=True` goes on from it.
    Raises `charlm.CharlmError` (`TrainingInterrupted` when interrupted) with the command's message;
    a value a setting does not take, at once, in a line that names its keyword ("lr must be ...").
    """
    _check_keywords("train", options, _TRAIN_ROWS)
    settings = {**DEFAULTS, **_settings(options, _TRAIN_ROWS)}
    given = {_TRAIN_ROWS[keyword].name for keyword in options}
    done = launch(paths(corpus), settings, given, say)
    return Run(done.out, done.summary.get("best_val_loss"), done.summary)


@callers_terms(TRAIN, STATS)
def stats(corpus: PathLike | Sequence[PathLike], **options: Any) -> dict[str, Any]:
    """What `charlm stats --json CORPUS` prints, as a dict: tokens, vocab size, the most frequent
    tokens, files read and skipped, and how training would hold out its validation split. The
    options are `charlm stats`' flags, underscored."""
    return stats_with_files(corpus, **options)[1]


def stats_with_files(corpus: PathLike | Sequence[PathLike], **options: Any) -> tuple[Any, dict[str, Any]]:
    """`stats`, with the corpus as it was found (`charlm.text.corpus.FoundCorpus`: the files read and
    skipped), for a caller that says which files it read, as `charlm stats` does."""
    from charlm.text.corpus import find_corpus
    from charlm.data.ids import corpus_stats

    _check_keywords("stats", options, _STATS_ROWS)
    settings = {**{keyword: row.default for keyword, row in _STATS_ROWS.items()}, **_settings(options, _STATS_ROWS)}
    found = find_corpus(paths(corpus), settings["encoding"], settings["include"], settings["exclude"])
    return found, corpus_stats(found, settings["encoding"], settings["tokens"], settings["preprocess"], settings["top"])


def _check_keywords(function: str, options: dict[str, Any], rows: dict[str, Setting]) -> None:
    unknown = sorted(set(options) - set(rows))
    if unknown:
        raise KeywordError(f"{function}() got unexpected keyword argument{'s' if len(unknown) > 1 else ''}: "
                        f"{', '.join(unknown)} (it takes charlm {function}'s options: {', '.join(rows)})")


def _settings(options: dict[str, Any], rows: dict[str, Setting]) -> dict[str, Any]:
    """The keywords given, each checked by its row (an error names the keyword), by setting name, as
    the row gives them back: a path the command reads as a `Path` made one, repeatable text a tuple,
    a number a Python int or float (numpy's too)."""
    settings = {}
    for keyword, value in options.items():
        row = rows[keyword]
        checked = row.check(value, keyword)
        settings[row.name] = Path(checked) if row.path is not None and checked is not None else checked
    return settings


def _signature(rows: dict[str, Setting], returns: str) -> inspect.Signature:
    """What help() and a notebook's completion show of a function that takes `rows` as keywords."""
    return inspect.Signature(
        [inspect.Parameter("corpus", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                           annotation="PathLike | Sequence[PathLike]"),
         *parameters(rows.values(), keyword_only=True)],
        return_annotation=returns)


train.__signature__ = _signature(_TRAIN_ROWS, "Run")
stats.__signature__ = _signature(_STATS_ROWS, "dict[str, Any]")


# ---------------------------------------------------------------------------------------------
# Trained models


@callers_terms(TRAIN)
def load(path: PathLike, device: str = "cpu") -> TextModel | PairModel:
    """The model of a checkpoint: a `TextModel` for a language model, a `PairModel` for a model of
    source<TAB>target pairs. `device` is as `--device` takes it (auto: cuda, then mps, then cpu)."""
    from charlm.checkpoints.files import read_metadata
    from charlm.checkpoints.metadata import read
    from charlm.runtime.device import pick_device

    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"path must be a path, got {shown_value(path)}")
    path, device = os.fspath(path), TRAIN["device"].check(device, "device")
    kind = PairModel if read(read_metadata(path)).task == "translate" else TextModel
    return kind(path, pick_device(device))


