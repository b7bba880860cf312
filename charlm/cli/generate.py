"""`charlm generate`: text sampled from a language model, streamed to stdout.

Its flags are the rows of `charlm.settings.GENERATE`; the request they make is sampled by
`charlm.trained.TextModel`, as `charlm.load(...).generate` samples it. This module only writes the
text (escaped on a terminal, by `charlm.cli.write`).
"""

from __future__ import annotations

from typing import Any

import click

from charlm.cli import CHECKPOINT_DIR, checkpoint_or_latest, device_option, options, write
from charlm.settings import GENERATE


@click.command()
@click.option("--checkpoint", type=click.Path(path_type=str), default=None,
              help=f"A language-model checkpoint [default: the newest in {CHECKPOINT_DIR}/].")
@options(GENERATE, "generate")
@device_option
def generate(checkpoint: str | None, device: str, **flags: Any) -> None:
    """Sample text from a trained language model; it streams to stdout.

    \b
    charlm generate --prefix "time "
    charlm generate --checkpoint checkpoints/timemachine.safetensors --top-p 0.9 --seed 1
    """
    from charlm.runtime.cores import CpuWatch, use_free_cores

    watch = CpuWatch()  # what other programs use while this one loads: the threads it generates on
    from charlm.trained import TextModel
    from charlm.generation.request import Request
    from charlm.runtime.device import pick_device

    request = Request.from_fields(flags, said="flag")
    model = TextModel(checkpoint_or_latest(checkpoint, "lm"), pick_device(device))
    use_free_cores(watch)
    seed = model.sample(request, write)
    if request.seed is None and request.length and not request.sampling.greedy:
        click.echo(f"note: --seed {seed} writes this text again", err=True)
