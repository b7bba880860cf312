"""Settings: every setting a user can give charlm, declared once.

A `Setting` is a row: its name (the Python keyword and the JSON field), its type, its default,
its bounds in words, its help, and the commands that take it. From the rows come the click options
(`charlm.cli.options`), the Python API's signatures and `help()`, the HTTP request fields of
generation, and the checks: `Setting.check(value, said)` refuses a value out of bounds with one
line that names it as the caller named it (a flag, a keyword, a JSON field). A bound is checked
here, once; click's own range types are made from the same bounds, so `--help` and the check
never disagree.

Standard library only: it knows nothing about what a setting does. The rows are at the end, a table
per job (`GENERATE`, ...): adding a setting is adding a row and the code that uses it.
"""

from __future__ import annotations

import math
import re
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from charlm import presets
from charlm.models import registry
from charlm.errors import CharlmError
from charlm.presets import PRECISIONS, UNKNOWN_POLICIES


class SettingError(CharlmError):
    """A value a setting refuses; `setting` is the row's name, `said` how the caller named it."""

    def __init__(self, message: str, setting: str, said: str) -> None:
        super().__init__(message)
        self.setting, self.said = setting, said


@dataclass(frozen=True)
class Setting:
    """One setting. `kind` is int, float, str, bool, os.PathLike (a path) or tuple (repeatable
    text); `default` None with `required` False means "not set" (a task's or an architecture's
    default, or the feature off). Numbers are checked against `low` / `high` (open or closed) and
    `finite`; `rule` says the bound in words, as the error shows it: "{said} must be {rule}, got
    {value}". `choices` is a tuple, or a function read when a command runs (registered
    architectures). `flag` is the command-line flag when it is not "--" + the name with dashes;
    `keyword` the API keyword when it is not the name; `switch` makes a boolean whose default is
    None a --name/--no-name pair. A training setting also says which task reads it (`only`) and
    how it meets a model: a field of its config (`model_field`), fixed by a parent (`from_parent`)."""

    name: str
    kind: type
    default: Any = None
    help: str = ""
    commands: tuple[str, ...] = ()
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    finite: bool = False
    rule: str = ""
    flag: str | None = None
    keyword: str | None = None
    switch: bool = False
    metavar: str | None = None
    shown_default: str | None = None  # what --help shows as the default when it is not `default` itself
    only: str | None = None  # the one task that reads it ("lm", "translate"): given for the other, an error
    model_field: bool = False  # goes to the model's config by field name: an error for one without that field
    from_parent: bool = False  # --init-from takes it from its checkpoint: given with it, an error
    advice: str = ""  # what to do instead, after a refused number: "use {greedy} for argmax" ({name}: another setting)
    path: str | None = None  # of a path: "file" or "folder" (given on as a `Path`); None: either (as given)

    @property
    def option(self) -> str:
        """The command-line flag: --hidden-size for hidden_size."""
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def argument(self) -> str:
        """The Python keyword: `model` for the setting `cell`."""
        return self.keyword or self.name

    def choice_list(self) -> tuple[str, ...]:
        choices = self.choices() if callable(self.choices) else self.choices
        return tuple(choices or ())

    def check(self, value: Any, said: str | None = None) -> Any:
        """`value` if this setting takes it, else a `SettingError` naming it as `said` (the flag by
        default). None passes where the default is None (not set)."""
        said = said or self.option
        if value is None:
            if self.default is None:
                return None
            raise SettingError(f"{said} must be given, got null", self.name, said)
        if self.kind is bool:
            if not isinstance(value, bool):
                raise SettingError(f"{said} must be true or false, got {_shown(value)}", self.name, said)
            return value
        if self.choices is not None:
            choices = self.choice_list()
            if value not in choices:
                raise SettingError(f"{said} must be one of {', '.join(choices)}, got {_shown(value)}", self.name, said)
            return value
        if self.kind is int:
            if type(value) is not int:  # bool is not a number of steps
                raise SettingError(f"{said} must be a whole number, got {_shown(value)}", self.name, said)
            self._check_bounds(value, said)
            return value
        if self.kind is float:
            if type(value) not in (int, float):
                raise SettingError(f"{said} must be a number, got {_shown(value)}", self.name, said)
            self._check_bounds(value, said)
            return float(value) if type(value) is int else value
        if self.kind is str:
            if not isinstance(value, str):
                raise SettingError(f"{said} must be a string, got {_shown(value)}", self.name, said)
            return value
        if self.kind is os.PathLike:
            if not isinstance(value, (str, os.PathLike)):
                raise SettingError(f"{said} must be a path, got {_shown(value)}", self.name, said)
            return value
        if self.kind is tuple:
            if isinstance(value, str):
                return (value,)
            if not all(isinstance(item, str) for item in value):
                raise SettingError(f"{said} must be strings, got {_shown(value)}", self.name, said)
            return tuple(value)
        return value

    def in_bounds(self, value: float) -> bool:
        """Whether a number is within `low` and `high` (NaN never is; infinity only without `finite`)."""
        if math.isnan(value) or (self.finite and math.isinf(value)):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def _check_bounds(self, value: float, said: str) -> None:
        if not self.in_bounds(value):
            advice = ""
            if self.advice:  # other settings it names ({greedy}) are named as `said` names this one
                advice = " (" + re.sub(r"\{(\w+)\}", lambda match: "--" + match.group(1).replace("_", "-")
                                       if said.startswith("--") else match.group(1), self.advice) + ")"
            raise SettingError(f"{said} must be {self.rule or self.bounds_in_words()}, got {_shown(value)}{advice}",
                               self.name, said)

    def bounds_in_words(self) -> str:
        """The bounds as the error says them when no `rule` is given: "from 1 to 64", "at least 0"."""
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"
        if self.low is not None:
            return f"above {_number(self.low)}" if self.low_open else f"at least {_number(self.low)}"
        if self.high is not None:
            return f"below {_number(self.high)}" if self.high_open else f"at most {_number(self.high)}"
        return "a finite number" if self.finite else "a number"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else str(value)


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, float) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def table(*rows: Setting) -> dict[str, Setting]:
    """Rows by name; a name twice is a mistake in the table."""
    named: dict[str, Setting] = {}
    for row in rows:
        if row.name in named:
            raise ValueError(f"setting {row.name!r} is declared twice")
        named[row.name] = row
    return named


