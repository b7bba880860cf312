"""`charlm plot`: training curves of one or several runs on one figure (`charlm.plot` draws them)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("curve.png"), show_default=True,
              help="The picture to write (.png, .svg or .pdf).")
@click.option("--title", default=None, help="A title above the plots.")
def plot(runs: tuple[Path, ...], out: Path, title: str | None) -> None:
    """Loss and perplexity against tokens seen, for one or several RUNS on one figure.

    A run is its metrics file (X.metrics.jsonl) or its checkpoint (X.safetensors), whose
    metrics file is beside it. Needs matplotlib: pip install 'charlm[plot]'.

    \b
    charlm plot checkpoints/timemachine.safetensors
    charlm plot runs/lstm.metrics.jsonl runs/gru.metrics.jsonl --out compare.png
    """
    from charlm.plot import plot_runs

    for note in plot_runs(list(runs), out, title):
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {out}", err=True)
