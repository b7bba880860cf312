"""`charlm inside`: what a language model made of a text file, token by token: the text coloured by
its surprise in the terminal, the units that follow simple features of the text, and with `--html`
the same view as one self-contained page to open or share.

Looking inside is the Python API's (`TextModel.inspect`, `Inside.rank_units`); this module renders it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from charlm.cli import CHECKPOINT_DIR, checkpoint_or_latest, device_option, escaped, is_terminal

MAX_CHARACTERS = 200_000  # a file longer than this is cut (said on stderr): the view is for reading
SHADES = (231, 224, 217, 210, 203, 196)  # xterm-256 backgrounds, from no surprise to the most


@click.command("inside")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=str), default=None,
              help=f"A language-model checkpoint [default: the newest in {CHECKPOINT_DIR}/].")
@click.option("--html", "page", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the view as one self-contained HTML file here: coloured by surprise or by a unit, "
                   "what the model expected on hover.")
@click.option("--top-k", type=click.IntRange(1, 20), default=5, show_default=True,
              help="How many expected tokens each position keeps.")
@click.option("--color/--no-color", default=None, help="Colour the text by surprise [default: on a terminal].")
@device_option
def inside(file: Path, checkpoint: str | None, page: Path | None, top_k: int, color: bool | None,
           device: str) -> None:
    """The text of FILE coloured by how surprised the model was by each character (darker: more), the
    mean surprise, and the units that follow simple features of the text best.

    \b
    charlm inside notes.txt
    charlm inside corpora/tinyshakespeare.txt --checkpoint checkpoints/tinyshakespeare.safetensors --html inside.html
    """
    from charlm.errors import UsageError
    from charlm.evaluation.inside import attention_fits
    from charlm.evaluation.inside_page import inside_page
    from charlm.runtime.device import pick_device
    from charlm.trained import TextModel

    path = checkpoint_or_latest(checkpoint, "lm")
    if page is not None and any(page.exists() and page.samefile(given) for given in (file, path)):
        raise UsageError(f"--html {escaped(str(page))} is the file read from; name a new page to write")
    model = TextModel(path, pick_device(device))
    most = min(MAX_CHARACTERS, attention_fits(model.model) or MAX_CHARACTERS)  # a transformer keeps its attention
    text = file.read_text(encoding="utf-8", errors="replace")
    if len(text) > most:
        click.echo(f"note: {file} is looked inside up to its first {most:,} characters", err=True)
        text = text[:most]
    seen = model.inspect(text, top_k=top_k)
    ranked = seen.rank_units()
    colored = is_terminal(sys.stdout) if color is None else color
    bits = [value for value in seen.surprise if value is not None]
    top = seen.saturation()
    pieces = []
    for token, value in zip(seen.tokens, seen.surprise):
        shown = escaped(token, keep="\n")
        if colored and value is not None and token != "\n":
            shade = SHADES[min(int(value / top * (len(SHADES) - 1)), len(SHADES) - 1)]
            shown = f"\x1b[48;5;{shade}m\x1b[38;5;16m{shown}\x1b[0m"
        pieces.append(shown)
    click.echo("".join(pieces), color=colored)  # click would strip the colours when stdout is not a terminal
    click.echo(f"{len(bits):,} tokens predicted: {seen.mean_surprise():.4f} nats, "
               f"{sum(bits) / max(len(bits), 1):.3f} bits each on average", err=True)
    for feature, found in ranked.items():
        units = ", ".join(f"{unit} (r {r:+.2f})" for unit, r in found)
        click.echo(f"{feature}: {units}", err=True)
    if page is not None:
        from charlm.runtime.files import atomic_write

        atomic_write(page, inside_page(seen, ranked, f"{file.name} inside {Path(path).name}").encode("utf-8"))
        click.echo(f"wrote {page}", err=True)