def for_command(rows: dict[str, Setting], command: str) -> list[Setting]:
    """The rows a command takes, in the table's order."""
    return [row for row in rows.values() if command in row.commands]


KEYWORD_TYPES = {int: "int", float: "float", str: "str", bool: "bool", os.PathLike: "PathLike",
                 tuple: "Sequence[str]"}


def annotation(row: Setting) -> str:
    """The type a signature shows for the row: "int | None" for a setting that may be unset."""
    shown = KEYWORD_TYPES.get(row.kind, row.kind.__name__)
    return f"{shown} | None" if row.default is None else shown



def said_by(row: Setting, door: str) -> str:
    """How a door names a setting, for `Setting.check`: "flag" as the CLI does (--top-p),
    "keyword" as the Python API does (top_p), "field" as a JSON body does (top_p)."""
    return {"flag": row.option, "keyword": row.argument, "field": row.name}[door]


def parameters(rows: Iterable[Setting], keyword_only: bool = False) -> list[Any]:
    """The rows as a signature's parameters (`inspect.Parameter`s), what help() and a notebook's
    completion show: each keyword with its default and `annotation`."""
    import inspect

    kind = inspect.Parameter.KEYWORD_ONLY if keyword_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
    return [inspect.Parameter(row.argument, kind, default=row.default, annotation=annotation(row)) for row in rows]


# ---------------------------------------------------------------------------------------------
# Training: `charlm train`'s flags and `charlm.train`'s keywords, in --help's order, with those that
# `stats`, `eval` and the other commands share. A default that differs by task or architecture is
# `charlm.presets`' (the row's default is then None, "the task's"), and so is a value both tasks
# start from that a config dataclass also reads (`presets.COMMON`); the help shows them from there.

MAX_THREADS = 1024  # torch takes up to 2**31 - 1, and would start them all on a first parallel op


def _per_task(name: str) -> str:
    """The defaults of the two tasks, as the help says them: "[default: 512 for text, 128 for pairs]"."""
    lm, pairs = presets.PRESETS["lm"][name], presets.PRESETS["translate"][name]
    shown = "torch's" if lm is None else lm
    return f"[default: {shown} for text, {pairs} for pairs]"


def _text_default(name: str) -> str:
    return f"[default: {presets.PRESETS['lm'][name]}]"


def _transformer_defaults() -> str:
    """The transformer's defaults where they differ from text's, as flags: "--seq-len 64, ..."."""
    changed = {name: value for name, value in presets.ARCHITECTURE_DEFAULTS["transformer"].items()
               if value != presets.LM.get(name)}
    return ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in changed.items())


