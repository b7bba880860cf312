"""The Python API: what the commands do, for a notebook or a program.

    import charlm
    run = charlm.train("corpora/timemachine.txt", preprocess="d2l", max_time=120)
    model = charlm.load(run.checkpoint)
    print(model.generate("time ", length=200, top_p=0.9, seed=1))
    for piece in model.stream("time ", length=200): ...
    model.evaluate("some held-out text")     # loss, perplexity, bits per char
    pairs = charlm.load("checkpoints/wordpairs.safetensors"); pairs.translate(["man", "king"], beam=4)

Each function takes the options of its command, underscored, with the same defaults, and gives
what the command prints as Python values: `train` runs `charlm.launch` as `charlm train` does. A
mistake in the input raises `charlm.CharlmError` with the line the command would print; nothing
here exits the interpreter. Progress goes to stderr, or to a notebook's bar (`charlm.trainer`).
"""

from __future__ import annotations

import inspect
import json
import os
import queue
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charlm.errors import CharlmError
from charlm.launch import DEFAULTS, launch
from charlm.presets import PAIRS

PathLike = str | os.PathLike


def _check_precision(precision: str) -> None:
    from charlm.presets import PRECISIONS

    if precision not in PRECISIONS:
        raise CharlmError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class Run:
    """A finished training run: its checkpoint, the best validation loss (None for a run without a
    validation split) and the trainer's summary; `metrics` reads the evaluations it recorded."""

    checkpoint: Path
    best_val_loss: float | None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """One dict per evaluation (step, train and val loss, ...), read from the run's metrics file."""
        from charlm.runfiles import run_paths

        path = run_paths(self.checkpoint)["metrics"]
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as file:
            return [json.loads(line) for line in file if line.strip()]


