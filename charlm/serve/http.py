"""The JSON a request sends and the JSON it gets back: a body read once and bounded (`read_json`),
an answer written (`Json`), and an error in the dialect of the route it reached: charlm's own,
`{"error": "..."}`, or OpenAI's, `{"error": {"message", "type", "param", "code"}}`, which its
clients turn into their own error classes by the status.

Which dialect a path speaks is decided here (`speaks_openai`): charlm's own routes and the page
keep theirs; every other path under /v1/ (/v1/completions, /v1/chat/completions, /v1/models, a
path that does not exist) answers as OpenAI does. It knows nothing about models or generation.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from charlm.serve.fields import Limits, RequestError

NATIVE_PATHS = ("/v1/generate", "/v1/translate", "/v1/attention", "/v1/inside")  # and /v1/models/{name}/metrics


def speaks_openai(path: str) -> bool:
    """Whether an error on `path` is written in OpenAI's shape."""
    return path.startswith("/v1/") and path not in NATIVE_PATHS and not path.endswith("/metrics")


class Json(JSONResponse):
    """JSON in ASCII: a lone surrogate from a vocab is written escaped, not a failed encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def openai_error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object: its `type` from the status, as OpenAI's API gives it."""
    kind = "server_error" if status >= 500 else "requests" if status == 429 else "invalid_request_error"
    return {"error": {"message": " ".join(str(message).split()), "type": kind, "param": param, "code": code}}


def error(message: str, status: int, path: str = "", param: str | None = None, code: str | None = None,
          headers: dict[str, str] | None = None) -> Json:
    """The error answer on `path`, in its dialect."""
    if speaks_openai(path):
        return Json(openai_error_body(message, status, param, code), status_code=status, headers=headers)
    return Json({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


async def read_json(request: Request, limits: Limits) -> dict[str, Any]:
    """The body as a JSON object: application/json, at most `limits.body_bytes` (a longer one is
    refused as soon as its length is known), all of it within `limits.read_seconds` (a client that
    sends it slowly, or never, is a 408 rather than a request held open), UTF-8, no NaN or Infinity."""
    limit, seconds = limits.body_bytes, limits.read_seconds
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise RequestError("send the body as JSON with Content-Type: application/json", 415)
    declared = request.headers.get("content-length", "")
    if declared and (not declared.isdigit() or int(declared) > limit):
        raise RequestError(f"the body is larger than {limit:,} bytes", 413)
    body = bytearray()

    async def read() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise RequestError(f"the body is larger than {limit:,} bytes", 413)

    try:
        await asyncio.wait_for(read(), seconds)
    except asyncio.TimeoutError:
        raise RequestError(f"the body did not arrive within {seconds:g} s", 408) from None

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
