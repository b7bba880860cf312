"""`charlm serve`: checkpoints behind an HTTP API and a playground page, until Ctrl-C.

Finding and loading the models is `charlm.serve.catalog`'s, the API `charlm.serve.app`'s and the
socket `charlm.serve.server`'s; this module says where it serves and warns when that is beyond
this machine.
"""

from __future__ import annotations

import click

from charlm.cli import device_option, options
from charlm.settings import SERVE


@click.command()
@click.argument("checkpoints", nargs=-1, type=click.Path(path_type=str))
@options(SERVE, "serve")
@device_option
def serve(checkpoints: tuple[str, ...], host: str, port: int, threads: int, device: str, precision: str) -> None:
    """Serve CHECKPOINTS (files or folders; default: every model in checkpoints/) behind an HTTP
    API and a playground page; needs charlm[serve].

    \b
    charlm serve
    charlm serve checkpoints/timemachine.safetensors --port 8080
    """
    from charlm.serve import require_extra

    require_extra()
    from charlm.serve.app import LOOPBACK_HOSTS, create_app
    from charlm.serve.catalog import load_catalog
    from charlm.serve.server import bind, is_loopback, serve_forever, url

    catalog = load_catalog(list(checkpoints), device)
    loopback = is_loopback(host)
    if not loopback:
        click.echo(f"warning: serving on {host}, which other machines can reach; the API has no authentication",
                   err=True)
    sock = bind(host, port)
    app = create_app(catalog, allowed_hosts=LOOPBACK_HOSTS if loopback else None, threads=threads, precision=precision)
    for name, batcher in app.state.batchers.items():
        if batcher.note:
            click.echo(f"{name}: {batcher.note}", err=True)
    names = ", ".join(f"{name} ({served.task})" for name, served in catalog.items())
    click.echo(f"serving {names} at {url(sock)} (Ctrl-C stops)", err=True)
    serve_forever(app, sock, on_stop=app.state.stop)
