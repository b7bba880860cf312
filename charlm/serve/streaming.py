"""From the batcher's thread to a request's event loop: the text of a request's generations as
it is made (`Pieces`: one or several generations, their samples numbered one after the other, each
piece with its tokens where they were asked for), and server-sent events that end however the
response ends (`EventStream`).

It knows nothing about models or sampling; the routes are `charlm.serve.app`'s.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from charlm.generation.continuation import Token
from charlm.serve.batcher import Generation

Piece = tuple[int, str, "list[Token] | None"]  # a sample, its text, the tokens that make it (when asked for)


class Pieces:
    """The text of `parts` generations as the batcher makes it, their samples numbered one after
    the other (a generation's callbacks: `part(first)`): each sample's whole text (`samples`) and,
    for a stream, the pieces not yet sent (`take`). The batcher's thread wakes the request's event
    loop once for all the pieces it adds before the loop takes them, so a loaded server sends
    fewer, larger events rather than falling behind. It has ended when every part has."""

    def __init__(self, num_samples: int, streaming: bool, parts: int = 1) -> None:
        self.loop = asyncio.get_running_loop()
        self.samples = [""] * num_samples
        self.streaming = streaming
        self.ready = asyncio.Event()  # pieces to take, or the end
        self.finished = asyncio.Event()  # the end
        self.ended = False
        self.failure: BaseException | None = None
        self.generations: list[Generation] = []
        self._parts = parts
        self._unsent: list[Piece] = []
        self._lock = threading.Lock()
        self._woken = False
        self._begun: set[int] = set()  # the samples whose first piece has been taken

    def part(self, first: int) -> tuple[Callable[[int, str], None], Callable[[BaseException | None], None],
                                        Callable[[int, str, list[Token]], None]]:
        """`on_text`, `on_end` and `on_tokens` for a generation whose samples are numbered from `first`."""
        return (lambda sample, piece: self.on_text(first + sample, piece), self.on_end,
                lambda sample, piece, tokens: self.on_text(first + sample, piece, tokens))

    def on_text(self, sample: int, piece: str, tokens: list[Token] | None = None) -> None:  # on the batcher's thread
        self.samples[sample] += piece
        if self.streaming:
            with self._lock:
                self._unsent.append((sample, piece, tokens))
            self._wake()

    def on_end(self, failure: BaseException | None) -> None:  # on the batcher's thread, once per part
        with self._lock:
            self._parts -= 1
            self.failure = self.failure or failure
            self.ended = self._parts == 0 or self.failure is not None
            if not self.ended:
                return
        self._wake()
        self._call(self.finished.set)

    def _wake(self) -> None:
        with self._lock:
            if self._woken:
                return
            self._woken = True
        self._call(self.ready.set)

    def _call(self, function: Callable[[], Any]) -> None:
        try:
            self.loop.call_soon_threadsafe(function)
        except RuntimeError:  # the request's event loop has closed: no one is reading
            for generation in self.generations:
                generation.cancel()

    def take(self) -> tuple[list[Piece], bool]:
        """The pieces not yet sent, joined per sample where they follow each other (but for each
        sample's first, its prefix), and whether the generations have ended (then no piece comes
        after these)."""
        with self._lock:
            unsent, self._unsent, self._woken, ended = self._unsent, [], False, self.ended
            self.ready.clear()
        joined: list[Piece] = []
        joinable = False
        for sample, piece, tokens in unsent:
            if joined and joined[-1][0] == sample and joinable:
                before = joined[-1][2]
                joined[-1] = (sample, joined[-1][1] + piece, None if before is None else before + (tokens or []))
            else:
                joined.append((sample, piece, tokens))
            joinable = sample in self._begun  # a sample's first piece, its prefix, goes out alone
            self._begun.add(sample)
        return joined, ended


async def until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class EventStream(StreamingResponse):
    """Server-sent events; `on_close` runs however the response ends (a client gone before the
    first event included)."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache",
                                                                          "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def event(data: dict[str, Any], name: str | None = None) -> str:
    return (f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n"
