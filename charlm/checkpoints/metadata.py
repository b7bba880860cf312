"""Checkpoint metadata, typed: what a checkpoint records besides its weights, one dataclass per task,
with one writer (`write`: the dataclass -> the JSON object `charlm.checkpoints.files.save` stores) and one
reader (`read`: a checkpoint's JSON object -> the dataclass).

    meta = LanguageModelMetadata(task="lm", model=record(config), vocab=vocab.to_dict(), ...)
    meta = read(checkpoint.read_metadata(path))      # LanguageModelMetadata or PairModelMetadata
    meta.tokens, meta.training, meta.parent          # fields, never string keys

The JSON object `write` makes is the one charlm has always written, key for key and in the same
order (a checkpoint's bytes do not change): the fields in the order `Metadata` declares them, the
task's vocab(s) after "model"; a field that is None is left out. A field is declared once, in
`Metadata` (or a task's class): its name is its JSON key, its type the JSON type `read` takes.

Metadata is data, anyone's: `read` never fails. A field of the wrong JSON type reads as None (as
missing), and the value as it was is kept, with any key this charlm does not know, in `extra`:
written back by `write` as it was read, and shown by `charlm info` as it is. What a loader needs
(a model config, a vocab, the text settings) is checked by `charlm.checkpoints.files` when it loads, in
the words it always used. The model config itself is its architecture's dataclass
(`charlm.models.registry`); here it is the dict `record(config)` made of it.

Standard library only; nothing here knows about tensors, files or the CLI.
"""

from __future__ import annotations

import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any, ClassVar, get_args, get_origin, get_type_hints


@dataclass(eq=False)
class Metadata(Mapping):
    """What a checkpoint of any task records. A run's metadata has no `kind`, `train` or
    `training` yet: the trainer adds them to each file it writes (and a resume file its
    `corpus_file` and `resume` state, see `charlm.training.resume`).

    It also reads as the JSON object `write` makes of it (`meta["tokens"]`, `dict(meta)`), for
    code written before the fields; new code reads the fields."""

    format_version: int | None = None  # `charlm.checkpoints.files.save` writes its own where None
    task: str | None = None  # "lm" or "translate"
    architecture: str | None = None  # its registry name; None for the recurrent language models
    model: dict[str, Any] | None = None  # the model config, `record(config)`
    tokens: str | None = None  # "char" or "word"
    preprocess: str | None = None  # "none" or "d2l"
    corpus: str | None = None  # the corpus's name
    corpus_files: list[dict[str, Any]] | None = None  # of a corpus of several files: each one's name, size, SHA-256
    corpus_sha256: str | None = None  # of a corpus of one file (text or pairs): its SHA-256 (from stop 21 on)
    parent: dict[str, str] | None = None  # a fine-tune's: the parent checkpoint's path and SHA-256
    kind: str | None = None  # "model" or "resume"; None: a run's metadata, not yet a file's
    train: dict[str, Any] | None = None  # the training settings, `record(TrainConfig)`
    training: dict[str, Any] | None = None  # steps, epochs, tokens, the best loss and its step
    corpus_file: dict[str, Any] | None = None  # a resume file's one corpus file: name, size, SHA-256
    resume: dict[str, Any] | None = None  # a resume file's run state (`charlm.training.resume`)
    extra: dict[str, Any] = field(default_factory=dict)  # keys unknown here, or of the wrong type: kept as read

    # The task's vocab fields, in the order they are written, each with its model config's size field.
    VOCABS: ClassVar[dict[str, str]] = {}

    @property
    def file_kind(self) -> Any:
        """The kind of file it says it is, as read ("model" where it says none)."""
        return self.get("kind", "model")

    def damaged(self, key: str) -> bool:
        """Whether the file holds a value for the field `key` of a type it cannot have."""
        return key in json_types(type(self)) and key in self.extra

    def __eq__(self, other: object) -> bool:  # as the JSON objects they write: a Metadata equals its dict
        return isinstance(other, Mapping) and write(self) == dict(other)

    def __getitem__(self, key: str) -> Any:
        return write(self)[key]

    def __iter__(self) -> Iterator[str]:
        return iter(write(self))

    def __len__(self) -> int:
        return len(write(self))


