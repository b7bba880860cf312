"""Batcher: the generations asked of one language model, stepped together as one batch.

A thread per model. Each request is warmed up on its own prefix when it arrives
(`charlm.generate.warm_up`), then joins the others: every step draws each request's next tokens
from its rows of the logits, with its own `Sampling` and its own generator (seeded as `charlm
generate` seeds it), and then runs the model's `step_function` once for the rows of all requests,
their states joined (`type(state).join`) and split back by rows (`state.rows`). So a request
gives the text `charlm generate` prints for the same options, whatever else is being batched
with it; throughput grows with the number of requests.

A model whose states refuse to join (`join` raises ValueError, as a cache of another length may)
steps those requests one by one. The batcher never asks which architecture it holds.

It knows nothing about HTTP or asyncio: text reaches a request's `on_text(sample, piece)` and its
end `on_end(error)`, both called on the batcher's thread; `cancel()` drops a request's rows at
the next step.
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

from charlm.generate import Sampling, choose, special_ids, start_ids, step_function, warm_up
from charlm.runtime import seeded_generator
from charlm.text import Tokenizer, Vocab

log = logging.getLogger(__name__)


@dataclass
class Generation:
    """One request: `num_samples` samples of `length` tokens after `prefix_ids` (empty: from the
    vocab's start token, shown as nothing). `seed` None draws one; `seed` then holds it."""

    prefix_ids: list[int]
    length: int
    sampling: Sampling
    num_samples: int
    seed: int | None
    on_text: Callable[[int, str], None]
    on_end: Callable[[BaseException | None], None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop making text for this request: its rows leave the batch at the next step."""
        self.cancelled.set()


@dataclass
class _Active:
    """A generation in the batch: the logits of its next tokens (N, V), its state after the
    tokens so far, its generator and how many tokens it has made."""

    generation: Generation
    logits: torch.Tensor
    state: Any
    generator: torch.Generator
    made: int = 0
    last: torch.Tensor | None = None  # (N,) the tokens drawn this step


class Batcher:
    """`submit(generation)` from any thread; the batcher's thread starts with the first."""

    def __init__(self, model: nn.Module, vocab: Vocab, tokens: str, name: str = "model") -> None:
        self.model, self.vocab, self.name = model.eval(), vocab, name
        self.tokenizer = Tokenizer(tokens)
        self.gap = self.tokenizer.join(["", ""])  # between two tokens: "" for characters, " " for words
        self.banned = special_ids(vocab)
        self.step = step_function(model, self.banned)
        self.steps, self.largest_batch = 0, 0  # model steps taken, and the most rows in one
        self._pending: list[Generation] = []
        self._active: list[_Active] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, generation: Generation) -> None:
        with self._wake:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._pending.append(generation)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"batcher-{self.name}", daemon=True)
                self._thread.start()
            self._wake.notify()

    @property
    def in_flight(self) -> int:
        """Requests waiting or in the batch."""
        with self._wake:
            return len(self._pending) + len(self._active)

    def close(self) -> None:
        """End every request (as cancelled) and the thread."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._pending or self._active or self._closed):
                    self._wake.wait()
                if self._closed:
                    for generation in self._pending + [active.generation for active in self._active]:
                        generation.cancel()
                        generation.on_end(None)
                    return
                arrived, self._pending = self._pending, []
            with torch.inference_mode():
                for generation in arrived:
                    self._guarded([generation], lambda: self._admit(generation))
                self._draw()
                stepping = [active for active in self._active if active.made < active.generation.length]
                for active in self._active:
                    if active not in stepping:
                        active.generation.on_end(None)
                self._active = stepping
                if stepping:
                    self._guarded([active.generation for active in stepping], lambda: self._step(stepping))

    def _guarded(self, generations: list[Generation], work: Callable[[], None]) -> None:
        """Run `work`; if it fails, end `generations` with the error (logged) and drop them."""
        try:
            work()
        except Exception as error:  # one bad request must not stop the others' batcher
            log.exception("generation failed in the batcher of %s", self.name)
            failed = {id(generation) for generation in generations}
            self._active = [active for active in self._active if id(active.generation) not in failed]
            for generation in generations:
                generation.on_end(error)

    def _admit(self, generation: Generation) -> None:
        """The prefix pass, and the prefix shown as each sample's first piece."""
        if generation.seed is None:
            generation.seed = random.randrange(2**63)
        device = next(self.model.parameters()).device
        generator = seeded_generator(generation.seed, device)
        context = generation.prefix_ids or start_ids(self.vocab)
        logits, state = warm_up(self.model, context, generation.num_samples, self.banned)
        shown = self.tokenizer.join(self.vocab.decode(generation.prefix_ids))
        separator = self.gap if generation.prefix_ids else ""  # between the prefix and the new text
        for sample in range(generation.num_samples):
            generation.on_text(sample, shown + separator)
        self._active.append(_Active(generation, logits, state, generator))

    def _draw(self) -> None:
        """Each request's next tokens, from its own logits with its own sampling and generator;
        a cancelled request leaves here."""
        kept = []
        for active in self._active:
            generation = active.generation
            if generation.cancelled.is_set():
                generation.on_end(None)
                continue
            kept.append(active)
            if active.made == generation.length:
                continue
            active.last = choose(active.logits, generation.sampling, active.generator)
            active.made += 1
            pieces = self.vocab.decode(active.last.tolist())
            for sample, piece in enumerate(pieces):
                generation.on_text(sample, (self.gap if active.made > 1 else "") + piece)
        self._active = kept

    def _step(self, stepping: list[_Active]) -> None:
        """One model step for all of `stepping`'s rows at once (one by one if their states refuse
        to join), each request's logits and state split back out."""
        states = [active.state for active in stepping]
        try:
            if len(stepping) > 1 and any(state is None for state in states):
                raise ValueError("a state of None has no rows to join")
            joined = type(states[0]).join(states) if len(stepping) > 1 else states[0]
        except ValueError:  # a cache of another length, say: each request steps on its own
            for active in stepping:
                active.logits, active.state = self.step(active.last, active.state)
            self._record(1)
            return
        logits, state = self.step(torch.cat([active.last for active in stepping]), joined)
        self._record(logits.shape[0])
        start = 0
        for active in stepping:
            rows = slice(start, start + active.generation.num_samples)
            active.logits = logits[rows]
            active.state = state if len(stepping) == 1 else state.rows(rows)
            start = rows.stop

    def _record(self, rows: int) -> None:
        self.steps += 1
        self.largest_batch = max(self.largest_batch, rows)
