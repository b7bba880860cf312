"""The OpenAI dialect's answers, so that the `openai` client and chat front-ends work against
`charlm serve`:

    GET  /v1/models                  {"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]}
    GET  /v1/models/{name}           one of them
    POST /v1/completions             text_completion objects, or their chunks as server-sent events
    POST /v1/chat/completions        chat.completion objects, or chat.completion.chunk deltas

A stream ends with `data: [DONE]`. Each prompt is a `charlm.serve.jobs.Job`'s generation on the
model's batcher, so its text is exactly what `charlm generate` prints for the same settings and
seed, batched or not. Log-probabilities are the model's own (before the temperature, penalties
and filters, as vLLM reports them); with `echo`, a prompt's tokens are listed with none.

The requests are read by `charlm.serve.openai_requests`; the routes here only answer them. It
knows nothing about sampling beyond the `Sample`s a generation ends with.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from charlm.generation.continuation import Sample, Token
from charlm.generation.sampling import encode_prefix, token_gap
from charlm.serve.batcher import Batcher
from charlm.serve.catalog import Served
from charlm.serve.chat import ChatTemplate
from charlm.serve.fields import Limits, Slots
from charlm.serve.http import Json, openai_error_body, read_json
from charlm.serve.jobs import Job
from charlm.serve.openai_requests import Asked, read_chat, read_completion
from charlm.serve.streaming import EventStream, event
from charlm.text.tokens import Tokenizer


def model_object(served: Served) -> dict[str, Any]:
    """A model as OpenAI lists one; charlm's own description of it under "charlm"."""
    try:
        created = int(os.path.getmtime(served.path))
    except OSError:
        created = 0
    return {"id": served.name, "object": "model", "created": created, "owned_by": "charlm",
            "charlm": served.listing()}


