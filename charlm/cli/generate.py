"""`charlm generate`: text sampled from a language model, streamed to stdout.

Sampling and the pieces of text are `charlm.generate`'s; this module only writes them (escaped on a
terminal, by `charlm.cli.write`).
"""

from __future__ import annotations

import click

from charlm.cli import (
    CHECKPOINT_DIR, checkpoint_or_latest, device_option, non_negative, positive, unknown_option, write,
)
from charlm.presets import PRECISIONS


@click.command()
@click.option("--checkpoint", type=click.Path(path_type=str), default=None,
              help=f"A language-model checkpoint [default: the newest in {CHECKPOINT_DIR}/].")
@click.option("--prefix", default="", help="Text to start from (preprocessed like the corpus).")
@click.option("--length", type=non_negative, default=200, show_default=True, help="Tokens to generate.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--top-k", type=non_negative, default=0, show_default=True, help="Sample among the k likeliest (0: all).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Sample among the likeliest tokens that make up this much probability.")
@click.option("--greedy", is_flag=True, help="Always take the likeliest token.")
@click.option("--num-samples", type=positive, default=1, show_default=True)
@click.option("--seed", type=int, default=None, help="Same seed, same text (on this machine, in this precision).")
@unknown_option
@device_option
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="Of the steps' matrix products. auto: bf16 where this machine has bf16 matrix units and a step "
                   "measures faster in it at --num-samples rows with the same next-token odds (kept beside the "
                   "checkpoint), else fp32. fp32 gives the same text for a seed at any --num-samples.")
def generate(checkpoint: str | None, prefix: str, length: int, temperature: float, top_k: int, top_p: float,
             greedy: bool, num_samples: int, seed: int | None, unknown: str, device: str, precision: str) -> None:
    """Sample text from a trained language model; it streams to stdout.

    \b
    charlm generate --prefix "time "
    charlm generate --checkpoint checkpoints/timemachine.safetensors --top-p 0.9 --seed 1
    """
    from charlm import generate as generator
    from charlm.checkpoint import load_model
    from charlm.runtime import pick_device

    sampling = generator.Sampling(temperature, top_k, top_p, greedy)
    path = checkpoint_or_latest(checkpoint, "lm")
    model, meta, vocab = load_model(path, "lm", pick_device(device))
    prefix_ids = generator.encode_prefix(prefix, vocab, meta["tokens"], meta["preprocess"], unknown)
    if prefix and not prefix_ids and unknown == "skip":
        click.echo("note: every character of the prefix was unknown and skipped: generating without one", err=True)
    chosen, note = generator.choose_precision(model, num_samples, precision, path)
    if note:
        click.echo(note, err=True)
    generator.stream_text(model, vocab, meta["tokens"], prefix_ids, length, sampling, num_samples, seed, on_text=write,
                          precision=chosen)
