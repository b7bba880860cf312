"""`charlm serve`: checkpoints behind an HTTP API and a playground page, until Ctrl-C.

Finding and loading the models is `charlm.serve.catalog`'s, the API `charlm.serve.app`'s and the
socket `charlm.serve.server`'s; this module says where it serves, refuses to serve beyond this
machine without a key unless told to (--allow-no-key), and warns when it does.
"""

from __future__ import annotations

import click

from charlm.cli import device_option, escaped, options
from charlm.settings import SERVE


@click.command()
@click.argument("checkpoints", nargs=-1, type=click.Path(path_type=str))
@options(SERVE, "serve")
@device_option
def serve(checkpoints: tuple[str, ...], host: str, port: int, threads: int, device: str, precision: str,
          api_key: str | None, allow_no_key: bool, chat_template: str) -> None:
    """Serve CHECKPOINTS (files or folders; default: every model in checkpoints/) behind an HTTP
    API (charlm's own and OpenAI's) and a playground page; needs charlm[serve].

    \b
    charlm serve
    charlm serve checkpoints/timemachine.safetensors --port 8080
    CHARLM_API_KEY=secret charlm serve --host 0.0.0.0
    """
    from charlm.errors import UsageError
    from charlm.serve import require_extra

    require_extra()
    from charlm.serve.app import LOOPBACK_HOSTS, create_app
    from charlm.serve.catalog import load_catalog
    from charlm.serve.chat import ChatTemplate
    from charlm.serve.guards import canonical, is_loopback
    from charlm.serve.server import bind, serve_forever, url

    template = ChatTemplate(chat_template)
    if api_key is not None and not api_key.strip():
        raise UsageError("--api-key must not be empty")
    loopback = is_loopback(host)
    if not loopback and api_key is None and not allow_no_key:
        raise UsageError(f"--host {host} can be reached from other machines: give a key (--api-key KEY, or "
                         "CHARLM_API_KEY) or, to serve anyone who can reach it, --allow-no-key")
    catalog = load_catalog(list(checkpoints), device)
    if not loopback and api_key is None:
        click.echo(f"warning: serving on {escaped(host)}, which other machines can reach, without a key "
                   "(--allow-no-key)", err=True)
    sock = bind(canonical(host), port)  # `localhost.` as `localhost`, which not every resolver does
    hosts = tuple(dict.fromkeys((*LOOPBACK_HOSTS, canonical(host))))  # and the loopback address it was told
    app = create_app(catalog, allowed_hosts=hosts if loopback else None, threads=threads, precision=precision,
                     api_key=api_key, chat_template=template)
    for name, batcher in app.state.batchers.items():
        if batcher.note:
            click.echo(f"{escaped(name)}: {batcher.note}", err=True)
    names = ", ".join(f"{escaped(name)} ({served.task})" for name, served in catalog.items())  # from file names
    key = ", a key required" if api_key is not None else ""
    click.echo(f"serving {names} at {url(sock)} (OpenAI's API at {url(sock)}v1{key}; Ctrl-C stops)", err=True)
    serve_forever(app, sock, on_stop=app.state.stop)
