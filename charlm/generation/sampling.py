"""Sampling text from a trained language model, as a `charlm.generation.request.Request` asks.

`generate` warms the model up on the whole prefix in one pass, then draws one token per step with
greedy, temperature, top-k, top-p (nucleus) or min-p sampling, after the repetition, presence and
frequency penalties (`History`: each row's own tokens so far), for one or many samples at once
(batched), with the tokens' log-probabilities when asked (`scores`).
Tokens reach the caller through `on_tokens` as they are made, a few steps at a time on a GPU so
that sampling never waits on the host each step. Its two halves, `warm_up` (the prefix pass) and
`step_function` (one token for a batch), are public for a caller that steps several requests
as one batch.

`stream_text` turns what `generate` makes into the text `charlm generate` prints, piece by piece
(through `charlm.generation.continuation`, which also ends a sample at a stop text): the caller
decides where the pieces go. It knows nothing about files or the CLI; turning a prefix
into ids (and its unseen characters) is `encode_prefix`'s job.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from charlm.errors import CharlmError
from charlm.generation.continuation import Continuation, Sample
from charlm.generation.request import Sampling
from charlm.models.recurrent_stepper import ban_vector
from charlm.presets import UNKNOWN_POLICIES
from charlm.runtime.device import seeded_generator
from charlm.text.tokens import Tokenizer, Vocab, preprocess_prefix


def filter_logits(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Temperature, then top-k, then top-p, then min-p: logits (N, V) -> logits with the excluded
    set to -inf."""
    # Shifted so that the max is 0, and divided by a temperature float32 holds: at any temperature
    # the likeliest token keeps a finite logit and a banned one stays -inf.
    limits = torch.finfo(torch.float32)
    temperature = min(max(sampling.temperature, limits.tiny), limits.max)
    logits = logits.float()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # probability mass ranked above each token
        sorted_logits = sorted_logits.masked_fill(before >= sampling.top_p, float("-inf"))  # keeps the top 1
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    if sampling.min_p > 0:  # p < min_p * p_max, with the likeliest logit at 0: logit < log(min_p)
        logits = logits.masked_fill(logits < math.log(sampling.min_p), float("-inf"))
    return logits


class History:
    """What the penalties of `Sampling` read, row by row: the tokens each row has seen (its
    context and what it has made: the repetition penalty's), how often each row has made each
    token (the presence and frequency penalties'), and each row's penalties. Every step is row by
    row, so a row's draws are the same alone and stacked with other requests' rows (`stacked`:
    the server's batcher penalizes all its requests' rows at once)."""

    def __init__(self, context: Sequence[int], rows: int, vocab_size: int, device: torch.device,
                 sampling: Sampling) -> None:
        self.seen = torch.zeros(rows, vocab_size, dtype=torch.bool, device=device)  # (N, V)
        self.seen[:, list(context)] = True
        self.counts = torch.zeros(rows, vocab_size, device=device)  # (N, V) float32
        penalties = [sampling.repetition_penalty, sampling.frequency_penalty, sampling.presence_penalty]
        self.penalties = torch.tensor([penalties], device=device).expand(rows, 3)  # (N, 3) float32

    @classmethod
    def stacked(cls, histories: Sequence[History]) -> History:
        """The rows of `histories`, in order, as one (a copy: `split` gives each its rows back)."""
        joined = cls.__new__(cls)
        joined.seen, joined.counts, joined.penalties = (torch.cat([getattr(history, name) for history in histories])
                                                        for name in ("seen", "counts", "penalties"))
        return joined

    def split(self, histories: Sequence[History]) -> None:
        """Hand each of `histories` (those `stacked` joined) its rows of this one."""
        sizes = [history.seen.shape[0] for history in histories]
        for history, seen, counts in zip(histories, self.seen.split(sizes), self.counts.split(sizes)):
            history.seen, history.counts = seen, counts

    def add(self, ids: torch.Tensor) -> None:
        """A step's ids (N,)."""
        rows = torch.arange(ids.shape[0], device=ids.device)
        self.seen[rows, ids] = True
        self.counts[rows, ids] += 1

    def penalize(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (N, V) with each row's penalties applied, as vLLM applies them (and CTRL the
        repetition penalty): a seen token's positive logit divided by its `repetition_penalty`, a
        negative one multiplied; then `frequency_penalty` times each count and `presence_penalty`
        for each token made at least once subtracted. A banned token stays at -inf; a penalty that
        is off (1, 0, 0) leaves a logit exactly as it was."""
        repetition, frequency, presence = self.penalties.split(1, dim=-1)  # (N, 1) each
        logits = logits.float()
        logits = torch.where(self.seen, torch.where(logits > 0, logits / repetition, logits * repetition), logits)
        return logits - frequency * self.counts - presence * (self.counts > 0).float()


def scores(logits: torch.Tensor, ids: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The log-probabilities under the model (its logits (N, V), before any penalty or filter) of
    the chosen `ids` (N,), and the `top` likeliest tokens' (N, top) with their ids (N, top)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    values, order = torch.topk(logprobs, min(top, logprobs.shape[-1]), dim=-1)
    return logprobs.gather(-1, ids[:, None])[:, 0], values, order


def scores_of_rows(chosen: torch.Tensor, values: torch.Tensor, order: torch.Tensor) -> list:
    """What `scores` gives for one step, as `charlm.generation.continuation.Scores`: per row, the
    chosen token's log-probability and the likeliest (id, log-probability) pairs."""
    return [(value, list(zip(ids, tops))) for value, ids, tops in
            zip(chosen.tolist(), order.tolist(), values.tolist())]