def _model_names() -> tuple[str, ...]:
    """What --model takes: any language-model architecture registered now (text), or a cell (pairs)."""
    return tuple(dict.fromkeys((*registry.names("lm"), *presets.CELLS)))


_COMMON, _TRANSFORMER = presets.COMMON, presets.ARCHITECTURE_DEFAULTS["transformer"]

TRAIN = table(
    Setting("task", str, "auto", "lm: a language model of the text; translate: a model of source<TAB>target pairs; "
            "auto: translate when most lines hold a tab.", ("train",), choices=("auto", *presets.TASKS)),
    Setting("model_type", str, None, "Pairs: an encoder-decoder, or the lessons' tagger for pairs of equal lengths "
            f"[default: {presets.PAIRS['model_type']}].", ("train",), choices=lambda: registry.names("translate"),
            only="translate"),
    Setting("attention", bool, None, "Pairs: Bahdanau attention in the seq2seq decoder [default: on].", ("train",),
            switch=True, only="translate"),
    Setting("skip_bad_lines", bool, False, "Pairs: leave out malformed lines instead of stopping.", ("train", "eval"),
            only="translate"),
    Setting("cell", str, None, "Text: the recurrent cell, or a causal transformer, which has its own defaults: "
            f"{_transformer_defaults()}. Pairs: the cell. {_per_task('cell')}", ("train",), choices=_model_names,
            flag="--model", keyword="model", from_parent=True),
    Setting("from_scratch", bool, _COMMON["from_scratch"], "Use the from-scratch cells (explicit equations) instead of "
            "torch's.", ("train",), model_field=True, from_parent=True),
    Setting("tokens", str, _COMMON["tokens"], "Text: tokenize into characters or whitespace-separated words.",
            ("train", "stats"), choices=presets.TOKEN_KINDS, only="lm", from_parent=True),
    Setting("preprocess", str, _COMMON["preprocess"], "Text: none, the text as it is; d2l, letters only, lower case "
            "(the d2l book's).", ("train", "stats"), choices=presets.PREPROCESS_MODES, only="lm", from_parent=True),
    Setting("encoding", str, _COMMON["encoding"], "Text encoding of the input file.", ("train", "stats", "eval")),
    Setting("include", tuple, (), "Of a folder, read only the files this glob matches (by their path inside it or "
            "their name; repeatable). A file named on the command line is always read.", ("train", "stats", "eval"),
            metavar="GLOB", only="lm"),
    Setting("exclude", tuple, (), "Of a folder, leave out the files and folders this glob matches (repeatable).",
            ("train", "stats", "eval"), metavar="GLOB", only="lm"),
    Setting("min_freq", int, _COMMON["min_freq"], "Rarer tokens become <unk>.", ("train",), low=1, from_parent=True),
    Setting("max_vocab", int, _COMMON["max_vocab"], "Keep at most this many tokens (the rest become <unk>).",
            ("train",), low=1, from_parent=True),
    Setting("cache_dir", os.PathLike, None, "Keep the token ids here, so the next run on the same text starts at "
            "once [default: .charlm-cache/ beside the text].", ("train",), path="folder", only="lm"),
    Setting("no_cache", bool, False, "Neither read nor write the token cache.", ("train",), only="lm"),
    Setting("embedding_size", int, None, f"0 feeds one-hot vectors (not for seq2seq). {_per_task('embedding_size')}",
            ("train",), low=0, model_field=True, from_parent=True),
    Setting("hidden_size", int, None, _per_task("hidden_size"), ("train",), low=1, model_field=True,
            from_parent=True),
    Setting("num_layers", int, None, _per_task("num_layers"), ("train",), low=1, model_field=True, from_parent=True),
    Setting("num_heads", int, None, "Transformer: attention heads; they split --embedding-size, the model's width "
            f"[default: {_TRANSFORMER['num_heads']}].", ("train",), low=1, model_field=True, from_parent=True),
    Setting("dropout", float, None, _per_task("dropout"), ("train",), low=0, high=1, high_open=True, model_field=True),
    Setting("weight_drop", float, None, "Text: DropConnect on the recurrent weights W_hh, one mask per batch "
            f"(AWD-LSTM). {_text_default('weight_drop')}", ("train",), low=0, high=1, high_open=True, model_field=True),
    Setting("locked_dropout", bool, None, "Text: --dropout with one mask per sequence for every step (variational), "
            f"on the embedding, between the layers and before the head. {_text_default('locked_dropout')}",
            ("train",), switch=True, model_field=True),
    Setting("embedding_dropout", float, None, "Text: drop whole tokens' embeddings, one mask per batch. "
            f"{_text_default('embedding_dropout')}", ("train",), low=0, high=1, high_open=True, model_field=True),
    Setting("ema", float, _COMMON["ema"], "Evaluate and keep an exponential moving average of the weights with this "
            "decay (e.g. 0.999); 0 keeps the weights themselves.", ("train",), low=0, high=1, high_open=True,
            rule="a decay in [0, 1)"),
    Setting("seq_len", int, _COMMON["seq_len"], "Text: steps of backpropagation through time; for the transformer, "
            "its context.", ("train",), low=1, only="lm"),
    Setting("batch_size", int, _COMMON["batch_size"], "Rows per step, over all processes under torchrun.", ("train",),
            low=1),
    Setting("iterator", str, _COMMON["iterator"], "Text: sequential carries the hidden state between batches; random "
            "samples independent windows.", ("train",), choices=presets.ITERATORS, only="lm"),
    Setting("optimizer", str, _COMMON["optimizer"], "", ("train",), choices=presets.OPTIMIZERS),
    Setting("lr", float, None, f"Learning rate. {_per_task('lr')}", ("train",), low=0, low_open=True, finite=True,
            rule="a positive number"),
    Setting("lr_schedule", str, None, "cosine: from --lr down to --lr x --min-lr-ratio over --epochs. "
            f"{_per_task('lr_schedule')}", ("train",), choices=presets.SCHEDULES),
    Setting("min_lr_ratio", float, _COMMON["min_lr_ratio"], "", ("train",), low=0, high=1),
    Setting("warmup_steps", int, _COMMON["warmup_steps"], "Steps rising linearly to --lr before the schedule (the "
            f"transformer's default: {_TRANSFORMER['warmup_steps']}).", ("train",), low=0, rule="0 or more"),
    Setting("lr_decay_steps", int, _COMMON["lr_decay_steps"], "The steps the schedule runs over, fixed (nanoGPT's "
            "lr_decay_iters); by default --epochs', or with --max-time the steps it allows. --max-steps only stops, "
            "so a stopped run resumes on its curve.", ("train",), low=1),
    # Finite, so that a bad value is refused at once: an infinite weight decay surfaces steps later as a NaN
    # loss blamed on --lr, and an infinite clip is no clip, which 0 says. --max-time inf stays: only compared
    # with the clock, it is a limit never reached.
    Setting("weight_decay", float, _COMMON["weight_decay"], "", ("train",), low=0, finite=True,
            rule="finite, 0 or more"),
    Setting("clip", float, _COMMON["clip"], "Clip the global gradient norm to this (0: off).", ("train",), low=0,
            finite=True, rule="0 (off) or a finite number"),
    Setting("epochs", int, None, _per_task("epochs"), ("train",), low=1),
    Setting("max_steps", int, _COMMON["max_steps"], "Stop after this many optimizer steps.", ("train",), low=1),
    Setting("max_time", float, _COMMON["max_time"], "Stop after this many seconds.", ("train",), low=0, low_open=True,
            rule="positive"),
    Setting("val_fraction", float, _COMMON["val_fraction"], "Held out for validation: the last part of a text (of "
            "several files, the last part of each of 20 equal stretches of their text); a seeded random part of the "
            "pairs.", ("train",), low=0, high=1, high_open=True),
    Setting("eval_every", int, _COMMON["eval_every"], "Evaluate every N steps (default: each epoch).", ("train",),
            low=1),
    Setting("seed", int, _COMMON["seed"], "", ("train",)),
    Setting("device", str, _COMMON["device"], "Where to run: auto picks cuda, then mps, then cpu.",
            ("train", "eval", "generate", "translate", "serve"), choices=presets.DEVICES),
    Setting("threads", int, None, f"CPU threads for torch (small models are faster on one). {_per_task('threads')}",
            ("train",), low=1, high=MAX_THREADS),
    Setting("precision", str, _COMMON["precision"], "auto: bf16 autocast on a CUDA GPU that supports it, or on a CPU "
            "with bf16 matrix instructions where a step measures faster with the same loss (kept in the cache "
            "folder), else fp32.", ("train",), choices=presets.PRECISIONS),
    Setting("out", os.PathLike, None, "Checkpoint path [default: checkpoints/<corpus stem>.safetensors].",
            ("train",), path="file"),
    Setting("keep", str, None, "The model to save at --out: the best by validation loss, or the last (pairs such as "
            f"antonyms cannot generalise, so their model must learn them all). {_per_task('keep')}", ("train",),
            choices=presets.KEEPS),
    Setting("resume", bool, False, "Continue the run saved at --out from where it stopped.", ("train",)),
    Setting("allow_changed_corpus", bool, False, "With --resume: go on although files of the corpus were added, "
            "removed or edited since the run started (its vocab must stay the same).", ("train",), only="lm"),
    Setting("init_from", os.PathLike, None, "Fine-tune: start from this language model's weights, architecture, "
            "vocab and text settings, with a fresh optimizer and schedule.", ("train",), metavar="CHECKPOINT",
            only="lm"),
    Setting("unknown", str, "error", "With --init-from: characters of the text that the model's vocab lacks stop "
            "with an error naming them, or become <unk>.", ("train",), choices=("error", "unk"), only="lm"),
    Setting("extend_vocab", bool, False, "With --init-from: add the characters the model's vocab lacks, as new rows "
            "of the embedding (columns of a one-hot input's weights) and of the output layer; the old ones stay as "
            "they are.", ("train",), only="lm"),
    Setting("overwrite", bool, False, "Replace a run already saved at --out.", ("train",)),
    Setting("quiet", bool, False, "No progress bar or evaluation lines.", ("train",)),
)

