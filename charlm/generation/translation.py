"""Translator: strings in, strings out, through a trained pair model (`charlm.models.seq2seq`).

`greedy` and `beam_search` decode with the models' `encode` / `decode_step` contract and never ask
which model they hold; `translate` turns text into ids (unknown characters under the generator's
policy, `charlm.generation.sampling.encode_prefix`), batches it and turns ids back into text. Scoring translations is `charlm.evaluation`'s.

Decoding never produces <unk>, <pad> or <bos>, and stops at <eos> or after `max_length`
characters (by default twice the source's length plus 10). It knows nothing about files or the CLI.
"""

from __future__ import annotations

import math

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from charlm.data.batches import pad
from charlm.errors import CharlmError
from charlm.generation.sampling import encode_prefix
from charlm.models.seq2seq import teacher_forcing
from charlm.text.pairs import BOS_INDEX, EOS_INDEX, PAD_INDEX, UNK_INDEX
from charlm.text.tokens import Vocab

BANNED = (UNK_INDEX, PAD_INDEX, BOS_INDEX)


def default_max_length(source_length: int) -> int:
    return 2 * source_length + 10


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """logits (N, V) -> log-probabilities (N, V) over the characters a translation may hold."""
    logits = logits.float().clone()
    logits[:, list(BANNED)] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


@torch.inference_mode()
def greedy(model: nn.Module, source: torch.Tensor, max_length: int | None = None) -> list[list[int]]:
    """The likeliest next character at every step, for a batch of sources (B, S) at once.
    Returns each row's output ids, without <eos>."""
    lengths = (source != PAD_INDEX).sum(1).tolist()
    limits = [max_length or default_max_length(length) for length in lengths]
    limit = torch.tensor(limits, device=source.device)  # (B,)
    state = model.encode(source)
    previous = torch.full((source.shape[0],), BOS_INDEX, device=source.device)
    made, done = [], torch.zeros_like(previous, dtype=torch.bool)
    for step in range(max(limits)):
        logits, state = model.decode_step(previous, state)
        previous = log_probs(logits).argmax(dim=-1)  # (B,)
        made.append(previous)
        done |= (previous == EOS_INDEX) | (limit <= step + 1)
        if bool(done.all()):
            break
    rows = torch.stack(made, 1).tolist() if made else [[] for _ in lengths]
    return [until_eos(row)[:row_limit] for row, row_limit in zip(rows, limits)]


def until_eos(ids: list[int]) -> list[int]:
    return ids[: ids.index(EOS_INDEX)] if EOS_INDEX in ids else ids


@dataclass
class Hypothesis:
    ids: list[int]  # the output characters, without <eos>
    score: float  # total log-probability, that of <eos> included when it ended with one
    ended: bool  # with <eos>, or cut at the maximum length

    def normalised(self, length_penalty: float) -> float:
        """What ranks as score / length ** length_penalty: 0 ranks by total log-probability (which
        favours short outputs), 1 by the mean log-probability per character. Taken in the log
        domain, -log(-score) + length_penalty * log(length) (a score is at most 0), so that no
        penalty, however large, overflows."""
        if self.score >= 0:
            return math.inf
        return length_penalty * math.log(max(len(self.ids) + self.ended, 1)) - math.log(-self.score)


