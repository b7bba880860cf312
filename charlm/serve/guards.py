"""Who may ask: the Host a request names (`HostCheck`, against DNS rebinding of a loopback
server) and the key it shows (`KeyCheck`, `Authorization: Bearer KEY`, as OpenAI's clients send
it). Each refuses with one line in the dialect of the path (`charlm.serve.http.error`).

They know nothing about the routes behind them.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from charlm.serve.fields import shown
from charlm.serve.http import error


class HostCheck:
    """Refuses a request whose Host header names none of `allowed` (port aside)."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
            if name.lower() not in self.allowed:
                await error(f"this server answers to {', '.join(self.allowed)}, not {shown(host)}", 421,
                            scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)


class KeyCheck:
    """Refuses a request to the API (every path under /v1/; the page itself is served to anyone,
    and asks for the key) that does not say `Authorization: Bearer KEY` with `key`: a 401."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self.key = app, key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                message = ("this server needs an API key: send Authorization: Bearer KEY" if not given else
                           "the API key is not this server's")
                await error(message, 401, scope["path"], code="invalid_api_key",
                            headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)
