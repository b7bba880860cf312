"""Evaluation: the loss of a model on batches and what it means (perplexity, bits per token), and
the scores of a trained model on a file, as `charlm eval` reports them.

`evaluate` serves the trainer's evaluations and `charlm eval` alike: any model that keeps the
`batch_loss(batch, state)` contract, its state carried from batch to batch whatever it holds; it
knows nothing about files or how batches are made. `evaluate_text` and `evaluate_translator` do:
they read a file with a model's vocab and return a report (a dict); `evaluate_pairs` scores a pair
model's translations (`charlm.evaluation.scores`). Showing a report is the CLI's.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from charlm.checkpoints import loading as checkpoint
from charlm.checkpoints.metadata import Metadata
from charlm.data.batches import lm_eval_batches
from charlm.data.loading import load_corpus
from charlm.errors import CheckpointError, MissingExtra, UsageError
from charlm.evaluation import scores
from charlm.generation.translation import translate
from charlm.presets import PAIRS
from charlm.runtime.device import autocast, cpu_threads, pick_device
from charlm.text.corpus import FoundCorpus, file_digest, file_name
from charlm.text.pairs import Pair, split_pairs
from charlm.text.tokens import Vocab

PROGRESS_AFTER = 3.0  # seconds: an evaluation that takes longer shows a bar


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]], device: torch.device | None = None,
    precision: str = "fp32", shown: int | None = None,
) -> float:
    """Mean loss in nats per predicted token over `batches`, carrying the state from batch to
    batch (a batch with fewer rows continues the last rows). Uses no random numbers, so evaluating
    never changes a training run's trajectory. With `shown` (the tokens the batches predict), a
    bar on a terminal's stderr once it has taken PROGRESS_AFTER seconds: a long evaluation shows
    progress."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    bar = None if shown is None or not on_terminal() else tqdm(
        total=shown, unit="tok", unit_scale=True, delay=PROGRESS_AFTER, leave=False, file=sys.stderr, desc="scoring")
    with autocast(device, precision):
        for batch in batches:
            rows = batch[0].shape[0]
            if state is not None and state.batch_size > rows:
                state = state.rows(slice(-rows, None))
            loss, predicted, state = model.batch_loss(tuple(part.to(device) for part in batch), state)
            total, count = total + float(loss), count + int(predicted)
            if bar is not None:
                bar.update(int(predicted))
    if bar is not None:
        bar.close()
    model.train(was_training)
    return total / max(count, 1)


def on_terminal() -> bool:
    """Whether stderr is a terminal, where a bar redraws in place (a log file would keep every frame)."""
    return sys.stderr.isatty()


def loss_report(loss: float) -> dict[str, float]:
    """Loss in nats/token, perplexity, and bits per token."""
    return {"loss": loss, "ppl": perplexity(loss), "bpc": loss / math.log(2)}


def perplexity(loss: float) -> float:
    """exp(loss), bounded so that a diverged loss prints as a huge number, not an overflow."""
    return math.exp(min(loss, 700.0))


