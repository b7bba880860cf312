"""`charlm serve`: the models of some checkpoints behind an HTTP API and a playground page.

    catalog.py   the checkpoints served, found, loaded and named once at start
    batcher.py   a language model's requests, stepped together as one batch
    fields.py    what a request may ask: each field's type and bounds (Limits), how many at once
    app.py       the routes, the page (static/), streams; Starlette
    server.py    running the app on a socket; uvicorn

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
