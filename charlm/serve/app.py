"""The HTTP API and the playground page, as a Starlette app: the only home of Starlette's app.
Two dialects: charlm's own,

    GET  /                            the playground (static/: plain HTML, JS and CSS)
    GET  /v1/models/{name}/metrics    a model's loss curve, from its run's metrics file
    POST /v1/generate                 samples, or server-sent events as the text is made
    POST /v1/translate                outputs of a pair model, greedy or beam search
    POST /v1/attention                a pair model's attention weights for one input
    POST /v1/inside                   a language model's view of a text: surprise, expectations, units

and OpenAI's (`charlm.serve.openai_routes`: /v1/models, which also lists charlm's own
description of each model under "models", /v1/completions, /v1/chat/completions).

A request's body is read here and checked field by field (`charlm.serve.fields`: types and
`Limits`; a generation's, the rows of `charlm.settings.GENERATE` marked "http", make a
`charlm.generation.request.Request`); it then goes to a `Batcher` (language models, through a
`charlm.serve.jobs.Job`) or to `PairModel.translate` in a worker thread. Every error is a 4xx
with one line of JSON in the dialect of its path (`charlm.serve.http.error`); anything
unforeseen is a 500 that says only that (its traceback goes to the server's log). A request
names a model from the catalog, never a file. With a key, every /v1/ path asks for it
(`charlm.serve.guards.KeyCheck`).

It knows nothing about sampling or models beyond `charlm.api` and `charlm.generation.sampling`'s `Request`,
nor about sockets (`charlm.serve.server` runs it).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from charlm.errors import CharlmError
from charlm.evaluation.inside_page import script, view_data
from charlm.generation.request import Request as GenerationRequest
from charlm.generation.sampling import encode_prefix
from charlm.runtime.cores import FreeCores
from charlm.runtime.device import cpu_threads
from charlm.serve.batcher import Batcher
from charlm.serve.catalog import Served, json_safe
from charlm.serve.chat import ChatTemplate
from charlm.serve.fields import Fields, Limits, RequestError, Slots, shown
from charlm.serve.guards import HostCheck, KeyCheck
from charlm.serve.http import Json, error, read_json
from charlm.serve.jobs import Job
from charlm.serve.openai_requests import OPENAI_NAMES
from charlm.serve.openai_routes import openai_routes
from charlm.serve.streaming import EventStream, event
from charlm.settings import GENERATE, TRANSLATE, SettingError, for_command
from charlm.settings.rows import DOOR, in_terms

log = logging.getLogger("charlm.serve")


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
PAGE_FILES = {"/": ("index.html", "text/html"), "/playground.js": ("playground.js", "text/javascript"),
              "/playground.css": ("playground.css", "text/css")}
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


# ---------------------------------------------------------------------------------------------
# The app


HTTP_ROWS = for_command(GENERATE, "http")  # a request's own fields: the model's and stream around them
GENERATE_FIELDS = ("model", *(row.name for row in HTTP_ROWS), "stream")
TRANSLATE_ROWS = for_command(TRANSLATE, "http")  # beam, max_length, length_penalty, unknown
TRANSLATE_FIELDS = ("model", "inputs", *(row.name for row in TRANSLATE_ROWS))
ATTENTION_FIELDS = ("model", "input", "unknown")
INSIDE_FIELDS = ("model", "text", "top_k", "units")
INSIDE_UNITS = 16  # the units a request may ask for beside those the ranking found


def create_app(catalog: dict[str, Served], limits: Limits = Limits(), allowed_hosts: tuple[str, ...] | None = None,
               threads: int | None = None, precision: str = "fp32", api_key: str | None = None,
               chat_template: ChatTemplate = ChatTemplate()) -> Starlette:
    """The app serving `catalog`'s models. `allowed_hosts`: the Host names a request may give (a
    page on another site cannot then reach a loopback server by DNS rebinding); None: any.
    `threads`: torch's CPU threads for each language model's batcher (None: the cores free, shared);
    `precision` its steps' (see `Batcher`). `api_key`: the key every /v1/ request must show
    (None: none). `chat_template`: how /v1/chat/completions writes a conversation."""
    # One count of the cores free for every batcher, less one for the requests and streams: on 2 cores a batcher
    # of 24 streams on both ran no faster than on one (scripts/bench_serve.py), on a busy one far slower.
    cores = FreeCores(kept=1) if threads is None else None
    batchers = {name: Batcher(served.model.model, served.model.vocab, served.model.meta.tokens, name, threads,
                              precision, served.path, cores)
                for name, served in catalog.items() if served.task == "lm"}
    translating = {name: threading.Lock() for name in catalog}  # a worker's turn per model (pairs; /v1/inside)
    slots = Slots(limits.in_flight)
    page = {path: (resources.files("charlm.serve").joinpath("static", name).read_bytes(), kind)
            for path, (name, kind) in PAGE_FILES.items()}
    page["/inside.js"] = (script().encode("utf-8"), "text/javascript")  # the inside view, as `charlm inside --html`'s

    def pick(name: str | None, task: str | None) -> Served:
        """The model named (None: the first of `task`), of `task` (None: any)."""
        what = "language model" if task == "lm" else "translation model"
        if name is None:
            served = next((served for served in catalog.values() if served.task == task), None)
            if served is None:
                raise RequestError(f"no {what} is served here", 404, "model", "model_not_found")
            return served
        if name not in catalog:
            raise RequestError(f"no model named {shown(name)}; GET /v1/models lists them", 404, "model",
                               "model_not_found")
        if task is not None and catalog[name].task != task:
            raise RequestError(f"model {shown(name)} is not a {what}", param="model")
        return catalog[name]

    async def page_file(request: Request) -> Response:
        content, kind = page[request.url.path]
        return Response(content, media_type=kind, headers=PAGE_HEADERS)

    async def metrics(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in catalog:
            raise RequestError(f"no model named {shown(name)}; GET /v1/models lists them", 404)
        return Json({"model": name, **json_safe(await run_in_threadpool(catalog[name].metrics))})

    async def generate(request: Request) -> Response:
        fields = Fields(await read_json(request, limits), GENERATE_FIELDS)
        served = pick(fields.text("model", None, 200), "lm")
        values = {row.name: fields.setting(row, *limits.bounds(row.name)) for row in HTTP_ROWS}
        asked = GenerationRequest.from_fields(values, said="field")
        streaming = fields.boolean("stream", False)
        meta = served.model.meta
        prefix_ids = encode_prefix(asked.prefix, served.model.vocab, meta.tokens, meta.preprocess, asked.unknown)
        job = Job(batchers[served.name], slots, [(asked, prefix_ids)], streaming)
        if streaming:
            return EventStream(stream_events(served.name, job), job.close, limits.write_seconds, job.stopping)
        try:
            if not await job.finished(request):
                return Response(status_code=499)
            return Json({"model": served.name, "seed": job.generations[0].seed, "samples": job.pieces.samples})
        finally:
            job.close()

    async def stream_events(name: str, job: Job) -> AsyncIterator[str]:
        """An event per sample's piece of text as it is made (the pieces of `STREAM_INTERVAL`
        joined, its events written at once), then `done`, or `error` if the generation failed (the
        batcher has logged why)."""
        async for taken, ended in job.taken_pieces():
            events = [event({"sample": sample, "text": text}) for sample, text, _ in taken]
            if ended:
                events.append(event({"error": job.failure}, "error") if job.failure is not None else
                              event({"model": name, "seed": job.generations[0].seed}, "done"))
            yield "".join(events)  # one write

    async def translate(request: Request) -> Response:
        fields = Fields(await read_json(request, limits), TRANSLATE_FIELDS)
        served = pick(fields.text("model", None, 200), "translate")
        inputs = fields.texts("inputs", limits.inputs, limits.input_chars)
        asked = {row.name: fields.setting(row, *limits.bounds(row.name)) for row in TRANSLATE_ROWS}
        outputs = await in_worker(served, lambda: served.model.translate(inputs, *asked.values()))  # in the rows' order
        return Json({"model": served.name, "outputs": outputs})

    async def attention(request: Request) -> Response:
        fields = Fields(await read_json(request, limits), ATTENTION_FIELDS)
        served = pick(fields.text("model", None, 200), "translate")
        text = fields.text("input", None, limits.input_chars)
        if text is None:
            raise RequestError("input must be a string, got null")
        unknown = fields.setting(TRANSLATE["unknown"])
        found = await in_worker(served, lambda: served.model.attention(text, unknown))
        return Json({"model": served.name, "source": found["source"], "output": found["output"],
                     "weights": found["weights"].tolist()})

    async def inside(request: Request) -> Response:
        fields = Fields(await read_json(request, limits), INSIDE_FIELDS)
        served = pick(fields.text("model", None, 200), "lm")
        text = fields.text("text", None, limits.inside_chars)
        if text is None:
            raise RequestError("text must be a string, got null", param="text")
        top_k = fields.integer("top_k", 5, 1, limits.top_k)
        units = fields.texts("units", INSIDE_UNITS, 200, required=False)
        seen = await in_worker(served, lambda: served.model.inspect(text, top_k))
        try:
            return Json({"model": served.name, **view_data(seen, seen.rank_units(), units)})
        except KeyError as missing:
            raise RequestError(f"units: this model has no unit {shown(missing.args[0])}; a unit is a layer "
                               f"({', '.join(sorted(seen.activations))}) and an index below its size", param="units") from None

    @contextlib.contextmanager
    def worker_threads() -> Iterator[None]:
        """Torch's threads for a worker's turn: `threads`, or the cores free, shared with the batchers working
        (none kept: its request waits for it, and the streams are the batchers')."""
        turn = object()
        try:
            with cpu_threads(threads if cores is None else cores.share(turn, True, keep=False)):
                yield
        finally:
            if cores is not None:
                cores.share(turn, False)

    async def in_worker(served: Served, work: Callable[[], Any]) -> Any:
        """A model's work in a worker thread (a pair model's, or looking inside a language model),
        one at a time per model, counted in `slots`."""
        slots.take()
        try:
            def locked() -> Any:
                door = DOOR.set("field")  # the API's errors name a request's fields
                try:
                    with translating[served.name], worker_threads():
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
        unread = {"Connection": "close"} if problem.status in (408, 413) else None  # its body not read whole
        return error(str(problem), problem.status, request.url.path, problem.param, problem.code, unread)

    async def user_error(request: Request, problem: CharlmError) -> Response:  # the settings named as fields
        message = in_terms(str(problem), "field", [*GENERATE.values(), *TRANSLATE.values()])
        param = problem.setting if isinstance(problem, SettingError) else None
        return error(message, 400, request.url.path, OPENAI_NAMES.get(param, param))

    async def http_error(request: Request, problem: HTTPException) -> Response:
        message = {404: f"no such path: {request.url.path}", 405: f"{request.method} is not allowed here"}
        return error(message.get(problem.status_code, problem.detail), problem.status_code, request.url.path)

    async def disconnected(request: Request, problem: ClientDisconnect) -> Response:
        return Response(status_code=499)

    async def server_error(request: Request, problem: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=problem)
        return error("the server failed on this request; its log says why", 500, request.url.path)

    routes = [*(Route(path, page_file) for path in page), Route("/v1/models/{name}/metrics", metrics),
              Route("/v1/generate", generate, methods=["POST"]), Route("/v1/translate", translate, methods=["POST"]),
              Route("/v1/attention", attention, methods=["POST"]), Route("/v1/inside", inside, methods=["POST"]),
              *openai_routes(catalog, batchers, slots, limits, pick, chat_template)]
    middleware = [Middleware(HostCheck, allowed=allowed_hosts)] if allowed_hosts is not None else []
    if api_key is not None:
        middleware.append(Middleware(KeyCheck, key=api_key))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers={
        RequestError: refused, CharlmError: user_error, HTTPException: http_error, ClientDisconnect: disconnected,
        Exception: server_error})
    app.state.batchers, app.state.slots, app.state.stop = batchers, slots, stop  # stop: for the server, at once
    return app
