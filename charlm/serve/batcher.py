"""Batcher: the generations asked of one language model, stepped together as one batch.

A thread per model. Each request is warmed up on its own prefix when it arrives
(`charlm.generation.sampling.warm_up`), then joins the batch: its state is joined to the others'
(`type(state).join`) and stays joined, its rows leaving (`state.rows`) only when it ends. Every
step draws each request's next tokens from its rows of the logits with its own `Sampling` and
its own generator, seeded as `charlm generate` seeds it (`choose_rows`: at once for the requests
of one `Sampling`, equal as a whole, so no field of it is shared by mistake), after the penalties
of its own rows' tokens so far (`History`), then runs the model's `step_function` once for all
rows. Its tokens become text as `charlm generate`'s do (`Continuation`: a stop text ends a
sample; a request ends when all its samples have). So a request gives the text `charlm generate` prints
for the same options, whatever else is batched with it, and throughput grows with the number of
requests.

A prefix pass stays one request's: a pass over several prefixes at once rounds differently in
the last bits (the recurrent kernels' matrix products see another shape), where a step's rows do
not depend on the batch.

Requests whose states refuse to join (`join` raises ValueError, as caches of other lengths may)
stay in groups of their own, each group stepped apart. The batcher never asks which
architecture it holds.

It knows nothing about HTTP or asyncio: text reaches a request's `on_text(sample, piece)` (or
its new tokens `on_tokens(sample, piece, tokens)`, with their log-probabilities) and its end
`on_end(error)`, all called on the batcher's thread; `cancel()` drops a request's rows at the
next step.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from charlm.generation.continuation import Continuation, Token
from charlm.generation.request import Request, Sampling
from charlm.generation.sampling import (
    History, choose_precision, choose_rows, scores, scores_of_rows, shown_prefix, special_ids, start_ids, step_function,
    token_gap, warm_up,
)
from charlm.runtime.cores import FreeCores
from charlm.runtime.device import cpu_threads, seeded_generator
from charlm.text.tokens import Tokenizer, Vocab

log = logging.getLogger(__name__)
MEASURED_ROWS = (1, 32)  # batch sizes at which "auto" measures bf16 against fp32: a lone request, a full one
SPLIT_ROWS = 8  # with no thread count fixed, a step of fewer rows runs on one thread (measured: see Batcher)


class Stopped(Exception):
    """The batcher was closed (the server is stopping) before the generation ended."""


@dataclass(eq=False)
class Generation:
    """One request (`charlm.generation.request.Request`: `num_samples` samples of `length` tokens, its
    `Sampling` and seed), its prefix as ids (empty: from the vocab's start token, shown as
    nothing), and where its text and its end go: with `on_tokens`, each piece of new text comes
    with its tokens there (`on_text` still gets the prefix). `seed` is the request's, or one drawn
    for it; `continuation`, once admitted, each sample's text, tokens and why it ended."""

    request: Request
    prefix_ids: list[int]
    on_text: Callable[[int, str], None]
    on_end: Callable[[BaseException | None], None]
    on_tokens: Callable[[int, str, list[Token]], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    seed: int | None = field(init=False)
    continuation: Continuation | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.seed = self.request.seed

    def cancel(self) -> None:
        """Stop making text for this request: its rows leave the batch at the next step."""
        self.cancelled.set()


@dataclass(eq=False)
class _Request:
    """A generation being made: its generator, how many tokens it has made, its text so far and
    (with a penalty) its rows' tokens so far."""

    generation: Generation
    generator: torch.Generator
    continuation: Continuation
    history: History | None = None
    made: int = 0

    @property
    def ended(self) -> bool:
        return self.made == self.length or self.continuation.done

    @property
    def rows(self) -> int:
        return self.generation.request.num_samples

    @property
    def length(self) -> int:
        return self.generation.request.length

    @property
    def sampling(self) -> Sampling:
        return self.generation.request.sampling


@dataclass(eq=False)
class _Group:
    """Requests stepped as one batch: their rows in order, the logits of their next tokens
    (B, V) and their state (B rows) after the tokens so far."""

    requests: list[_Request]
    logits: torch.Tensor
    state: Any

    def row_starts(self) -> list[int]:
        """Where each request's rows start, and after them the number of rows."""
        starts = [0]
        for request in self.requests:
            starts.append(starts[-1] + request.rows)
        return starts

    def keep(self, kept: list[_Request]) -> None:
        """Only the rows of `kept` (some of `requests`, in order) from now on."""
        if len(kept) == len(self.requests):
            return
        starts, kept_ids = self.row_starts(), {id(request) for request in kept}
        index = torch.tensor([row for position, request in enumerate(self.requests) if id(request) in kept_ids
                              for row in range(starts[position], starts[position + 1])],
                             dtype=torch.long, device=self.logits.device)
        self.requests, self.logits = kept, self.logits[index]
        self.state = None if self.state is None else self.state.rows(index)


class Batcher:
    """`submit(generation)` from any thread; the batcher's thread starts with the first and runs
    torch on `threads` CPU threads, or with None on the cores free (`cores`, shared with the
    app's other batchers, looked at again as it works): one thread for a step of fewer than
    SPLIT_ROWS rows, the cores free for a larger one.

    Its steps' products run in `precision`: "fp32", "bf16", or "auto", decided here at once for
    every batch it will step (`MEASURED_ROWS`: bf16 only where it is faster at each, so a lone
    request never pays for it), and kept beside the `checkpoint`; `note` then says why bf16."""

    def __init__(self, model: nn.Module, vocab: Vocab, tokens: str, name: str = "model", threads: int | None = 1,
                 precision: str = "fp32", checkpoint: str | None = None, cores: FreeCores | None = None) -> None:
        self.model, self.vocab, self.name, self.threads = model.eval(), vocab, name, threads
        self.cores = (cores or FreeCores()) if threads is None else None
        self.tokenizer = Tokenizer(tokens)
        self.gap = token_gap(self.tokenizer)
        self.banned = special_ids(vocab)
        with cpu_threads(threads or 1):  # measured on the thread count the batcher's thread runs on (a lone request's)
            self.precision, self.note = choose_precision(model, MEASURED_ROWS, precision, checkpoint)
        self.step = step_function(model, self.banned, self.precision)
        self.steps, self.largest_batch = 0, 0  # model steps taken, and the most rows in one
        self._pending: list[Generation] = []
        self._groups: list[_Group] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, generation: Generation) -> None:
        with self._wake:
            if self._closed:
                raise Stopped("the server is stopping")
            self._pending.append(generation)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"batcher-{self.name}", daemon=True)
                self._thread.start()
            self._wake.notify()

    @property
    def in_flight(self) -> int:
        """Requests waiting or being made."""
        with self._wake:
            return len(self._pending) + sum(len(group.requests) for group in self._groups)

    def closed(self) -> bool:
        """Whether `close` has been called: the server is stopping."""
        return self._closed

    def close(self) -> None:
        """End every request (with `Stopped`) and the thread; again, nothing."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        with cpu_threads(self.threads):  # set on this thread: torch's count is per thread under OpenMP
            self._loop()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._pending or self._groups or self._closed):
                    if self.cores is not None:
                        self.cores.share(self, False)  # resting: the cores are the other batchers'
                    self._wake.wait()
                if self._closed:
                    for generation in self._pending + [request.generation for group in self._groups
                                                       for request in group.requests]:
                        generation.cancel()
                        generation.on_end(Stopped("the server is stopping"))
                    self._pending, self._groups = [], []
                    return
                arrived = list(self._pending)  # left there, and counted in flight, until admitted
            with torch.inference_mode():
                fresh = []
                for generation in arrived:
                    try:
                        fresh.append(self._admit(generation))
                    except Exception as error:  # one bad request must not stop the batcher
                        self._fail([generation], error)
                groups = self._merged([*self._groups, *fresh])
                for group in groups:
                    try:
                        self._advance(group)
                    except Exception as error:
                        self._fail([request.generation for request in group.requests], error)
                        group.requests = []
                with self._wake:
                    self._pending = self._pending[len(arrived):]
                    self._groups = [group for group in groups if group.requests]

    def _fail(self, generations: list[Generation], error: Exception) -> None:
        log.exception("generation failed in the batcher of %s", self.name)
        for generation in generations:
            generation.on_end(error)

    def _admit(self, generation: Generation) -> _Group:
        """The prefix pass, and the prefix shown as each sample's first piece."""
        if generation.seed is None:
            generation.seed = random.randrange(2**63)
        device = next(self.model.parameters()).device
        context = generation.prefix_ids or start_ids(self.vocab)
        request = generation.request
        logits, state = warm_up(self.model, context, request.num_samples, self.banned)
        shown = shown_prefix(self.tokenizer, self.vocab, generation.prefix_ids)
        for sample in range(request.num_samples):
            generation.on_text(sample, shown)
        on_tokens = generation.on_tokens or (lambda sample, text, tokens: generation.on_text(sample, text))
        generation.continuation = Continuation(self.vocab, self.gap, request.num_samples, request.stop, on_tokens)
        history = History(context, request.num_samples, logits.shape[-1], device, request.sampling) \
            if request.sampling.penalized else None
        return _Group([_Request(generation, seeded_generator(generation.seed, device), generation.continuation,
                                history)], logits, state)

    def _merged(self, groups: list[_Group]) -> list[_Group]:
        """The groups as one, if their states join; as they are if not."""
        if len(groups) < 2:
            return groups
        states = [group.state for group in groups]
        try:
            if any(state is None for state in states):
                raise ValueError("a state of None has no rows to join")
            state = type(states[0]).join(states)
        except ValueError:  # a cache of another length, say
            return groups
        return [_Group([request for group in groups for request in group.requests],
                       torch.cat([group.logits for group in groups]), state)]

    def _advance(self, group: _Group) -> None:
        """Drop the group's cancelled requests, draw every other request's next tokens, end
        those that are done, and step the rest."""
        self._drop(group, lambda request: request.generation.cancelled.is_set())
        self._drop(group, lambda request: request.ended)  # asked for no token
        if not group.requests:
            return
        ids = self._draw(group)
        owners = [request for request in group.requests for _ in range(request.rows)]  # of each row
        self._drop(group, lambda request: request.ended)  # the last token made, or every sample stopped
        if not group.requests:
            return
        if len(owners) > group.logits.shape[0]:  # some ended: step only the others' rows
            kept = {id(request) for request in group.requests}
            ids = ids[torch.tensor([row for row, owner in enumerate(owners) if id(owner) in kept],
                                   dtype=torch.long, device=ids.device)]
        if self.cores is not None:
            self._set_threads(ids.shape[0])
        group.logits, group.state = self.step(ids, group.state)
        self.steps += 1
        self.largest_batch = max(self.largest_batch, group.logits.shape[0])

    def _set_threads(self, rows: int) -> None:
        """Torch's threads on this thread for a step of `rows` rows (with no count fixed)."""
        threads = self.cores.share(self, True) if rows >= SPLIT_ROWS else 1
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    @staticmethod
    def _drop(group: _Group, ended: Callable[[_Request], bool]) -> None:
        """End the group's requests for which `ended` holds, and keep only the others' rows."""
        kept = []
        for request in group.requests:
            if ended(request):
                request.continuation.finish()
                request.generation.on_end(None)
            else:
                kept.append(request)
        group.keep(kept)

    def _draw(self, group: _Group) -> torch.Tensor:
        """The next ids (B,) of the group's rows, each request's with its own generator, drawn at
        once for the requests of one sampling, after each request's penalties on its own rows;
        their text goes out."""
        by_sampling: dict[Sampling, list[int]] = {}  # by the whole Sampling: no field shared by mistake
        for position, request in enumerate(group.requests):
            by_sampling.setdefault(request.sampling, []).append(position)
        starts = group.row_starts()
        logits = group.logits
        penalized = [position for position, request in enumerate(group.requests) if request.history is not None]
        if penalized:  # all their rows at once
            histories = [group.requests[position].history for position in penalized]
            history = History.stacked(histories)
            penalized_rows = self._rows(starts, penalized, logits.device)
            logits = logits.index_copy(0, penalized_rows, history.penalize(logits[penalized_rows]))
        if len(by_sampling) == 1:
            [sampling] = by_sampling
            ids = choose_rows(logits, sampling, [request.generator for request in group.requests],
                              [request.rows for request in group.requests])
        else:
            ids = torch.empty(group.logits.shape[0], dtype=torch.long, device=group.logits.device)
            for sampling, positions in by_sampling.items():
                rows = self._rows(starts, positions, ids.device)
                requests = [group.requests[position] for position in positions]
                ids[rows] = choose_rows(logits[rows], sampling, [request.generator for request in requests],
                                        [request.rows for request in requests])
        if penalized:
            history.add(ids[penalized_rows])
            history.split(histories)
        scoring = [position for position, request in enumerate(group.requests)
                   if request.generation.request.logprobs is not None]
        scored: dict[int, list] = {}
        if scoring:  # all their rows at once; each request keeps its own number of likeliest tokens
            scored_rows = self._rows(starts, scoring, logits.device)
            most = max(group.requests[position].generation.request.logprobs for position in scoring)
            every_row = iter(scores_of_rows(*scores(group.logits[scored_rows], ids[scored_rows], most)))
            for position in scoring:
                top = group.requests[position].generation.request.logprobs
                scored[position] = [(chosen, likeliest[:top]) for chosen, likeliest in
                                    (next(every_row) for _ in range(group.requests[position].rows))]
        every = ids.tolist()
        for position, (request, start, end) in enumerate(zip(group.requests, starts, starts[1:])):
            request.made += 1
            request.continuation.add(every[start:end], scored.get(position))
        return ids

    @staticmethod
    def _rows(starts: list[int], positions: list[int], device: torch.device) -> torch.Tensor:
        """The rows (as an index) of the requests at `positions` of a group whose rows start at `starts`."""
        return torch.tensor([row for position in positions for row in range(starts[position], starts[position + 1])],
                            dtype=torch.long, device=device)