def choose(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """Next ids (N,) from logits (N, V)."""
    return choose_rows(logits, sampling, [generator], [logits.shape[0]])


def choose_rows(logits: torch.Tensor, sampling: Sampling, generators: Sequence[torch.Generator | None],
                counts: Sequence[int]) -> torch.Tensor:
    """Next ids (N,) from the logits (N, V) of several requests with one sampling, stacked: the
    first `counts[0]` rows drawn with `generators[0]`, and so on; the same ids as `choose` gives
    each request's rows alone (every step is row by row but the draw, which takes each request's
    random numbers from its own generator).

    A draw is torch.multinomial's for one sample, written out: the likeliest of probabilities
    divided by Exponential(1) noise (an exponential race, exact), so that the noise can come
    from one generator per request and the rest run once for all."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    if sampling.filtered:
        logits = filter_logits(logits, sampling)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # (N, V)
    noise = torch.cat([torch.empty(count, probs.shape[-1], device=probs.device).exponential_(1, generator=generator)
                       for generator, count in zip(generators, counts)]) if len(counts) > 1 else \
        torch.empty_like(probs).exponential_(1, generator=generators[0])
    return (probs / noise).argmax(dim=-1)


def encode_prefix(
    prefix: str, vocab: Vocab, tokens: str = "char", preprocess: str = "none", unknown: str = "error",
    what: str = "prefix",
) -> list[int]:
    """Prefix text -> ids, preprocessed as the corpus was. Tokens the vocab lacks are an error that
    names them (`unknown="error"`), dropped ("skip") or mapped to `<unk>` ("unk"). The translator
    encodes its inputs here too, under the same policy (`what` names the text in the error)."""
    if unknown not in UNKNOWN_POLICIES:
        raise CharlmError(f"unknown policy {unknown!r}; choose one of {', '.join(UNKNOWN_POLICIES)}")
    pieces = Tokenizer(tokens).split(preprocess_prefix(prefix, preprocess))
    missing = vocab.unknown(pieces)
    if missing and unknown == "error":
        shown = ", ".join(repr(token) for token in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise CharlmError(
            f"the {what} has {len(missing)} {'character' if tokens == 'char' else 'token'}"
            f"{'s' if len(missing) > 1 else ''} the model never saw: {shown}; "
            "remove them, or pass --unknown skip (drop them) or --unknown unk (map them to <unk>)"
        )
    if unknown == "skip":
        pieces = [token for token in pieces if token in vocab]
    return vocab.encode(pieces)


def special_ids(vocab: Vocab) -> list[int]:
    """`<unk>` and the reserved tokens: never generated."""
    return [vocab.unk_index] + [vocab[token] for token in vocab.reserved]


def start_ids(vocab: Vocab) -> list[int]:
    """A context for an empty prefix: a line break if the vocab has one, else a space, else the
    most frequent token. It is fed to the model but not printed."""
    for token in ("\n", " "):
        if token in vocab:
            return [vocab[token]]
    return [min(len(vocab) - 1, len(vocab.reserved) + 1)]


@torch.inference_mode()
def warm_up(model: nn.Module, prefix_ids: list[int], num_samples: int, banned: Sequence[int] = ()) -> tuple[torch.Tensor, Any]:
    """One pass over the whole prefix for `num_samples` rows: the logits of the first new token
    (N, V), `banned` ids at -inf, and the model's state after the prefix."""
    device = next(model.parameters()).device
    prefix = torch.tensor(prefix_ids, device=device).expand(num_samples, -1)  # (N, P)
    logits, state = model(prefix)
    ban = ban_vector(logits.shape[-1], banned, device)
    if torch.isinf(ban).all():
        raise CharlmError("the model knows no token it may generate (its vocab is only <unk> and reserved tokens)")
    return logits[:, -1] + ban, state  # (N, V)


def step_function(model: nn.Module, banned: Sequence[int] = (), precision: str = "fp32",
                  ) -> Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]:
    """`logits, state = step(ids, state)`, ids (B,) -> logits (B, V) with `banned` ids at -inf:
    the model's fast `stepper` where it has one (the ban folded into its head; its products in
    `precision`, fp32 or bf16), else `model.step` (fp32; `charlm.models.protocol.ModelDefaults`)."""
    return model.stepper(banned, precision)


