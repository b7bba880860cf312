"""Setting up a run: a training run assembled from a corpus and the user's settings, for each task: the data and
its split, the batches, the model (its initial weights seeded, or a trained model's) and the
metadata its checkpoint carries.

    run = language_model_run(corpus, data, train_config, "lstm", model_settings)   # any text
    run = language_model_run(corpus, data, train_config, parent=load_parent(path))  # fine-tuning
    run = translation_run(corpus, data, train_config, "seq2seq", model_settings)   # a pair file
    Trainer(run.model, run.train_batches, run.val_batches, train_config, out, run.meta).run()

`corpus` is a file, or the files `charlm.text.corpus.find_corpus` found; `data` is a `DataConfig`, the
architecture a name in `charlm.models.registry`, and `model_settings` the values for its config's fields
by name (sizes, dropout, a pair model's cell; the `charlm train` flags). The CLI turns flags into
these and prints what a run says; nothing here knows about click, and the loop itself is the
trainer's.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from charlm.checkpoints import files as checkpoint

from charlm.checkpoints import loading
from charlm.models import registry
from charlm.models.ensemble import ENSEMBLE, Ensemble
from charlm.text.corpus import FoundCorpus
from charlm.data.batches import (
    BatchIterator, PairBatches, encode_pairs, fit_batch_size, lm_eval_batches, pair_eval_batches,
)
from charlm.data.ids import unigram_loss
from charlm.data.loading import DataConfig, load_corpus
from charlm.text.corpus import file_digest, file_name
from charlm.errors import CharlmError, CheckpointError, CorpusError
from charlm.checkpoints.metadata import LanguageModelMetadata, Metadata, PairModelMetadata, read
from charlm.text.pairs import PAD_INDEX, Pair, check_aligned, pair_vocabs, read_pairs, split_pairs
from charlm.presets import LM, record
from charlm.training import recipe
from charlm.training.optimization import TrainConfig
from charlm.runtime.processes import World
from charlm.runtime.device import seed_everything
from charlm.text.tokens import Vocab
from charlm.generation.sampling import sample_text

SAMPLE_TOKENS = {"char": 60, "word": 12}  # a sample shown at each evaluation: about a line of text
SAMPLE_CONTEXT = 64  # tokens of the training text the sample continues (not shown): a warmed-up state
# Held-out tokens an evaluation as a text model trains scores, at most (about): a part of every
# stretch of a long split, so that evaluating costs a bounded share of the run on any corpus size
# (The Time Machine's 17,898 are all scored). The kept model is scored on the whole split at the end.
EVAL_POSITIONS = 32 * 1024



def model_config(architecture: registry.Architecture, settings: dict[str, Any], **sizes: int) -> tuple[type, Any]:
    """(model class, config) of `architecture` from the settings its config has fields for, the
    values its name fixes, and the vocab `sizes`. Settings it has no field for are not its own."""
    model_class, config_class = architecture.classes()
    names = {field.name for field in fields(config_class)}
    values = {key: value for key, value in settings.items() if key in names and value is not None}  # None: its default
    try:
        return model_class, config_class(**{**values, **architecture.fixed, **sizes})
    except ValueError as error:  # a model option click's ranges let through (nan)
        raise CharlmError(str(error)) from None


@dataclass
class Run:
    model: nn.Module
    meta: Metadata  # what the checkpoints carry besides the weights
    train_batches: Any  # a batch source with the trainer's interface
    val_batches: Callable | None
    description: str  # one line: the data and the model
    held_out: list[Pair] = field(default_factory=list)  # pairs only: to score translations on
    skipped: list[int] = field(default_factory=list)  # pairs only: malformed lines left out
    train_config: TrainConfig | None = None  # the settings as changed to fit the data, if they were
    notes: list[str] = field(default_factory=list)  # what the user should know about the run
    resume_meta: dict[str, Any] = field(default_factory=dict)  # what the resume file alone records
    sample: Callable[[nn.Module], str] | None = None  # text only: what the model writes now, shown as it trains
    # text only: the whole held-out split, where the evaluations as it trains see EVAL_POSITIONS of it
    report: Callable | None = None
    held_out_tokens: int = 0
    recipe: str | None = None  # text only: the settings `charlm.training.recipe` chose, in a line
    by_passes: bool = False  # text only: its dropout is the recipe's for the passes a --max-time plan makes
    unigram_loss: float | None = None  # text only: the held-out loss of the training split's character frequencies


@dataclass
class Parent:
    """A trained language model that a run starts from (`--init-from`): its architecture, config,
    vocab, text settings and weights, and what the new checkpoint records of it."""

    path: str
    architecture: registry.Architecture
    meta: Metadata
    vocab: Vocab
    weights: dict[str, torch.Tensor]
    sha256: str

    def record(self) -> dict[str, str]:
        return {"path": os.path.abspath(self.path), "sha256": self.sha256}


def load_parent(path: str | os.PathLike) -> Parent:
    """The language-model checkpoint at `path`, checked whole, to fine-tune. A translation
    checkpoint is refused: a pair model is trained on its pairs from scratch."""
    path = os.fspath(path)
    if read(checkpoint.read_metadata(path)).task == "translate":
        raise CheckpointError(f"{path} is a translation checkpoint; --init-from fine-tunes a language model "
                              "(train a pair model on the new pairs without --init-from)")
    model, meta, vocab = loading.load_model(path, "lm")
    return Parent(path, registry.get("lm", registry.name_of(meta)), meta, vocab, model.state_dict(), file_digest(path))


def language_model_run(
    corpus: str | os.PathLike | FoundCorpus, data_config: DataConfig, train_config: TrainConfig,
    architecture: str | None = None, model_settings: dict[str, Any] | None = None, world: World = World(),
    parent: Parent | None = None, given: set[str] | frozenset[str] | None = None,
) -> Run:
    """A language model of a text, held out as `Corpus.split` says. A training split too short for
    the batch size trains on fewer rows (said in a note). With a `parent` the model is the
    parent's, its weights, architecture, vocab and text settings (`model_settings` may change only
    what leaves the weights as they are, such as dropout); the tokens the new text has and its
    vocab lacks follow `data_config.unknown` (with "extend", their rows start as this seed's).
    With `given` (the settings the user set), those left out follow `charlm.training.recipe`, fitted
    to the number of training tokens and --max-time (said in a note); a fine-tuned model keeps its own."""
    model_settings = dict(model_settings or {})
    vocab = None
    if parent is not None:
        data_config = replace(data_config, tokens=parent.meta.tokens, preprocess=parent.meta.preprocess)
        architecture, vocab = parent.architecture.name, parent.vocab
        model_settings = {**parent.meta.model, **model_settings}
    with world.main_first():  # rank 0 fills the token cache, then the others read it
        data = load_corpus(corpus, data_config.tokens, data_config.preprocess, data_config.encoding,
                           data_config.min_freq, data_config.max_vocab, vocab=vocab, cache_dir=data_config.cache_dir,
                           unknown=data_config.unknown if parent is not None else "unk")
    train_ids, val_ids = data.split(train_config.val_fraction)
    notes = [line] if isinstance(corpus, FoundCorpus) and (line := corpus.summary()) else []
    architecture, chose, by_passes, paced = architecture or LM["cell"], None, False, False
    if given is not None and parent is None:
        chosen = recipe.choose(len(train_ids), train_config.max_time, given, architecture,
                               model_settings.get("embedding_size"), train_config.epochs)
        train_config = replace(train_config, **{name: value for name, value in chosen.settings.items()
                                                if name in TrainConfig.__dataclass_fields__})
        model_settings.update(chosen.settings)
        chose, by_passes, paced = chosen.line, chosen.by_passes, chosen.by_pace
    try:
        batch_size = fit_batch_size(len(train_ids), train_config.batch_size, train_config.seq_len)
    except CorpusError:
        if train_config.val_fraction < 0.5 or len(data.ids) < 2 * train_config.seq_len + 2:
            raise
        raise CorpusError(f"--val-fraction {train_config.val_fraction} holds out all but {len(train_ids):,} of the "
                          f"{len(data.ids):,} tokens, too few to train on; lower --val-fraction") from None
    if batch_size < train_config.batch_size:
        notes.append(f"the training split has {len(train_ids):,} tokens, too few for batches of "
                     f"{train_config.batch_size} x {train_config.seq_len}: using --batch-size {batch_size}")
        train_config = replace(train_config, batch_size=batch_size)
    entry = registry.get("lm", architecture)
    model_class, config = model_config(entry, model_settings, vocab_size=len(data.vocab))
    train_batches = BatchIterator(train_ids, train_config.batch_size, train_config.seq_len, train_config.iterator,
                                  train_config.seed)
    device = world.device(train_config.device) if paced and world.size == 1 else None
    if device is not None and device.type == "cpu":  # the pace is measured on a CPU, alone, where the rule was
        per_epoch = max(len(train_batches), 1)  # --max-steps and --epochs may end the run before the time does
        steps = min(one_model_steps(model_class, config, train_batches, train_config, data_config, device),
                    train_config.max_steps or math.inf, train_config.epochs * per_epoch)
        passes = steps / per_epoch
        model_settings.update(recipe.by_pace(passes, steps))
        notes.append(recipe.pace_line(passes, steps, train_config.max_time))
    elif paced:
        notes.append(recipe.UNPACED)
    seed_everything(train_config.seed)  # the initial weights are part of what --seed fixes
    members = model_settings.get(ENSEMBLE) or 1
    model = Ensemble.of(model_class, config, members)
    if parent is not None:
        start_from(model, parent.weights)
        if len(data.vocab) > len(parent.vocab):
            notes.append(f"added {len(data.vocab) - len(parent.vocab):,} tokens to the vocab of {parent.path}: "
                         f"{', '.join(repr(token) for token in data.vocab.itos[len(parent.vocab):][:10])}")
    recorded = record(config) | ({ENSEMBLE: members} if members > 1 else {})  # the count only where it is not 1
    meta = LanguageModelMetadata(task="lm", **registry.metadata(entry), model=recorded,
                                 vocab=data.vocab.to_dict(), tokens=data_config.tokens,
                                 preprocess=data_config.preprocess, **corpus_record(corpus, data.sha256),
                                 parent=parent.record() if parent is not None else None)
    shown = model.describe() or entry.name
    name = corpus if not isinstance(corpus, FoundCorpus) else corpus.shown if corpus.single \
        else f"{corpus.shown} ({len(corpus.files):,} files)"
    description = (f"{name}: {len(data.ids):,} tokens{' (cached)' if data.cached else ''}, vocab {len(data.vocab)}; "
                   f"{shown}, {model.num_parameters():,} parameters"
                   + (f", from {parent.path}" if parent is not None else ""))
    val_batches = report = unigram = None
    if len(val_ids) >= 2:
        unigram = unigram_loss(train_ids, val_ids, len(data.vocab))  # evaluations as it trains see a bounded part of a long held-out split; the report all
        scored = functools.partial(lm_eval_batches, val_ids, train_config.batch_size, train_config.seq_len,
                                   len(data.vocab))
        long = len(val_ids) > 2 * EVAL_POSITIONS
        val_batches, report = (scored(EVAL_POSITIONS), scored()) if long else (scored(), None)
    resume_meta = single_file_record(corpus.roots[0] if isinstance(corpus, FoundCorpus) else corpus, data.sha256) \
        if data.sha256 is not None else {}
    sample = functools.partial(sample_text, vocab=data.vocab, tokens=data_config.tokens, seed=train_config.seed,
                               length=SAMPLE_TOKENS[data_config.tokens],
                               context=train_ids[:SAMPLE_CONTEXT].tolist())  # the text's start, as it trains
    return Run(model, meta, train_batches, val_batches, description, train_config=train_config, notes=notes,
               resume_meta=resume_meta, sample=sample, report=report, held_out_tokens=len(val_ids), recipe=chose,
               unigram_loss=unigram, by_passes=by_passes)


def one_model_steps(model_class: type, config: Any, batches: BatchIterator, train_config: TrainConfig,
                    data_config: DataConfig, device: torch.device) -> float:
    """The steps one model of `config` makes in --max-time at the pace of its steps on the run's
    first batch here now, with the run's optimizer (`charlm.training.pace`); its weights drawn,
    trained and dropped without touching the random state, its measured setup kept where the run's
    would be."""
    from charlm.runtime.measured import Decisions
    from charlm.training.optimization import make_optimizer
    from charlm.training.pace import steps_in

    first = next(iter(batches.batches(0)), None)
    if first is None:  # no whole batch: no pace to measure, and nothing to over-fit
        return 0.0
    with torch.random.fork_rng(devices=[]):
        model = model_class(config).to(device)
    batch = tuple(part.to(device) for part in first)
    return steps_in(train_config.max_time, model, batch, record(config), Decisions(data_config.cache_dir),
                    train_config.precision, make_optimizer(model, train_config))


def corpus_record(corpus: str | os.PathLike | FoundCorpus, sha256: str | None = None) -> dict[str, Any]:
    """What a checkpoint records of its corpus: the name of a file and its SHA-256 (`sha256`, the
    hash its reading took), which `--held-out` compares; of several files, the names of the paths
    given and each file's name, size and SHA-256, which `--resume` and `--held-out` compare."""
    if isinstance(corpus, FoundCorpus) and not corpus.single:
        return {"corpus": corpus.name, "corpus_files": corpus.identity()}
    return {"corpus": file_name(corpus.roots[0] if isinstance(corpus, FoundCorpus) else corpus),
            "corpus_sha256": sha256}


def single_file_record(path: str | os.PathLike, sha256: str) -> dict[str, Any]:
    """What the resume file of a one-file run records of it ("corpus_file": name, size, SHA-256),
    for `--resume` to notice an edit that leaves the vocab as it was; `sha256` is the hash its
    reading already took."""
    return {"corpus_file": {"name": file_name(path), "size": os.path.getsize(path), "sha256": sha256}}


@torch.no_grad()
def start_from(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy a parent's `weights` into `model`, a model of the same architecture whose vocab may be
    larger. A tensor that has grown (an embedding's or the head's rows, a one-hot input's columns
    of W_ih) takes the parent's values in its leading part, bit for bit, and keeps its own seeded
    initial values for the new tokens."""
    for name, tensor in model.state_dict().items():  # views of the parameters: copied into in place
        old = weights[name]
        tensor[tuple(slice(0, size) for size in old.shape)].copy_(old)


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
    meta = PairModelMetadata(task="translate", **registry.metadata(entry), model=record(config),
                             source_vocab=source_vocab.to_dict(), target_vocab=target_vocab.to_dict(), tokens="char",
                             preprocess="none", corpus=file_name(corpus), corpus_sha256=file_digest(corpus))
    attention = " with attention" if getattr(config, "attention", False) else ""
    description = (f"{corpus}: {len(train_pairs):,} pairs to train on, {len(held_out):,} held out; "
                   f"{len(source_vocab)} source and {len(target_vocab)} target tokens; {entry.name} {config.cell} "
                   f"{config.num_layers}x{config.hidden_size}{attention}, {model.num_parameters():,} parameters")
    train_batches = PairBatches(encode_pairs(train_pairs, source_vocab, target_vocab), train_config.batch_size,
                                PAD_INDEX, train_config.seed)
    val_batches = pair_eval_batches(encode_pairs(held_out, source_vocab, target_vocab), PAD_INDEX) if held_out else None
    return Run(model, meta, train_batches, val_batches, description, held_out, skipped)