@dataclass(eq=False)
class LanguageModelMetadata(Metadata):
    """A language model's metadata: its one vocab, `Vocab.to_dict()`."""

    vocab: dict[str, Any] | None = None

    VOCABS = {"vocab": "vocab_size"}


@dataclass(eq=False)
class PairModelMetadata(Metadata):
    """A pair model's (seq2seq, tagger): a vocab for the source side and one for the target side."""

    source_vocab: dict[str, Any] | None = None
    target_vocab: dict[str, Any] | None = None

    VOCABS = {"source_vocab": "source_vocab_size", "target_vocab": "target_vocab_size"}


@cache
def json_types(kind: type[Metadata]) -> dict[str, type]:
    """{field: the JSON type of its value} of a metadata class, in the order its JSON object has
    them: `Metadata`'s fields as declared, the task's vocabs after "model"."""
    hints = get_type_hints(kind)
    declared = [item.name for item in fields(kind) if item.name != "extra"]
    shared = [name for name in declared if name not in kind.VOCABS]
    at = shared.index("model") + 1
    return {name: _json_type(hints[name]) for name in (*shared[:at], *kind.VOCABS, *shared[at:])}


def _json_type(hint: Any) -> type:
    """`dict[str, Any] | None` -> dict."""
    if isinstance(hint, types.UnionType):
        hint = next(arg for arg in get_args(hint) if arg is not type(None))
    return get_origin(hint) or hint


def write(meta: Metadata) -> dict[str, Any]:
    """The JSON object a checkpoint stores for `meta`: its fields that are not None, in the order
    charlm has always written them, then what `extra` kept, as it was read."""
    written = {key: value for key in json_types(type(meta)) if (value := getattr(meta, key)) is not None}
    return {**written, **{key: value for key, value in meta.extra.items() if key not in written}}


def read(header: Mapping[str, Any] | Metadata) -> LanguageModelMetadata | PairModelMetadata:
    """The metadata of a checkpoint's JSON object: a pair model's where its task is "translate", a
    language model's otherwise. A value of the wrong type reads as None and is kept in `extra`
    with the keys this charlm does not know (see the module docstring); `write(read(x)) == x`."""
    if isinstance(header, Metadata):
        return header  # type: ignore[return-value]
    kind = PairModelMetadata if header.get("task") == "translate" else LanguageModelMetadata
    known = json_types(kind)
    values, extra = {}, {}
    for key, value in header.items():
        expected = known.get(key)
        if expected is not None and isinstance(value, expected) and not isinstance(value, bool):  # bool: not an int
            values[key] = value
        else:
            extra[key] = value
    return kind(**values, extra=extra)



def describe(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What `charlm info` (and the server's model list) says of a checkpoint, as plain values:
    task, kind, architecture, model config, tokens, preprocess, vocab sizes, corpus (and its number
    of files), the training summary and the parent run. Names are shown as the file has them,
    whatever their type; a dict or list of the wrong type reads as missing (an empty dict, 0 tokens
    in a vocab), never as an error."""
    meta = read(meta)
    return {
        "task": meta.get("task"), "kind": meta.file_kind, "format_version": meta.get("format_version"),
        "architecture": meta.get("architecture"), "model": meta.model or {},
        "tokens": meta.get("tokens"), "preprocess": meta.get("preprocess"),
        "vocab_sizes": {size: len(itos) if isinstance(itos := (getattr(meta, key) or {}).get("itos"), list) else 0
                        for key, size in meta.VOCABS.items()},
        "corpus": meta.get("corpus"), "corpus_files": len(meta.corpus_files) if meta.corpus_files is not None else None,
        "training": meta.training or {}, "parent": meta.parent,
    }