class _Answer:
    """What one request's answer is made of: its job, its choices' prompts shown, ids and names."""

    def __init__(self, asked: Asked, served: Served, job: Job, prompt_ids: list[list[int]], chat: bool) -> None:
        self.asked, self.served, self.job, self.chat = asked, served, job, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        gap = token_gap(Tokenizer(served.model.meta.tokens))
        self.prompt_tokens = sum(len(ids) for ids in prompt_ids)
        self.shown: list[list[Token]] = []  # each choice's prompt as its tokens (as `shown_prefix` joins them)
        for request, ids in zip(asked.requests, prompt_ids):
            listed = [Token(("" if index == 0 else gap) + token) for index, token in
                      enumerate(served.model.vocab.decode(ids))]
            if listed and gap:  # the gap before the first new word
                listed[-1] = Token(listed[-1].text + gap)
            self.shown += [listed] * request.num_samples

    def samples(self) -> list[Sample]:
        return [sample for generation in self.job.generations for sample in generation.continuation.samples]

    def head(self, suffix: str = "") -> dict[str, Any]:
        return {"id": self.id, "object": self.object + suffix, "created": self.created, "model": self.served.name}

    def usage(self) -> dict[str, int]:
        made = sum(sample.drawn for sample in self.samples())
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": made, "total_tokens": self.prompt_tokens + made}

    def logprobs(self, index: int, tokens: list[Token], start: int) -> dict[str, Any] | None:
        """A choice's log-probabilities for `tokens`, its text so far `start` characters long."""
        top = self.asked.requests[0].logprobs
        if top is None:
            return None
        if self.chat:
            return {"content": [{"token": token.text, "logprob": token.logprob, "bytes": _bytes(token.text),
                                 "top_logprobs": [{"token": text, "logprob": value, "bytes": _bytes(text)}
                                                  for text, value in list(token.top.items())[:top]]}
                                for token in tokens]}
        offsets = []
        for token in tokens:
            offsets.append(start)
            start += len(token.text)
        return {"tokens": [token.text for token in tokens], "token_logprobs": [token.logprob for token in tokens],
                "top_logprobs": [token.top for token in tokens], "text_offset": offsets}

    def choice(self, index: int, text: str, tokens: list[Token], finish_reason: str | None, start: int = 0,
               first: bool = False) -> dict[str, Any]:
        """One choice of an answer (`finish_reason` None: of a chunk)."""
        logprobs = self.logprobs(index, tokens, start)
        if not self.chat:
            return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}
        if finish_reason is not None and not tokens and not first:  # a stream's last chunk of this choice
            return {"index": index, "delta": {}, "logprobs": None, "finish_reason": finish_reason}
        content = {"role": "assistant", "content": text}
        if start or not first:
            content = {"content": text}
        key = "delta" if finish_reason is None else "message"
        return {"index": index, key: content, "logprobs": logprobs, "finish_reason": finish_reason}

    def whole(self) -> dict[str, Any]:
        choices = []
        for index, sample in enumerate(self.samples()):
            prompt = self.shown[index] if self.asked.echo else []
            text = "".join(token.text for token in prompt) + sample.text
            choices.append(self.choice(index, text, prompt + sample.tokens, sample.finish_reason, first=True))
        return {**self.head(), "choices": choices, "usage": self.usage()}

    async def chunks(self) -> AsyncIterator[str]:
        """The answer as server-sent events: chunks as the text is made, each choice's last with
        its finish reason, the usage if asked, then [DONE]; a failure as OpenAI's error object."""
        written = [0] * len(self.shown)
        if self.chat:  # each choice's role first, in one write
            yield "".join(event({**self.head(".chunk"), "choices": [self.choice(index, "", [], None, first=True)]})
                          for index in range(len(self.shown)))
        async for taken, ended in self.job.taken_pieces():
            choices = []
            for index, text, tokens in taken:
                if tokens is None:  # a prompt, shown first
                    if not self.asked.echo:
                        continue
                    tokens = self.shown[index]
                if text:
                    choices.append(self.choice(index, text, tokens, None, written[index]))
                    written[index] += len(text)
            if choices:
                yield event({**self.head(".chunk" if self.chat else ""), "choices": choices})
            if ended and self.job.failure is not None:
                yield event(openai_error_body(self.job.failure, 503 if "stopping" in self.job.failure else 500))
                return
        last = [event({**self.head(".chunk" if self.chat else ""),
                       "choices": [self.choice(index, "", [], sample.finish_reason)]})
                for index, sample in enumerate(self.samples())]
        if self.asked.include_usage:
            last.append(event({**self.head(".chunk" if self.chat else ""), "choices": [], "usage": self.usage()}))
        yield "".join(last) + "data: [DONE]\n\n"  # one write


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8", "surrogatepass"))


def openai_routes(catalog: dict[str, Served], batchers: dict[str, Batcher], slots: Slots, limits: Limits,
                  pick: Callable[[str | None, str], Served], template: ChatTemplate) -> list[Route]:
    """The routes of the OpenAI dialect over the app's models, batchers and slots."""

    async def models(request: Request) -> Response:
        return Json({"object": "list", "data": [model_object(served) for served in catalog.values()],
                     "models": [served.listing() for served in catalog.values()]})  # charlm's own listing, as before

    async def model(request: Request) -> Response:
        return Json(model_object(pick(request.path_params["name"], None)))

    async def answer(request: Request, asked: Asked, chat: bool) -> Response:
        served = pick(asked.model, "lm")
        meta = served.model.meta
        prompt_ids = [encode_prefix(ask.prefix, served.model.vocab, meta.tokens, meta.preprocess, ask.unknown,
                                    "prompt" if not chat else "conversation")
                      for ask in asked.requests]
        job = Job(batchers[served.name], slots, list(zip(asked.requests, prompt_ids)), asked.stream, tokens=True)
        made = _Answer(asked, served, job, prompt_ids, chat)
        if asked.stream:
            return EventStream(made.chunks(), job.close, limits.write_seconds, job.stopping)
        try:
            if not await job.finished(request):
                return Response(status_code=499)
            return Json(made.whole())
        finally:
            job.close()

    async def completions(request: Request) -> Response:
        return await answer(request, read_completion(await read_json(request, limits), limits), False)

    async def chat(request: Request) -> Response:
        asked = read_chat(await read_json(request, limits), limits, template)
        return await answer(request, asked, True)

    return [Route("/v1/models", models), Route("/v1/models/{name}", model),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"])]
