"""Who may ask: the Host a request names (`HostCheck`, against DNS rebinding of a loopback
server; `is_loopback` says which hosts are) and the key it shows (`KeyCheck`, `Authorization:
Bearer KEY`, as OpenAI's clients send it). Each refuses with one line in the dialect of the path (`charlm.serve.http.error`).

They know nothing about the routes behind them.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from charlm.serve.fields import shown
from charlm.serve.http import error


def canonical(host: str) -> str:
    """A host as one spelling: lower case, without brackets or the root's final dot, an address
    as `ipaddress` writes it (an IPv4 address mapped into IPv6 as itself): `LOCALHOST.`, `[::1]`,
    `[0:0:0:0:0:0:0:1]` and `[::ffff:127.0.0.1]` are `localhost`, `::1`, `::1` and `127.0.0.1`."""
    name = host.strip().lower().removeprefix("[").removesuffix("]").removesuffix(".")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:  # a name
        return name
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable only from this machine: `localhost` or a loopback address."""
    name = canonical(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a name: it may resolve to anything
        return False


class HostCheck:
    """Refuses a request whose Host header names none of `allowed` (port aside; each name in any
    of its spellings, `canonical`)."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app, self.allowed, self.names = app, allowed, {canonical(name) for name in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host[: host.find("]") + 1] if host.startswith("[") else host.rsplit(":", 1)[0]
            if canonical(name) not in self.names:
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
