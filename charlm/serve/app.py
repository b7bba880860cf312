"""The HTTP API and the playground page, as a Starlette app: the only home of Starlette.

    GET  /                            the playground (static/: plain HTML, JS and CSS)
    GET  /v1/models                   the models served, with what `charlm info` says of each
    GET  /v1/models/{name}/metrics    a model's loss curve, from its run's metrics file
    POST /v1/generate                 samples, or server-sent events as the text is made
    POST /v1/translate                outputs of a pair model, greedy or beam search
    POST /v1/attention                a pair model's attention weights for one input

A request's body is read here and checked field by field (`charlm.serve.fields`: types and
`Limits`; a generation's, the rows of `charlm.settings.GENERATE` marked "http", make a
`charlm.generation.request.Request`); it then goes to a `Batcher` (language models) or to
`PairModel.translate` in a worker thread. Every error is a 4xx with one line of JSON,
`{"error": "..."}`; anything unforeseen is a 500 that says only that (its traceback goes to the
server's log). A request names a model from the catalog, never a file.

It knows nothing about sampling or models beyond `charlm.api` and `charlm.generation.sampling`'s `Request`,
nor about sockets (`charlm.serve.server` runs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from charlm.errors import CharlmError
from charlm.generation.request import Request as GenerationRequest
from charlm.generation.sampling import encode_prefix
from charlm.serve.batcher import Batcher, Generation, Stopped
from charlm.serve.catalog import Served, json_safe
from charlm.serve.fields import Fields, Limits, RequestError, Slots, shown
from charlm.serve.streaming import EventStream, Pieces, event, until_disconnected
from charlm.settings import GENERATE, TRANSLATE, for_command
from charlm.settings.rows import DOOR, in_terms

log = logging.getLogger("charlm.serve")


STREAM_INTERVAL = 0.02  # seconds between two events of one stream, at least: 50 a second is smooth text
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
PAGE_FILES = {"/": ("index.html", "text/html"), "/playground.js": ("playground.js", "text/javascript"),
              "/playground.css": ("playground.css", "text/css")}
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


class Json(JSONResponse):
    """JSON in ASCII: a lone surrogate from a vocab is written escaped, not a failed encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def error(message: str, status: int) -> Json:
    return Json({"error": " ".join(str(message).split())}, status_code=status)