# `charlm stats`' own; it takes --tokens, --preprocess, --encoding, --include and --exclude above.
STATS = table(
    Setting("top", int, 10, "How many of the most frequent tokens.", ("stats",), low=0),
)


# What to do with characters a model never saw: generation's prefix, translation's inputs.
UNKNOWN = Setting("unknown", str, "error", "What to do with characters the model never saw: stop with an error, drop "
                  "them, or map them to <unk>.", choices=UNKNOWN_POLICIES)


# ---------------------------------------------------------------------------------------------
# Generation: `charlm generate`'s flags, `TextModel.generate`'s keywords, the fields of a request
# to the server ("http"), and the fields of `charlm.generation.request.Request`.

GENERATE = table(
    Setting("prefix", str, "", "Text to start from (preprocessed like the corpus).", ("generate", "http")),
    Setting("length", int, 200, "Tokens to generate.", ("generate", "http"), low=0),
    Setting("temperature", float, 1.0, "Divides the logits: below 1 sharper, above 1 flatter.", ("generate", "http"),
            low=0, low_open=True, finite=True, rule="a positive number", advice="use {greedy} for argmax"),
    Setting("top_k", int, 0, "Sample among the k likeliest (0: all).", ("generate", "http"), low=0,
            rule="0 (off) or more"),
    Setting("top_p", float, 1.0, "Sample among the likeliest tokens that make up this much probability.",
            ("generate", "http"), low=0, high=1, low_open=True),
    Setting("greedy", bool, False, "Always take the likeliest token.", ("generate", "http")),
    Setting("seed", int, None, "Same seed, same text (on this machine, in this precision).", ("generate", "http")),
    Setting("num_samples", int, 1, "Samples at once.", ("generate", "http"), low=1),
    replace(UNKNOWN, commands=("generate", "http")),
    Setting("precision", str, "auto", "Of the steps' matrix products. auto: bf16 where this machine has bf16 matrix "
            "units and a step measures faster in it at --num-samples rows with the same next-token odds (kept beside "
            "the checkpoint), else fp32. fp32 gives the same text for a seed at any --num-samples.", ("generate",),
            choices=PRECISIONS),
)


# ---------------------------------------------------------------------------------------------
# Translation: `charlm translate`'s and `charlm eval`'s decoding flags, `PairModel.translate`'s
# keywords, the fields of a request to /v1/translate ("http").

TRANSLATE = table(
    Setting("beam", int, 1, "Beam search keeping this many candidates (1: greedy).", ("translate", "eval", "http"),
            low=1),
    Setting("max_length", int, None, "Stop an output at this many characters.", ("translate", "eval", "http"), low=1,
            shown_default="twice the input's length + 10"),
    Setting("length_penalty", float, 0.0, "Beam search ranks finished outputs by log-probability / length ** this "
            "(0: total log-probability; 1: per character).", ("translate", "eval", "http"), low=0),
    replace(UNKNOWN, commands=("translate", "http")),
)