@torch.inference_mode()
def generate(
    model: nn.Module,
    prefix_ids: list[int],
    length: int,
    sampling: Sampling = Sampling(),
    num_samples: int = 1,
    seed: int | None = None,
    on_tokens: Callable[[torch.Tensor], None] | None = None,
    flush_every: int | None = None,
    banned: list[int] = (),
    precision: str = "fp32",
    logprobs: int | None = None,
    keep: bool = True,
) -> torch.Tensor | None:
    """Sample `length` new ids after `prefix_ids` for `num_samples` samples at once.

    Returns the new ids (num_samples, length) on the CPU; with `keep` False nothing (the ids go
    to `on_tokens` only, and the memory taken stays that of a short generation whatever the
    length). `on_tokens` gets (num_samples, k) CPU
    blocks of new ids as they are made: every step on a CPU, every `flush_every` (32) on a GPU;
    with `logprobs` (N) also, for each step of the block, `scores_of_rows` of its N likeliest
    tokens. When it returns True the generation ends there (its samples have all stopped), and
    fewer than `length` ids come back. `banned` ids are never drawn (a language model's `<unk>`
    and reserved tokens). The steps' products run in `precision` (fp32, or bf16: see
    `choose_precision`); the prefix pass in fp32."""
    if not prefix_ids:
        raise CharlmError("the prefix is empty after removing unknown characters; give another prefix")
    if length < 0 or num_samples < 1:
        raise CharlmError("--length must be 0 or more and --num-samples at least 1")
    if not keep and on_tokens is None:
        raise ValueError("generate(keep=False) hands its ids to on_tokens only: give one")
    model.eval()
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = seeded_generator(seed, device)
    flush_every = flush_every or (1 if device.type == "cpu" else 32)
    logits, state = warm_up(model, prefix_ids, num_samples, banned)
    step = step_function(model, banned, precision)
    # Kept, the ids of every position; else only those not yet handed on.
    out = torch.empty(num_samples, length, dtype=torch.long, device=device) if keep else None  # too long fails here
    history = History(prefix_ids, num_samples, logits.shape[-1], device, sampling) if sampling.penalized else None
    made: list[torch.Tensor] = []  # (N,) per position: appending costs no torch call
    scored: list[tuple[torch.Tensor, ...]] = []  # scores of the positions not yet handed on, with `logprobs`
    flushed = 0  # positions of `made` handed on
    for position in range(length):
        ids = choose(logits if history is None else history.penalize(logits), sampling, generator)
        made.append(ids)
        if history is not None:
            history.add(ids)
        if logprobs is not None:
            scored.append(scores(logits, ids, logprobs))
        if on_tokens is not None and (len(made) - flushed >= flush_every or position + 1 == length):
            block = torch.stack(made[flushed:], dim=1).cpu()
            stopped = on_tokens(block) if logprobs is None else \
                on_tokens(block, [scores_of_rows(*(part.cpu() for part in step_scores)) for step_scores in scored])
            scored.clear()
            if keep:
                flushed = len(made)
            else:
                made.clear()
            if stopped:
                return torch.stack(made, dim=1).cpu() if keep else None
        if position + 1 < length:
            logits, state = step(ids, state)
    if not keep:
        return None
    return (torch.stack(made, dim=1, out=out) if made else out).cpu()