@torch.inference_mode()
def beam_search(
    model: nn.Module, source: torch.Tensor, beam_size: int, max_length: int | None = None,
    length_penalty: float = 0.0,
) -> Hypothesis:
    """The best translation of one source (1, S) found keeping the `beam_size` likeliest unfinished
    outputs at each step.

    At each step every kept output is extended by every character: an extension by <eos> among
    the `beam_size` best candidates is finished; the `beam_size` best others are kept. The search
    stops when nothing is kept, at `max_length` (the kept outputs count as finished there), or
    early: with `length_penalty` 0, once the best finished output scores at least the best kept
    one (extending never raises a score, so nothing kept can win); otherwise once `beam_size`
    outputs have finished. With `beam_size` at least the number of possible outputs the search
    is exhaustive, and `beam_size` 1 is greedy decoding."""
    if beam_size < 1:
        raise CharlmError(f"--beam must be at least 1, got {beam_size}")
    max_length = max_length or default_max_length(int((source != PAD_INDEX).sum()))
    state = model.encode(source)
    kept, kept_scores = [[]], torch.zeros(1, device=source.device)  # outputs so far, (K,) their scores
    previous = torch.full((1,), BOS_INDEX, device=source.device)
    finished: list[Hypothesis] = []
    for _ in range(max_length):
        logits, state = model.decode_step(previous, state)
        candidates = kept_scores[:, None] + log_probs(logits)  # (K, V)
        vocab_size = candidates.shape[1]
        ranked_scores, ranked = candidates.flatten().sort(descending=True)
        extended = []  # (row, token, score) of the outputs kept for the next step, best first
        for rank, (index, score) in enumerate(zip(ranked.tolist(), ranked_scores.tolist())):
            if score == float("-inf") or len(extended) == beam_size:
                break
            row, token = divmod(index, vocab_size)
            if token != EOS_INDEX:
                extended.append((row, token, score))
            elif rank < beam_size:
                finished.append(Hypothesis(kept[row], score, True))
        if not extended:
            break
        rows, tokens, new_scores = (list(column) for column in zip(*extended))
        kept = [kept[row] + [token] for row, token in zip(rows, tokens)]
        kept_scores = torch.tensor(new_scores, device=source.device)
        state = state.select(torch.tensor(rows, device=source.device))
        previous = torch.tensor(tokens, device=source.device)
        best_finished = max((hypothesis.score for hypothesis in finished), default=float("-inf"))
        if (best_finished >= new_scores[0]) if length_penalty == 0 else len(finished) >= beam_size:
            break
    else:
        finished += [Hypothesis(ids, score, False) for ids, score in zip(kept, kept_scores.tolist())]
    return max(finished, key=lambda hypothesis: hypothesis.normalised(length_penalty))


def translate(
    model: nn.Module, texts: Sequence[str], source_vocab: Vocab, target_vocab: Vocab, beam_size: int = 1,
    max_length: int | None = None, length_penalty: float = 0.0, unknown: str = "error", batch_size: int = 64,
) -> list[str]:
    """One translation per text. Greedy decoding runs in batches of texts of similar lengths; beam
    search one text at a time. An empty text (or one left empty by `unknown="skip"`) gives ""."""
    model.eval()
    device = next(model.parameters()).device
    encoded = [encode_prefix(text, source_vocab, unknown=unknown, what="input") for text in texts]
    order = sorted((index for index, ids in enumerate(encoded) if ids), key=lambda index: len(encoded[index]))
    outputs = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        source = pad([encoded[index] for index in batch], PAD_INDEX).to(device)
        if beam_size == 1:
            results = greedy(model, source, max_length)
        else:
            results = [beam_search(model, source[row : row + 1], beam_size, max_length, length_penalty).ids
                       for row in range(len(batch))]
        for index, ids in zip(batch, results):
            outputs[index] = "".join(target_vocab.decode(ids))
    return outputs


@torch.inference_mode()
def attention_weights(model: nn.Module, source_ids: list[int], output_ids: list[int]) -> torch.Tensor:
    """How much each output character (and the final <eos>) attended to each source character:
    (len(output_ids) + 1, len(source_ids)), each row summing to 1. The output is fed back with
    teacher forcing, so any decoding (greedy, beam) can be shown."""
    if not getattr(model.config, "attention", False):
        raise CharlmError("this model has no attention to plot; train a seq2seq model with --attention")
    device = next(model.parameters()).device
    source = torch.tensor([source_ids], device=device)
    inputs, _ = teacher_forcing(torch.tensor([output_ids + [PAD_INDEX]], device=device))
    _, weights = model(source, inputs[:, :-1])  # (1, T + 1, S)
    return weights[0].cpu()
