"""`charlm generate`: text sampled from a language model, streamed to stdout.

Its flags are the rows of `charlm.settings.GENERATE`; the request they make is sampled by
`charlm.trained.TextModel`, as `charlm.load(...).generate` samples it. This module only writes the
text (escaped on a terminal, by `charlm.cli.write`), the log-probabilities `--logprobs` asks for
(on stderr), and with `-i` asks for one prefix after another, as `ollama run` does.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

import click

from charlm.cli import CHECKPOINT_DIR, checkpoint_or_latest, device_option, escaped, options, write
from charlm.settings import GENERATE


@click.command()
@click.option("--checkpoint", type=click.Path(path_type=str), default=None,
              help=f"A language-model checkpoint [default: the newest in {CHECKPOINT_DIR}/].")
@click.option("-i", "--interactive", is_flag=True, help="Ask for a prefix, continue it, and again, until an empty "
              "line or Ctrl-D; the other flags hold for each.")
@options(GENERATE, "generate")
@device_option
def generate(checkpoint: str | None, interactive: bool, device: str, **flags: Any) -> None:
    """Sample text from a trained language model; it streams to stdout.

    \b
    charlm generate --prefix "time "
    charlm generate --checkpoint checkpoints/timemachine.safetensors --top-p 0.9 --seed 1
    charlm generate --prefix "time " --stop "." --repetition-penalty 1.2 --min-p 0.05
    charlm generate -i --length 100
    """
    from charlm.runtime.cores import CpuWatch, use_free_cores

    watch = CpuWatch()  # what other programs use while this one loads: the threads it generates on
    from charlm.errors import CharlmError
    from charlm.generation.request import Request
    from charlm.runtime.device import pick_device
    from charlm.trained import TextModel

    request = Request.from_fields(flags, said="flag")
    model = TextModel(checkpoint_or_latest(checkpoint, "lm"), pick_device(device))
    use_free_cores(watch)
    if not interactive:
        seed = one(model, request)
        if request.seed is None and request.length and not request.sampling.greedy:
            click.echo(f"note: --seed {seed} writes this text again", err=True)
        return
    if sys.stdin is None:  # `<&-`: input() would fail on it
        raise CharlmError("stdin is closed, so -i has no prefixes to read; give one with --prefix, without -i")
    click.echo("type a prefix and Enter to continue it; an empty line or Ctrl-D ends", err=True)
    while True:
        try:
            prefix = input("> ")
        except EOFError:
            click.echo(err=True)
            return
        if not prefix:
            return
        try:
            one(model, replace(request, prefix=prefix))
        except CharlmError as error:  # a prefix the model cannot read: say so, and ask again
            click.echo(f"charlm: error: {escaped(' '.join(str(error).split()))}", err=True)


def one(model: Any, request: Any) -> int:
    """The text of `request` on stdout, its tokens' log-probabilities on stderr if asked; the seed."""
    seed, samples = model.run(request, write)
    if request.logprobs is not None:
        for index, sample in enumerate(samples):
            if len(samples) > 1:
                click.echo(f"sample {index + 1}:", err=True)
            for token in sample.tokens:
                top = ", ".join(f"{shown(text)} {value:.3f}" for text, value in token.top.items())
                click.echo(f"{shown(token.text)} {token.logprob:.3f}  ({top})", err=True)
    return seed


def shown(token: str) -> str:
    """A token as the log-probabilities show it: quoted, its control characters escaped."""
    return escaped(repr(token))
