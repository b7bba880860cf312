"""Running the app on a socket: the only home of uvicorn.

`bind` opens the listening socket (port 0: a free one), `serve_forever` serves on it until
Ctrl-C or SIGTERM (uvicorn's own signal handling: in-flight requests get a moment to end, and no
traceback), and `running` serves from a thread for as long as a `with` block lasts (the browser
test and the bench). It knows nothing about what the app serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from charlm.serve.streaming import STOPPING_SECONDS, WRITE_POLL

GRACEFUL_SECONDS = 2  # what a stopping server gives in-flight requests


class EndedStreams(logging.Filter):
    """Drops uvicorn's line on a response the app left unfinished: the app does so only when it
    ends the stream of a client that is not reading (`charlm.serve.streaming.EventStream`), and
    says so itself in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing response."


def log_config() -> dict[str, Any]:
    """uvicorn's logging, all of it on stderr (its access lines too: stdout is for generated text),
    and charlm's own errors (a failed request's traceback) through the same handler."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    config["filters"] = {"ended_streams": {"()": EndedStreams}}
    config["loggers"]["uvicorn.error"]["filters"] = ["ended_streams"]
    config["loggers"]["charlm"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host`:`port`; an `OSError` if it cannot be had."""
    family, kind, protocol, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, protocol)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(128)
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


class _Server(uvicorn.Server):
    """uvicorn's server, calling `on_stop` as it starts to stop: streams that would outlast the
    grace period end then, rather than be cancelled in the middle (those of clients not reading
    within `STOPPING_SECONDS`), and a connection whose answer waits only on a client that is
    not reading is dropped, rather than waited for."""

    def __init__(self, app: Any, log_level: str, on_stop: Callable[[], None] | None) -> None:
        super().__init__(uvicorn.Config(app, log_config=log_config(), log_level=log_level,
                                        timeout_graceful_shutdown=GRACEFUL_SECONDS))
        self.on_stop = on_stop
        self.stopped_by: int | None = None  # the signal that stopped it

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.stopped_by = sig
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.on_stop is not None:
            self.on_stop()
            await asyncio.sleep(STOPPING_SECONDS + 2 * WRITE_POLL)  # the streams of clients not reading end
        for connection in list(self.server_state.connections):
            transport, cycle = connection.transport, connection.cycle
            done = cycle is None or cycle.response_complete or transport.is_closing()  # written, or given up
            if done and transport.get_write_buffer_size():  # and what is left waits on a client not reading
                transport.abort()
        await super().shutdown(sockets)


def serve_forever(app: Any, sock: socket.socket, on_stop: Callable[[], None] | None = None,
                  log_level: str = "info") -> None:
    """Serve `app` on `sock` until the process is told to stop; then `on_stop()`, and in-flight
    requests get `GRACEFUL_SECONDS` to end."""
    server = _Server(app, log_level, on_stop)
    server.run(sockets=[sock])  # uvicorn raises the signal it caught again once stopped: Ctrl-C's KeyboardInterrupt
    if server.stopped_by == signal.SIGINT:  # unless the process was started with SIGINT ignored (nohup, `&`)
        raise KeyboardInterrupt


@contextlib.contextmanager
def running(app: Any, host: str = "127.0.0.1", port: int = 0, on_stop: Callable[[], None] | None = None,
            log_level: str = "warning") -> Iterator[str]:
    """Serve `app` from a thread for the block; it gets the server's URL."""
    sock = bind(host, port)
    server = _Server(app, log_level, on_stop)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server stopped before it started")
            time.sleep(0.01)
        yield url(sock)
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
