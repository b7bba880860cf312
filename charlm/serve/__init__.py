"""`charlm serve`: the models of some checkpoints behind an HTTP API and a playground page.

    catalog.py          the checkpoints served, found, loaded and named once at start
    batcher.py          a language model's requests, stepped together as one batch
    fields.py           what a request may ask: each field's type and bounds (Limits), how many at once
    streaming.py        text from the batcher's thread to a request's event loop; server-sent events
    jobs.py             a request's generations on a batcher, awaited or streamed
    http.py             a JSON body read, an answer written, an error in the path's dialect
    guards.py           the Host a request names and the key it shows
    chat.py             the chat template: a conversation as text
    openai_requests.py  OpenAI's completion and chat bodies read into charlm's requests
    openai_routes.py    OpenAI's routes: models, completions, chat completions
    app.py              the routes, the page (static/); Starlette
    server.py           running the app on a socket; uvicorn

Starlette and uvicorn are an optional extra (`pip install 'charlm[serve]'`): `require_extra`
says so in one line where they are missing. Nothing here imports them at import time.
"""

from __future__ import annotations

import importlib.util

from charlm.errors import MissingExtra

INSTALL_HINT = "pip install 'charlm[serve]'"


def require_extra() -> None:
    """A `MissingExtra` naming the extra unless Starlette and uvicorn are installed."""
    missing = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra(f"charlm serve needs {' and '.join(missing)}, an optional extra: {INSTALL_HINT}")