def evaluate_text(
    model: nn.Module, meta: Metadata, vocab: Vocab, path: str | os.PathLike | FoundCorpus,
    encoding: str = "utf-8", held_out: str | None = None, resumed_file: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """How well a language model (with its checkpoint's `meta` and `vocab`) predicts the text at
    `path` (or of the files `charlm.text.corpus.find_corpus` found), read as its corpus was: the tokens
    predicted, how many of them the vocab lacks (they count as `<unk>`), and `loss_report`. With
    `held_out` (the checkpoint's path) only the part its run held out, split as the run split it,
    after checking that this is the run's corpus (`resumed_file`: what the run's resume file records
    of a one-file corpus, if it is there). Writes no token cache."""
    data = load_corpus(path, meta.tokens, meta.preprocess, encoding, vocab=vocab, cache_dir=None)
    shown = path.shown if isinstance(path, FoundCorpus) else os.fspath(path)
    ids = data.ids if held_out is None else data.split(_recorded_split(meta, held_out)[0])[1]
    if held_out is not None:
        _check_its_corpus(meta, held_out, path, data.sha256, shown, resumed_file)
    if len(ids) < 2:
        raise UsageError(f"{shown} has fewer than 2 tokens{' held out' if held_out else ''}; nothing to predict")
    unknown = int((ids == vocab.unk_index).sum())
    batches = lm_eval_batches(ids, vocab_size=len(vocab))  # logits within a budget, whatever the vocab
    return {"tokens": len(ids) - 1, "unknown_tokens": unknown,
            **loss_report(evaluate(model, batches(), shown=len(ids) - 1))}


def _recorded_split(meta: Metadata, path: str) -> tuple[float, int]:
    """The --val-fraction and --seed the run at `path` split its data with (the defaults where it
    recorded none): `--held-out` splits again with them."""
    train = None if meta.damaged("train") else meta.train or {}  # missing: the defaults; damaged: refused
    fraction, seed = (train.get("val_fraction", 0.1), train.get("seed", 0)) if train is not None else (None, None)
    if not (type(fraction) in (int, float) and 0 <= fraction < 1 and type(seed) is int):  # metadata is data
        raise CheckpointError(f"{path}: damaged training settings (val_fraction, seed) in charlm metadata; "
                              "score the whole file without --held-out")
    return fraction, seed


def _check_its_corpus(meta: Metadata, path: str, corpus: Any, sha256: str | None, shown: str,
                      kept: dict[str, Any] | None) -> None:
    """Refuse a corpus that is not the one the run at `path` was trained on: of several files, by
    their sizes and SHA-256 (the checkpoint records them); of one, by its name and its SHA-256 (the
    checkpoint's since stop 21; of an older one, where the run's resume file is beside it)."""
    several = isinstance(corpus, FoundCorpus) and not corpus.single
    recorded = meta.corpus_files
    if several or recorded is not None:
        found = sorted((file["size"], file["sha256"]) for file in corpus.identity()) if several else None
        if not recorded or found != sorted((file.get("size"), file.get("sha256")) for file in recorded):
            raise UsageError(f"{shown} is not the corpus {path} was trained on (its files' sizes and SHA-256 are "
                             "not those the checkpoint records); --held-out scores the run's own corpus")
        return
    name = file_name(corpus.roots[0] if isinstance(corpus, FoundCorpus) else corpus)
    recorded = meta.corpus_sha256 or (kept or {}).get("sha256")  # the checkpoint's, or an older run's resume file's
    if name != meta.corpus or (recorded is not None and sha256 is not None and recorded != sha256):
        how = ", as the checkpoint records it" if meta.corpus_sha256 else ", as its resume file records it" if kept else ""
        raise UsageError(f"{shown} is not the corpus {path} was trained on ({meta.corpus}{how}); --held-out scores the "
                         "run's own corpus")


def evaluate_translator(
    path: str, pairs: Sequence[Pair], device: str = "auto", held_out: bool = False, beam: int = 1,
    length_penalty: float = 0.0, max_length: int | None = None, source: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Scores of the translation checkpoint at `path` on `pairs`: `score_translator`'s."""
    model, meta, source_vocab, target_vocab = checkpoint.load_translator(path, pick_device(device))
    return score_translator(model, meta, source_vocab, target_vocab, path, pairs, held_out, beam, length_penalty,
                            max_length, source)


def score_translator(
    model: nn.Module, meta: Metadata, source_vocab: Vocab, target_vocab: Vocab, path: str, pairs: Sequence[Pair],
    held_out: bool = False, beam: int = 1, length_penalty: float = 0.0, max_length: int | None = None,
    source: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Scores of a loaded translation model (its checkpoint at `path`) on `pairs`
    (`evaluate_pairs`), or with `held_out` on the part of them its training held out (split again
    with the same fraction and seed; `source`, the pairs' file, must be the run's)."""
    if held_out and source is not None and (file_name(source) != meta.corpus or (
            meta.corpus_sha256 is not None and file_digest(source) != meta.corpus_sha256)):
        raise UsageError(f"{source} is not the file {path} was trained on ({meta.corpus}); --held-out scores the "
                         "pairs of the run's own file")
    if held_out:
        pairs = split_pairs(pairs, *_recorded_split(meta, path))[1]
        if not pairs:
            raise UsageError(f"{path} was trained with nothing held out of this file")
    with cpu_threads(PAIRS["threads"]):
        return evaluate_pairs(model, pairs, source_vocab, target_vocab, beam, max_length, length_penalty)


def evaluate_pairs(
    model: nn.Module, pairs: Sequence[Pair], source_vocab: Vocab, target_vocab: Vocab, beam_size: int = 1,
    max_length: int | None = None, length_penalty: float = 0.0,
) -> dict[str, Any]:
    """Translate every distinct source of `pairs` once and score it against all of its targets:
    exact match and character error rate, and corpus BLEU when the targets are sentences.
    Characters the model never saw count as <unk>."""
    references: dict[str, list[str]] = {}
    for pair in pairs:
        references.setdefault(pair.source, []).append(pair.target)
    sources, refs = list(references), list(references.values())
    hypotheses = translate(model, sources, source_vocab, target_vocab, beam_size, max_length, length_penalty, "unk")
    report: dict[str, Any] = {
        "pairs": len(pairs), "sources": len(sources),
        "unknown_characters": sum(character not in source_vocab for source in sources for character in source),
        "exact_match": scores.exact_match(hypotheses, refs),
        "cer": scores.character_error_rate(hypotheses, refs), "bleu": None,
    }
    if scores.are_sentences(refs):
        try:
            report["bleu"] = scores.corpus_bleu(hypotheses, refs)
        except MissingExtra as error:
            report["note"] = str(error)
    return report
