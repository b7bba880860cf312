"""Runs: a training run assembled from a corpus file and the user's settings, for each task: the
data and its split, the batches, the model (its initial weights seeded) and the metadata its
checkpoint carries.

    run = language_model_run(corpus, data, train_config, "lstm", model_settings)   # any text
    run = translation_run(corpus, data, train_config, "seq2seq", model_settings)   # a pair file
    Trainer(run.model, run.train_batches, run.val_batches, train_config, out, run.meta).run()

`data` is a `DataConfig`, the architecture a name in `charlm.registry`, and `model_settings` the
values for its config's fields by name (sizes, dropout, a pair model's cell; the `charlm train`
flags). The CLI turns flags into these and prints what a run says; nothing here knows about
click, and the loop itself is the trainer's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from torch import nn

from charlm import registry
from charlm.data import (
    BatchIterator, DataConfig, PairBatches, encode_pairs, fit_batch_size, lm_eval_batches, load_corpus, pair_eval_batches,
)
from charlm.errors import CharlmError, CorpusError
from charlm.pairs import PAD_INDEX, Pair, check_aligned, pair_vocabs, read_pairs, split_pairs
from charlm.runtime import World, seed_everything
from charlm.recipe import TrainConfig



def model_config(architecture: registry.Architecture, settings: dict[str, Any], **sizes: int) -> tuple[type, Any]:
    """(model class, config) of `architecture` from the settings its config has fields for, the
    values its name fixes, and the vocab `sizes`. Settings it has no field for are not its own."""
    model_class, config_class = architecture.classes()
    names = {field.name for field in fields(config_class)}
    values = {key: value for key, value in settings.items() if key in names}
    try:
        return model_class, config_class(**{**values, **architecture.fixed, **sizes})
    except ValueError as error:  # a model option click's ranges let through (nan)
        raise CharlmError(str(error)) from None


@dataclass
class Run:
    model: nn.Module
    meta: dict[str, Any]  # what the checkpoints carry besides the weights
    train_batches: Any  # a batch source with the trainer's interface
    val_batches: Callable | None
    description: str  # one line: the data and the model
    held_out: list[Pair] = field(default_factory=list)  # pairs only: to score translations on
    skipped: list[int] = field(default_factory=list)  # pairs only: malformed lines left out
    train_config: TrainConfig | None = None  # the settings as changed to fit the data, if they were
    notes: list[str] = field(default_factory=list)  # what the user should know about the run


def language_model_run(
    corpus: str | os.PathLike, data_config: DataConfig, train_config: TrainConfig, architecture: str,
    model_settings: dict[str, Any], world: World = World(),
) -> Run:
    """A language model of a text: the last `val_fraction` of it held out. A training split too
    short for the batch size trains on fewer rows (said in a note)."""
    with world.main_first():  # rank 0 fills the token cache, then the others read it
        data = load_corpus(corpus, data_config.tokens, data_config.preprocess, data_config.encoding,
                           data_config.min_freq, data_config.max_vocab, cache_dir=data_config.cache_dir)
    train_ids, val_ids = data.split(train_config.val_fraction)
    notes = []
    batch_size = fit_batch_size(len(train_ids), train_config.batch_size, train_config.seq_len)
    if batch_size < train_config.batch_size:
        notes.append(f"the training split has {len(train_ids):,} tokens, too few for batches of "
                     f"{train_config.batch_size} x {train_config.seq_len}: using --batch-size {batch_size}")
        train_config = replace(train_config, batch_size=batch_size)
    entry = registry.get("lm", architecture)
    model_class, config = model_config(entry, model_settings, vocab_size=len(data.vocab))
    seed_everything(train_config.seed)  # the initial weights are part of what --seed fixes
    model = model_class(config)
    meta = {"task": "lm", **registry.metadata(entry), "model": asdict(config), "vocab": data.vocab.to_dict(),
            "tokens": data_config.tokens, "preprocess": data_config.preprocess, "corpus": os.path.basename(corpus)}
    shown = model.describe() if hasattr(model, "describe") else entry.name
    description = (f"{corpus}: {len(data.ids):,} tokens{' (cached)' if data.cached else ''}, vocab {len(data.vocab)}; "
                   f"{shown}, {model.num_parameters():,} parameters")
    train_batches = BatchIterator(train_ids, train_config.batch_size, train_config.seq_len, train_config.iterator,
                                  train_config.seed)
    val_batches = lm_eval_batches(val_ids, train_config.batch_size, train_config.seq_len, len(data.vocab)) if len(val_ids) >= 2 else None
    return Run(model, meta, train_batches, val_batches, description, train_config=train_config, notes=notes)


def translation_run(
    corpus: str | os.PathLike, data_config: DataConfig, train_config: TrainConfig, architecture: str,
    model_settings: dict[str, Any], detected: bool = False,
) -> Run:
    """A seq2seq model or tagger (`architecture`) of a pair file, with a seeded random part
    of its sources held out. `detected`: the file was taken for pairs by its shape, which an error
    reading it then says."""
    try:
        pairs, skipped = read_pairs(corpus, data_config.encoding, data_config.skip_bad_lines)
    except CorpusError as error:
        if not detected:
            raise
        raise CorpusError(f"{error} (read as pairs since most lines hold a tab; --task lm trains on it as text)") from None
    entry = registry.get("translate", architecture)
    model_settings = dict(model_settings)
    attention = model_settings.pop("attention", None)  # None: not asked, on for seq2seq
    if entry.name == "tagger":
        check_aligned(pairs, corpus)
        if attention:
            raise CharlmError("--attention is for the seq2seq model; the tagger has none")
    else:
        model_settings["attention"] = attention is not False
    train_pairs, held_out = split_pairs(pairs, train_config.val_fraction, train_config.seed)
    source_vocab, target_vocab = pair_vocabs(pairs, data_config.min_freq, data_config.max_vocab)
    model_class, config = model_config(entry, model_settings, vocab_size=len(source_vocab),
                                       target_vocab_size=len(target_vocab))
    seed_everything(train_config.seed)  # the initial weights follow --seed
    model = model_class(config)
    meta = {"task": "translate", **registry.metadata(entry), "model": asdict(config),
            "source_vocab": source_vocab.to_dict(), "target_vocab": target_vocab.to_dict(), "tokens": "char",
            "preprocess": "none", "corpus": os.path.basename(corpus)}
    attention = " with attention" if getattr(config, "attention", False) else ""
    description = (f"{corpus}: {len(train_pairs):,} pairs to train on, {len(held_out):,} held out; "
                   f"{len(source_vocab)} source and {len(target_vocab)} target tokens; {entry.name} {config.cell} "
                   f"{config.num_layers}x{config.hidden_size}{attention}, {model.num_parameters():,} parameters")
    train_batches = PairBatches(encode_pairs(train_pairs, source_vocab, target_vocab), train_config.batch_size,
                                PAD_INDEX, train_config.seed)
    val_batches = pair_eval_batches(encode_pairs(held_out, source_vocab, target_vocab), PAD_INDEX) if held_out else None
    return Run(model, meta, train_batches, val_batches, description, held_out, skipped)
