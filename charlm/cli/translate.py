"""`charlm translate`: each word given, or each line of stdin as it comes, through a translation model.

Translating is `charlm.PairModel`'s, as for a program; this module reads stdin (`stdin_lines`) and
writes one line per input.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from charlm.cli import CHECKPOINT_DIR, checkpoint_or_latest, device_option, options, write
from charlm.settings import TRANSLATE


@click.command("translate")
@click.argument("words", nargs=-1)
@click.option("--checkpoint", type=click.Path(path_type=str), default=None,
              help=f"A translation checkpoint [default: the newest in {CHECKPOINT_DIR}/].")
@options(TRANSLATE, "translate")
@click.option("--attention-plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Draw the attention weights of the one input as a heat map to this PNG (needs charlm[plot]).")
@device_option
def translate_command(words: tuple[str, ...], checkpoint: str | None, beam: int, length_penalty: float,
                      max_length: int | None, attention_plot: Path | None, unknown: str, device: str) -> None:
    """Translate each WORD, or each line of stdin as it comes when no WORD is given: one line out
    per input.

    \b
    charlm translate man king
    printf 'hello\\nhihell\\n' | charlm translate --checkpoint checkpoints/hihell.safetensors
    charlm translate --checkpoint checkpoints/fra-eng-20k.safetensors --beam 5 "I'm cold."
    charlm translate --checkpoint checkpoints/fra-eng-20k.safetensors --attention-plot a.png "Go away."
    """
    from charlm.trained import PairModel
    from charlm.runtime.device import pick_device

    texts = list(words) or None  # None: each line of stdin, translated as it comes
    if attention_plot:
        texts = texts or list(itertools.islice(stdin_lines(unknown), 2))
        if len(texts) != 1:
            got = len(texts) if words else "more than one line" if texts else "no line"
            raise click.UsageError(f"--attention-plot draws one input; got {got}")
    model = PairModel(checkpoint_or_latest(checkpoint, "translate"), pick_device(device))

    def translated(inputs: list[str]) -> list[str]:
        return model.translate(inputs, beam, max_length, length_penalty, unknown)

    if texts is None:  # a line's answer is out before the next line is read: `yes man |` works
        for line in stdin_lines(unknown):
            write(translated([line])[0], keep="", end="\n")
        return
    outputs = translated(texts)  # in batches
    for output in outputs:
        write(output, keep="", end="\n")
    if attention_plot:
        from charlm.plot import plot_attention

        found = model.attention(texts[0], unknown, output=outputs[0])
        plot_attention(found["weights"], found["source"], found["output"], attention_plot)
        click.echo(f"attention weights drawn in {attention_plot}", err=True)


MAX_LINE_BYTES = 1 << 20  # a line of stdin; `translate < /dev/zero` must not read forever


def stdin_lines(unknown: str) -> Iterator[str]:
    """The lines of stdin, each as soon as it has come, without its "\\n" or "\\r\\n" (and the
    first without a byte-order mark). stdin is read as bytes and decoded here: bytes that are not
    text in its encoding are an error naming the line, or under --unknown skip / unk characters
    the model never saw (U+FFFD)."""
    from charlm.errors import CharlmError

    if sys.stdin is None:
        raise click.UsageError("stdin is closed; give the WORDS to translate, or pipe lines in")
    encoding = sys.stdin.encoding or "utf-8"
    for number in itertools.count(1):
        line = sys.stdin.buffer.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        elif len(line) > MAX_LINE_BYTES:
            raise CharlmError(f"line {number} of stdin is longer than {MAX_LINE_BYTES:,} bytes; give shorter lines")
        try:
            text = line.decode(encoding)
        except UnicodeDecodeError as error:
            if unknown == "error":
                raise CharlmError(
                    f"line {number} of stdin is not valid {encoding} at byte offset {error.start}; convert it to "
                    f"{encoding}, or pass --unknown skip (drop what is not) or --unknown unk (map it to <unk>)"
                ) from None
            text = line.decode(encoding, errors="replace")
        yield text.removeprefix("\ufeff") if number == 1 else text
