"""`charlm serve`: checkpoints behind an HTTP API and a playground page, until Ctrl-C.

Finding and loading the models is `charlm.serve.catalog`'s, the API `charlm.serve.app`'s and the
socket `charlm.serve.server`'s; this module says where it serves and warns when that is beyond
this machine.
"""

from __future__ import annotations

import click

from charlm.cli import MAX_THREADS, device_option
from charlm.presets import PRECISIONS


@click.command()
@click.argument("checkpoints", nargs=-1, type=click.Path(path_type=str))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on; anything but a loopback address is reachable from other machines.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="The port to listen on (0: a free one).")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=1, show_default=True,
              help="CPU threads for torch per language model: a batch's step is small, and on a small or shared "
                   "machine one thread is fastest.")
@device_option
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="Of the generation steps' matrix products. auto: bf16 where this machine has bf16 matrix units and "
                   "a step measures faster in it both for one request and for a full batch, with the same next-token "
                   "odds, else fp32 (the text of `charlm generate --precision fp32`).")
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
