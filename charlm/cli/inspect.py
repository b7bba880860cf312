"""`charlm stats` and `charlm info`: what a corpus and a checkpoint hold, read without training or
loading a model (`charlm.stats` counts the tokens, as it does for a program; `charlm.checkpoints.files`
reads the metadata)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from charlm.cli import best_loss, escaped, options, say_files, to_json
from charlm.settings import STATS, TRAIN


@click.command()
@click.argument("corpus", nargs=-1, required=True, type=click.Path(path_type=Path))
@options({**TRAIN, **STATS}, "stats")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stats(corpus: tuple[Path, ...], as_json: bool, **settings: Any) -> None:
    """Token count, vocab size and the most frequent tokens of CORPUS, one or more text files or
    folders read as `charlm train` reads them, and how training would hold out its validation
    split.

    \b
    charlm stats corpora/timemachine.txt --preprocess d2l
    charlm stats notes/ --include '*.md'
    """
    from charlm.api import stats_with_files

    found, report = stats_with_files(corpus, **settings)
    say_files(found)
    if as_json:
        click.echo(to_json(report))
        return
    click.echo(f"tokens      {report['tokens']:,}")
    click.echo(f"vocab size  {report['vocab_size']} (<unk> + {report['distinct_tokens']} distinct)")
    if not found.single:
        click.echo(f"files       {len(found.files):,} read, {len(found.skipped):,} skipped")
    click.echo(f"held out    {escaped(report['held_out'])}")
    for token, count in report["most_frequent"]:
        click.echo(f"  {token!r:>12}  {count:,}")


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the whole metadata as JSON.")
def info(checkpoint: str, as_json: bool) -> None:
    """What is inside CHECKPOINT, read from its metadata alone.

    \b
    charlm info checkpoints/timemachine.safetensors
    """
    from charlm.checkpoints.files import read_metadata
    from charlm.checkpoints.metadata import describe, read, write

    meta = read(read_metadata(checkpoint))
    if as_json:
        click.echo(to_json(write(meta), indent=2))
        return
    summary = describe(meta)
    training, sizes = summary["training"], summary["vocab_sizes"]
    if "source_vocab_size" in sizes:
        vocabs = f"source vocab {sizes['source_vocab_size']}, target vocab {sizes['target_vocab_size']}"
    else:
        vocabs = f"vocab {sizes['vocab_size']}"
    best = best_loss(training)
    lines = [
        f"checkpoint   {checkpoint} ({os.path.getsize(checkpoint):,} bytes, format {summary['format_version']})",
        f"task         {summary['task']} ({summary['kind']})",
        f"model        {str(summary['architecture']) + ': ' if summary['architecture'] else ''}"
        f"{', '.join(f'{key}={value}' for key, value in summary['model'].items())}",
        f"text         tokens={summary['tokens']}, preprocess={summary['preprocess']}, {vocabs}"
        + (f", corpus {summary['corpus']}" if summary["corpus"] else "")
        + (f" ({summary['corpus_files']:,} files)" if summary["corpus_files"] is not None else ""),
        f"training     {training.get('steps')} steps, {training.get('tokens')} tokens"
        + (f", {best} at step {training.get('best_step')}" if best else ""),
    ]
    parent = summary["parent"]
    if parent is not None:
        lines.append(f"parent       {parent.get('path')} (sha256 {parent.get('sha256')})")
    click.echo("\n".join(escaped(line) for line in lines))  # the metadata is anyone's text
