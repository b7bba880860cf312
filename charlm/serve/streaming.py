"""From the batcher's thread to a request's event loop: the text of a request's generations as
it is made (`Pieces`: one or several generations, their samples numbered one after the other, each
piece with its tokens where they were asked for), and server-sent events that end however the
response ends (`EventStream`).

It knows nothing about models or sampling; the routes are `charlm.serve.app`'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from charlm.generation.continuation import Token
from charlm.serve.batcher import Generation

log = logging.getLogger(__name__)
WRITE_POLL = 0.1  # seconds between two looks at a write that waits on a client
STOPPING_SECONDS = 0.5  # how long a stopping server waits on a client that is not reading (under its grace period)

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
        """The pieces not yet sent, joined per sample however the samples' pieces interleave (but
        for each sample's first, its prefix, which goes out alone), and whether the generations
        have ended (then no piece comes after these)."""
        with self._lock:
            unsent, self._unsent, self._woken, ended = self._unsent, [], False, self.ended
            self.ready.clear()
        texts: list[list[str]] = []
        tokens: list[list[Token] | None] = []
        samples: list[int] = []
        at: dict[int, int] = {}  # where a sample's joined piece is in the lists above
        for sample, piece, its_tokens in unsent:
            if sample in at:
                texts[at[sample]].append(piece)
                joined = tokens[at[sample]]
                tokens[at[sample]] = None if joined is None else joined + (its_tokens or [])
                continue
            if sample in self._begun:
                at[sample] = len(samples)
            self._begun.add(sample)
            samples.append(sample)
            texts.append([piece])
            tokens.append(None if its_tokens is None else list(its_tokens))
        return [(sample, "".join(text), its_tokens) for sample, text, its_tokens in zip(samples, texts, tokens)], ended


async def until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class NotReading(Exception):
    """A stream's client took none of its text for as long as the server waits (or the server is stopping)."""


class EventStream(StreamingResponse):
    """Server-sent events; `on_close` runs however the response ends (a client gone before the
    first event included). A client that takes nothing for `write_seconds` (a write waits while
    the socket's buffers are full), or for `STOPPING_SECONDS` once `stopping()`, has its stream
    ended there, in one line of the log: a slow or stuck reader does not keep its place at work,
    nor a stopping server waiting."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None], write_seconds: float,
                 stopping: Callable[[], bool]) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache",
                                                                          "X-Accel-Buffering": "no"})
        self.on_close, self.write_seconds, self.stopping = on_close, write_seconds, stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_in_time(message: Message) -> None:
            await self._in_time(send(message))

        try:
            await super().__call__(scope, receive, send_in_time)
        except NotReading as problem:
            client = scope.get("client")
            log.info("%s: %s", "%s:%d" % tuple(client) if client else "a client", problem)
        finally:
            self.on_close()

    async def _in_time(self, sending: Awaitable[None]) -> None:
        write = asyncio.ensure_future(sending)
        waited = 0.0
        try:
            while not write.done():
                await asyncio.wait({write}, timeout=WRITE_POLL)
                waited += WRITE_POLL
                if write.done():
                    break
                if self.stopping() and waited >= STOPPING_SECONDS:
                    raise NotReading("its stream ended as the server stops; the client was not reading")
                if waited >= self.write_seconds:
                    raise NotReading(f"took none of its stream for {self.write_seconds:g} s; the stream is ended")
        finally:
            write.cancel()
        write.result()


def event(data: dict[str, Any], name: str | None = None) -> str:
    return (f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n"