# ---------------------------------------------------------------------------------------------
# Reading a request


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object: application/json, at most `limit` bytes (a longer one is refused
    as soon as its length is known), UTF-8, no NaN or Infinity."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise RequestError("send the body as JSON with Content-Type: application/json", 415)
    declared = request.headers.get("content-length", "")
    if declared and (not declared.isdigit() or int(declared) > limit):
        raise RequestError(f"the body is larger than {limit:,} bytes", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(f"the body is larger than {limit:,} bytes", 413)

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not a JSON number")

    try:
        data = json.loads(body.decode("utf-8"), parse_constant=refuse)
    except UnicodeDecodeError:
        raise RequestError("the body is not UTF-8") from None
    except (ValueError, RecursionError) as problem:
        raise RequestError(f"the body is not JSON: {problem}") from None
    if not isinstance(data, dict):
        raise RequestError("the body must be a JSON object")
    return data


# ---------------------------------------------------------------------------------------------
# From the batcher's thread to a request's event loop





# ---------------------------------------------------------------------------------------------
# The app


HTTP_ROWS = for_command(GENERATE, "http")  # a request's own fields: the model's and stream around them
GENERATE_FIELDS = ("model", *(row.name for row in HTTP_ROWS), "stream")
TRANSLATE_ROWS = for_command(TRANSLATE, "http")  # beam, max_length, length_penalty, unknown
TRANSLATE_FIELDS = ("model", "inputs", *(row.name for row in TRANSLATE_ROWS))
ATTENTION_FIELDS = ("model", "input", "unknown")


def create_app(catalog: dict[str, Served], limits: Limits = Limits(), allowed_hosts: tuple[str, ...] | None = None,
               threads: int | None = 1, precision: str = "fp32") -> Starlette:
    """The app serving `catalog`'s models. `allowed_hosts`: the Host names a request may give (a
    page on another site cannot then reach a loopback server by DNS rebinding); None: any.
    `threads`: torch's CPU threads for each language model's batcher (None: torch's default);
    `precision` its steps' (see `Batcher`)."""
    batchers = {name: Batcher(served.model.model, served.model.vocab, served.model.meta.tokens, name, threads,
                              precision, served.path)
                for name, served in catalog.items() if served.task == "lm"}
    translating = {name: threading.Lock() for name, served in catalog.items() if served.task == "translate"}
    slots = Slots(limits.in_flight)
    page = {path: (resources.files("charlm.serve").joinpath("static", name).read_bytes(), kind)
            for path, (name, kind) in PAGE_FILES.items()}

    def pick(name: str | None, task: str) -> Served:
        what = "language model" if task == "lm" else "translation model"
        if name is None:
            served = next((served for served in catalog.values() if served.task == task), None)
            if served is None:
                raise RequestError(f"no {what} is served here", 404)
            return served
        if name not in catalog:
            raise RequestError(f"no model named {shown(name)}; GET /v1/models lists them", 404)
        if catalog[name].task != task:
            raise RequestError(f"model {shown(name)} is not a {what}")
        return catalog[name]

    async def page_file(request: Request) -> Response:
        content, kind = page[request.url.path]
        return Response(content, media_type=kind, headers=PAGE_HEADERS)

    async def models(request: Request) -> Response:
        return Json({"models": [served.listing() for served in catalog.values()]})

    async def metrics(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in catalog:
            raise RequestError(f"no model named {shown(name)}; GET /v1/models lists them", 404)
        return Json({"model": name, **json_safe(await run_in_threadpool(catalog[name].metrics))})

    async def generate(request: Request) -> Response:
        fields = Fields(await read_json(request, limits.body_bytes), GENERATE_FIELDS)
        served = pick(fields.text("model", None, 200), "lm")
        values = {row.name: fields.setting(row, *limits.bounds(row.name)) for row in HTTP_ROWS}
        asked = GenerationRequest.from_fields(values, said="field")
        streaming = fields.boolean("stream", False)
        meta = served.model.meta
        prefix_ids = encode_prefix(asked.prefix, served.model.vocab, meta.tokens, meta.preprocess, asked.unknown)
        slots.take()
        pieces = Pieces(asked.num_samples, streaming)
        generation = Generation(asked, prefix_ids, pieces.on_text, pieces.on_end)
        pieces.generation = generation
        finished = False

        def close() -> None:  # once, however the request ends
            nonlocal finished
            if not finished:
                finished = True
                generation.cancel()
                slots.give_back()

        try:
            batchers[served.name].submit(generation)
        except Stopped as stopped:
            close()
            raise RequestError(str(stopped), 503) from None
        except BaseException:
            close()
            raise
        if streaming:
            return EventStream(stream_events(served.name, pieces, generation), close)
        try:
            disconnect = asyncio.ensure_future(until_disconnected(request))
            ended = asyncio.ensure_future(pieces.ready.wait())  # only the end wakes a request that does not stream
            await asyncio.wait({disconnect, ended}, return_when=asyncio.FIRST_COMPLETED)
            for waiting in (disconnect, ended):
                waiting.cancel()
            if not pieces.ended:  # the client has gone: nothing to answer
                return Response(status_code=499)
            if isinstance(pieces.failure, Stopped):
                raise RequestError(str(pieces.failure), 503)
            if pieces.failure is not None:
                raise pieces.failure
            return Json({"model": served.name, "seed": generation.seed, "samples": pieces.samples})
        finally:
            close()

    async def stream_events(name: str, pieces: Pieces, generation: Generation) -> AsyncIterator[str]:
        """An event per piece of text as it is made, then `done`, or `error` if the generation
        failed (the batcher has logged why). At most one event per `STREAM_INTERVAL`: the pieces
        made in between go out joined, and the end goes out as soon as it comes."""
        sent = -math.inf
        while True:
            await pieces.ready.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pieces.finished.wait(), sent + STREAM_INTERVAL - pieces.loop.time())
            taken, ended = pieces.take()
            sent = pieces.loop.time()
            for sample, text in taken:
                yield event({"sample": sample, "text": text})
            if ended:
                if isinstance(pieces.failure, Stopped):
                    yield event({"error": str(pieces.failure)}, "error")
                elif pieces.failure is not None:  # the batcher has logged it
                    yield event({"error": "the generation failed on the server"}, "error")
                else:
                    yield event({"model": name, "seed": generation.seed}, "done")
                return

    async def translate(request: Request) -> Response:
        fields = Fields(await read_json(request, limits.body_bytes), TRANSLATE_FIELDS)
        served = pick(fields.text("model", None, 200), "translate")
        inputs = fields.texts("inputs", limits.inputs, limits.input_chars)
        asked = {row.name: fields.setting(row, *limits.bounds(row.name)) for row in TRANSLATE_ROWS}
        outputs = await in_worker(served, lambda: served.model.translate(inputs, *asked.values()))  # in the rows' order
        return Json({"model": served.name, "outputs": outputs})

    async def attention(request: Request) -> Response:
        fields = Fields(await read_json(request, limits.body_bytes), ATTENTION_FIELDS)
        served = pick(fields.text("model", None, 200), "translate")
        text = fields.text("input", None, limits.input_chars)
        if text is None:
            raise RequestError("input must be a string, got null")
        unknown = fields.setting(TRANSLATE["unknown"])
        found = await in_worker(served, lambda: served.model.attention(text, unknown))
        return Json({"model": served.name, "source": found["source"], "output": found["output"],
                     "weights": found["weights"].tolist()})

    async def in_worker(served: Served, work: Callable[[], Any]) -> Any:
        """A pair model's work in a worker thread, one at a time per model, counted in `slots`."""
        slots.take()
        try:
            def locked() -> Any:
                door = DOOR.set("field")  # the API's errors name a request's fields
                try:
                    with translating[served.name]:
                        return work()
                finally:
                    DOOR.reset(door)
            return await run_in_threadpool(locked)
        finally:
            slots.give_back()

    def stop() -> None:
        """End every generation (their streams say the server is stopping) and the batchers."""
        for batcher in batchers.values():
            batcher.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        stop()

    async def refused(request: Request, problem: RequestError) -> Response:
        return error(str(problem), problem.status)

    async def user_error(request: Request, problem: CharlmError) -> Response:  # the settings named as fields
        return error(in_terms(str(problem), "field", [*GENERATE.values(), *TRANSLATE.values()]), 400)

    async def http_error(request: Request, problem: HTTPException) -> Response:
        message = {404: f"no such path: {request.url.path}", 405: f"{request.method} is not allowed here"}
        return error(message.get(problem.status_code, problem.detail), problem.status_code)

    async def disconnected(request: Request, problem: ClientDisconnect) -> Response:
        return Response(status_code=499)

    async def server_error(request: Request, problem: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=problem)
        return error("the server failed on this request; its log says why", 500)

    routes = [*(Route(path, page_file) for path in PAGE_FILES),
              Route("/v1/models", models), Route("/v1/models/{name}/metrics", metrics),
              Route("/v1/generate", generate, methods=["POST"]), Route("/v1/translate", translate, methods=["POST"]),
              Route("/v1/attention", attention, methods=["POST"])]
    middleware = [Middleware(HostCheck, allowed=allowed_hosts)] if allowed_hosts is not None else []
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers={
        RequestError: refused, CharlmError: user_error, HTTPException: http_error, ClientDisconnect: disconnected,
        Exception: server_error})
    app.state.batchers, app.state.slots, app.state.stop = batchers, slots, stop  # stop: for the server, at once
    return app


class HostCheck:
    """Refuses a request whose Host header names none of `allowed` (port aside)."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
            if name.lower() not in self.allowed:
                await error(f"this server answers to {', '.join(self.allowed)}, not {shown(host)}", 421)(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)