# The options of `train`, as `charlm train` names them (its --model sets `cell`).
_RENAMED = {"model": "cell"}
_RUN_OPTIONS = {"out": None, "resume": False, "overwrite": False, "quiet": False}
TRAIN_OPTIONS: dict[str, Any] = {
    **{("model" if name == "cell" else name): default for name, default in DEFAULTS.items()}, **_RUN_OPTIONS,
}


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
    Raises `charlm.CharlmError` (`TrainingInterrupted` when interrupted) with the command's message.
    """
    unknown = sorted(set(options) - set(TRAIN_OPTIONS))
    if unknown:
        raise TypeError(f"train() got unexpected keyword argument{'s' if len(unknown) > 1 else ''}: "
                        f"{', '.join(unknown)} (it takes charlm train's options: {', '.join(TRAIN_OPTIONS)})")
    given = {_RENAMED.get(name, name) for name in options if name not in _RUN_OPTIONS}
    settings = {**DEFAULTS, **{_RENAMED.get(name, name): value for name, value in options.items()
                               if name not in _RUN_OPTIONS}}
    for name in ("include", "exclude"):
        settings[name] = (settings[name],) if isinstance(settings[name], str) else tuple(settings[name])
    if settings["cache_dir"] is not None:
        settings["cache_dir"] = Path(settings["cache_dir"])
    run_options = {**_RUN_OPTIONS, **{name: options[name] for name in _RUN_OPTIONS if name in options}}
    out = Path(run_options["out"]) if run_options["out"] is not None else None
    done = launch(_paths(corpus), settings, given, out, run_options["resume"], run_options["overwrite"],
                  run_options["quiet"], _say)
    return Run(done.out, done.summary.get("best_val_loss"), done.summary)


# The types of the options whose default (None) does not say it.
_TYPES = {"model_type": "str", "attention": "bool", "model": "str", "max_vocab": "int", "cache_dir": "PathLike",
          "embedding_size": "int", "hidden_size": "int", "num_layers": "int", "num_heads": "int", "dropout": "float",
          "weight_drop": "float", "locked_dropout": "bool", "embedding_dropout": "float", "lr": "float",
          "lr_schedule": "str", "lr_decay_steps": "int", "epochs": "int", "max_steps": "int", "max_time": "float", "eval_every": "int",
          "threads": "int", "keep": "str", "init_from": "PathLike", "out": "PathLike"}


def _annotation(name: str, default: Any) -> str:
    if default is None:
        return f"{_TYPES[name]} | None"
    return "Sequence[str]" if isinstance(default, tuple) else type(default).__name__


train.__signature__ = inspect.Signature(  # what help() and a notebook's completion show
    [inspect.Parameter("corpus", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="PathLike | Sequence[PathLike]"),
     *(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=_annotation(name, default))
       for name, default in TRAIN_OPTIONS.items())],
    return_annotation="Run",
)


def stats(corpus: PathLike | Sequence[PathLike], tokens: str = "char", preprocess: str = "none",
          encoding: str = "utf-8", include: Sequence[str] = (), exclude: Sequence[str] = (),
          top: int = 10) -> dict[str, Any]:
    """What `charlm stats --json CORPUS` prints, as a dict: tokens, vocab size, the most frequent
    tokens, files read and skipped, and how training would hold out its validation split."""
    from charlm.corpus import corpus_stats, find_corpus

    found = find_corpus(_paths(corpus), encoding, tuple(include), tuple(exclude))
    return corpus_stats(found, encoding, tokens, preprocess, top)


def _paths(corpus: PathLike | Sequence[PathLike]) -> tuple[Path, ...]:
    return (Path(corpus),) if isinstance(corpus, (str, os.PathLike)) else tuple(Path(path) for path in corpus)


# ---------------------------------------------------------------------------------------------
# Trained models


def load(path: PathLike, device: str = "cpu") -> TextModel | PairModel:
    """The model of a checkpoint: a `TextModel` for a language model, a `PairModel` for a model of
    source<TAB>target pairs. `device` is as `--device` takes it (auto: cuda, then mps, then cpu)."""
    from charlm.checkpoint import read_metadata
    from charlm.metadata import read
    from charlm.runtime import pick_device

    path = os.fspath(path)
    kind = PairModel if read(read_metadata(path)).task == "translate" else TextModel
    return kind(path, pick_device(device))


class TextModel:
    """A trained language model: `generate`, `stream`, `evaluate` and `info`, as the commands
    `charlm generate`, `charlm eval` and `charlm info` do."""

    def __init__(self, path: str, device: Any) -> None:
        from charlm.checkpoint import load_model

        self.path = path
        self.model, self.meta, self.vocab = load_model(path, "lm", device)

    def __repr__(self) -> str:
        return f"TextModel({self.path!r})"

    def info(self) -> dict[str, Any]:
        """The checkpoint's metadata, as `charlm info --json` prints it."""
        from charlm.metadata import write

        return write(self.meta)

    def generate(self, prefix: str = "", length: int = 200, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, greedy: bool = False, seed: int | None = None, num_samples: int = 1,
                 unknown: str = "error", precision: str = "auto") -> str | list[str]:
        """The text `charlm generate` prints with these options (the prefix, then `length` new
        tokens), without its final line break; a list of them for `num_samples` > 1. `precision`
        is as `--precision` takes it: "auto" (bf16 where it measures faster here), "fp32", "bf16"."""
        _check_precision(precision)
        pieces: list[str] = []
        self._sample(pieces.append, prefix, length, temperature, top_k, top_p, greedy, seed, num_samples, unknown,
                     precision)
        if num_samples == 1:
            return "".join(pieces).removesuffix("\n")
        return [piece.removeprefix("\n").removesuffix("\n") for piece in pieces]

    def stream(self, prefix: str = "", length: int = 200, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, greedy: bool = False, seed: int | None = None,
               unknown: str = "error", precision: str = "auto") -> Iterator[str]:
        """The text of `generate` (one sample) in pieces, each as soon as it is made: the prefix,
        then the new text a few tokens at a time, then "\\n". A bad prefix raises here, at once."""
        from charlm.generate import encode_prefix

        encode_prefix(prefix, self.vocab, self.meta["tokens"], self.meta["preprocess"], unknown)  # fail now
        _check_precision(precision)
        pieces: queue.Queue = queue.Queue()
        done, stopped = object(), threading.Event()

        def put(piece: str) -> None:
            if stopped.is_set():  # the reader has gone: stop sampling
                raise _Stopped
            pieces.put(piece)

        def work() -> None:
            try:
                self._sample(put, prefix, length, temperature, top_k, top_p, greedy, seed, 1, unknown, precision)
            except _Stopped:
                pass
            except BaseException as error:  # handed to the reader
                pieces.put(error)
            pieces.put(done)

        def read() -> Iterator[str]:
            worker = threading.Thread(target=work, daemon=True)
            worker.start()
            try:
                while (piece := pieces.get()) is not done:
                    if isinstance(piece, BaseException):
                        raise piece
                    yield piece
            finally:
                stopped.set()
                worker.join()

        return read()

    def _sample(self, on_text: Any, prefix: str, length: int, temperature: float, top_k: int, top_p: float,
                greedy: bool, seed: int | None, num_samples: int, unknown: str, precision: str) -> None:
        from charlm import generate as generator

        sampling = generator.Sampling(temperature, top_k, top_p, greedy)
        prefix_ids = generator.encode_prefix(prefix, self.vocab, self.meta["tokens"], self.meta["preprocess"], unknown)
        if prefix and not prefix_ids and unknown == "skip":
            _say("note: every character of the prefix was unknown and skipped: generating without one")
        chosen, note = generator.choose_precision(self.model, num_samples, precision, self.path)
        if note:
            _say(note)
        generator.stream_text(self.model, self.vocab, self.meta["tokens"], prefix_ids, length, sampling, num_samples,
                              seed, on_text=on_text, precision=chosen)

    def evaluate(self, text_or_path: str | os.PathLike | Sequence[PathLike], encoding: str = "utf-8",
                 include: Sequence[str] = (), exclude: Sequence[str] = ()) -> dict[str, Any]:
        """Loss (nats per token), perplexity ("ppl"), bits per token ("bpc"), the tokens predicted
        and how many the vocab lacks, as `charlm eval --json` reports them. A `Path`, a list of
        paths, or a str naming a file or folder is read as `charlm eval` reads it; any other str
        is the text itself."""
        from charlm.corpus import find_corpus
        from charlm.evaluation import evaluate_text

        if isinstance(text_or_path, str) and not _names_a_path(text_or_path):
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "text.txt"
                path.write_text(text_or_path, encoding="utf-8")
                return evaluate_text(self.model, self.meta, self.vocab, path, "utf-8")
        found = find_corpus(_paths(text_or_path), encoding, tuple(include), tuple(exclude))
        return evaluate_text(self.model, self.meta, self.vocab, found, encoding)


