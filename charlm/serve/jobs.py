"""A request's work for a language model: its generations (one per prompt) submitted to the model's
batcher, counted in the server's `Slots`, then awaited whole or taken piece by piece for a stream,
and ended once however the response ends. Both dialects' routes (`charlm.serve.app`'s own,
`charlm.serve.openai_routes`') run their generations through it; what they answer is theirs.

It knows nothing about the shape of an answer, nor about models beyond the batcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Sequence

from starlette.requests import Request as HttpRequest

from charlm.generation.request import Request
from charlm.serve.batcher import Batcher, Generation, Stopped
from charlm.serve.fields import RequestError, Slots
from charlm.serve.streaming import Piece, Pieces, until_disconnected

STREAM_INTERVAL = 0.02  # seconds between two events of one stream, at least: 50 a second is smooth text


class Job:
    """The generations of `asks` ((request, prefix ids) each; their samples numbered one after the
    other) on `batcher`, a slot each. `tokens`: each piece of new text comes with its tokens.
    A batcher that has stopped is a 503 (`stopping()`: whether it is stopping); `close()` (however
    the response ends) cancels what is still at work and gives the slots back, once."""

    def __init__(self, batcher: Batcher, slots: Slots, asks: Sequence[tuple[Request, list[int]]], streaming: bool,
                 tokens: bool = False) -> None:
        self.pieces = Pieces(sum(request.num_samples for request, _ in asks), streaming, len(asks))
        self.slots, self.taken, self.closed, self.stopping = slots, 0, False, batcher.closed
        first = 0
        for request, prefix_ids in asks:
            on_text, on_end, on_tokens = self.pieces.part(first)
            self.pieces.generations.append(Generation(request, prefix_ids, on_text, on_end,
                                                      on_tokens if tokens else None))
            first += request.num_samples
        try:
            for _ in asks:
                slots.take()
                self.taken += 1
            for generation in self.generations:
                batcher.submit(generation)
        except Stopped as stopped:
            self.close()
            raise RequestError(str(stopped), 503) from None
        except BaseException:
            self.close()
            raise

    @property
    def generations(self) -> list[Generation]:
        return self.pieces.generations

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for generation in self.generations:
                generation.cancel()
            for _ in range(self.taken):
                self.slots.give_back()

    async def finished(self, request: HttpRequest) -> bool:
        """Wait for the end, or for the client to go (then False); a failure is raised (a stopped
        server's as a 503)."""
        disconnect = asyncio.ensure_future(until_disconnected(request))
        ended = asyncio.ensure_future(self.pieces.ready.wait())  # only the end wakes a job that does not stream
        await asyncio.wait({disconnect, ended}, return_when=asyncio.FIRST_COMPLETED)
        for waiting in (disconnect, ended):
            waiting.cancel()
        if not self.pieces.ended:  # the client has gone: nothing to answer
            return False
        if isinstance(self.pieces.failure, Stopped):
            raise RequestError(str(self.pieces.failure), 503)
        if self.pieces.failure is not None:
            raise self.pieces.failure
        return True

    async def taken_pieces(self) -> AsyncIterator[tuple[list[Piece], bool]]:
        """The pieces as they are made, joined at most every `STREAM_INTERVAL` (the end goes out as
        soon as it comes), and whether the job has ended with them; then `failure` says how."""
        sent = -math.inf
        pieces = self.pieces
        while True:
            await pieces.ready.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pieces.finished.wait(), sent + STREAM_INTERVAL - pieces.loop.time())
            taken, ended = pieces.take()
            sent = pieces.loop.time()
            yield taken, ended
            if ended:
                return

    @property
    def failure(self) -> str | None:
        """Once ended: None, or what a stream says of its failure."""
        if isinstance(self.pieces.failure, Stopped):
            return str(self.pieces.failure)
        return None if self.pieces.failure is None else "the generation failed on the server"  # the batcher logged it