def choose_precision(model: nn.Module, rows: int | tuple[int, ...], precision: str = "auto",
                     checkpoint: str | os.PathLike | None = None) -> tuple[str, str | None]:
    """The precision of the steps that generate batches of `rows` rows: as told, or for "auto"
    bf16 where it measures faster here and its next-token distributions hold
    (`charlm.runtime.measured.choose_generation_precision`), the decision kept beside the `checkpoint`.
    Also a note for the user where bf16 was chosen by measuring just now (its text is then another
    than fp32's for the same seed; said once, not at every later run that reads the decision), else
    None."""
    from charlm.data.cache import default_cache_dir
    from charlm.runtime.measured import Decisions, choose_generation_precision

    folder = default_cache_dir(checkpoint) if checkpoint is not None else None
    decisions = Decisions(folder)
    chosen, why = choose_generation_precision(model, rows, decisions, precision)
    if chosen == "bf16" and why is not None and decisions.measured:
        return chosen, f"note: generating in bf16: {why}; --precision fp32 for fp32's text"
    return chosen, None


def token_gap(tokenizer: Tokenizer) -> str:
    """What stands between two tokens of generated text: "" for characters, " " for words."""
    return tokenizer.join(["", ""])


def shown_prefix(tokenizer: Tokenizer, vocab: Vocab, prefix_ids: list[int]) -> str:
    """The text a sample starts with before its new tokens: the prefix's tokens joined and the gap
    after them, or nothing for an empty prefix (the model then starts from `start_ids`, unshown)."""
    return tokenizer.join(vocab.decode(prefix_ids)) + (token_gap(tokenizer) if prefix_ids else "")


def stream_text(
    model: nn.Module,
    vocab: Vocab,
    tokens: str,
    prefix_ids: list[int],
    length: int,
    sampling: Sampling = Sampling(),
    num_samples: int = 1,
    seed: int | None = None,
    *,
    on_text: Callable[[str], None],
    precision: str = "fp32",
    stop: Sequence[str] = (),
    logprobs: int | None = None,
    keep: bool = False,
) -> list[Sample]:
    """Sample `length` tokens after `prefix_ids` and hand the text to `on_text` in pieces: the
    prefix (its tokens joined), then the new text, and a "\n" after each sample. One sample
    streams, a piece per block of tokens as `generate` makes them; several come whole, a blank line
    between them. Words (`tokens` "word") are separated by a space, also from the prefix; an empty
    prefix starts the model from `start_ids` and shows nothing. A sample ends before the first of
    the `stop` texts it makes. Returns each sample's new text, tokens (with the `logprobs` likeliest
    tokens' log-probabilities) and why it ended; of one sample without `logprobs` no text or tokens:
    its text is handed on and nothing kept, so that any length streams in the memory of a short
    one. `keep` keeps the ids, for a caller that keeps the whole text: a length too long to keep
    then fails at once."""
    context = prefix_ids or start_ids(vocab)
    shown = shown_prefix(Tokenizer(tokens), vocab, prefix_ids)
    pieces: list[str] = []
    samples_kept = num_samples > 1 or logprobs is not None  # several samples come whole, at the end
    keep = keep or samples_kept
    continuation = Continuation(vocab, token_gap(Tokenizer(tokens)), num_samples, stop, keep=samples_kept,
                                emit=lambda sample, text, made: pieces.append(text) if num_samples == 1 else None)

    def take(block: torch.Tensor, scored: list | None = None) -> bool:  # (N, k)
        for position, ids in enumerate(block.t().tolist()):
            continuation.add(ids, None if scored is None else scored[position])
        if pieces:
            on_text("".join(pieces))
            pieces.clear()
        return continuation.done

    if num_samples == 1:
        on_text(shown)
    generate(model, context, length, sampling, num_samples, seed, on_tokens=take, banned=special_ids(vocab),
             precision=precision, logprobs=logprobs, keep=keep)
    continuation.finish()
    if num_samples == 1:
        if pieces:  # held back for a stop text that did not come
            on_text("".join(pieces))
        on_text("\n")
    else:
        for index, sample in enumerate(continuation.samples):
            on_text(("\n" if index else "") + shown + sample.text + "\n")
    return continuation.samples


def sample_text(model: nn.Module, vocab: Vocab, tokens: str, length: int, seed: int,
                context: Sequence[int] = ()) -> str:
    """A short sample of what `model` writes now after `context` (ids, not shown; the start token
    without one), drawn with `seed` (the same draws at each call, so that what changes is the
    model), in fp32: what training shows at each evaluation. A model trained with its state carried
    along the text writes from a warmed-up state as it reads; from a bare start token it babbles
    for longer. It leaves the model in the mode it found it, and torch's global random state as it was."""
    was_training = model.training
    try:
        made = generate(model, list(context) or start_ids(vocab), length, Sampling(), 1, seed,
                        banned=special_ids(vocab))
    finally:
        model.train(was_training)
    return Tokenizer(tokens).join(vocab.decode(made[0].tolist()))