class _Stopped(Exception):
    """A stream's reader stopped reading."""


def _names_a_path(text: str) -> bool:
    return "\n" not in text and len(text) < 4096 and os.path.exists(text)


class PairModel:
    """A trained model of source<TAB>target pairs (seq2seq or the lessons' tagger): `translate`,
    `attention`, `evaluate` and `info`, as `charlm translate`, `charlm eval` and `charlm info` do."""

    def __init__(self, path: str, device: Any) -> None:
        from charlm.checkpoint import load_translator

        self.path, self.device = path, device
        self.model, self.meta, self.source_vocab, self.target_vocab = load_translator(path, device)

    def __repr__(self) -> str:
        return f"PairModel({self.path!r})"

    def info(self) -> dict[str, Any]:
        """The checkpoint's metadata, as `charlm info --json` prints it."""
        from charlm.metadata import write

        return write(self.meta)

    def translate(self, texts: str | Sequence[str], beam: int = 1, max_length: int | None = None,
                  length_penalty: float = 0.0, unknown: str = "error") -> list[str] | str:
        """The outputs `charlm translate` prints for `texts`, one per input (a str for a str).
        `beam` > 1 is beam search; `max_length` stops an output (default: twice the input's length
        + 10); `unknown` is what to do with characters the model never saw: "error", "skip", "unk"."""
        from charlm import translate
        from charlm.runtime import cpu_threads

        inputs = [texts] if isinstance(texts, str) else list(texts)
        with cpu_threads(PAIRS["threads"]):
            outputs = translate.translate(self.model, inputs, self.source_vocab, self.target_vocab, beam, max_length,
                                          length_penalty, unknown)
        return outputs[0] if isinstance(texts, str) else outputs

    def attention(self, text: str, unknown: str = "error") -> dict[str, Any]:
        """What `charlm translate --attention-plot` draws for `text`: "weights", a tensor
        (output characters + 1, source characters) whose rows sum to 1, with the "source" and
        "output" characters (the output's last is "<eos>") that label it."""
        from charlm import translate
        from charlm.errors import UsageError
        from charlm.generate import encode_prefix

        output = self.translate(text, unknown=unknown)
        source_ids = encode_prefix(text, self.source_vocab, unknown=unknown, what="input")
        if not source_ids:
            raise UsageError("nothing to plot: the input is empty")
        weights = translate.attention_weights(self.model, source_ids, self.target_vocab.encode(output))
        return {"weights": weights, "source": self.source_vocab.decode(source_ids), "output": [*output, "<eos>"]}

    def evaluate(self, pairs_path: PathLike, held_out: bool = False, beam: int = 1, length_penalty: float = 0.0,
                 max_length: int | None = None, skip_bad_lines: bool = False,
                 encoding: str = "utf-8") -> dict[str, Any]:
        """Exact match, character error rate and BLEU on the pairs of a file (with `held_out`,
        those its training held out), as `charlm eval --json` reports them."""
        from charlm.evaluation import evaluate_translator
        from charlm.pairs import read_pairs, skipped_message

        pairs, skipped = read_pairs(Path(pairs_path), encoding, skip_bad_lines)
        if line := skipped_message(pairs_path, skipped):
            _say(line)
        return evaluate_translator(self.path, pairs, self.device.type, held_out, beam, length_penalty, max_length)
