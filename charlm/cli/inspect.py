"""`charlm stats` and `charlm info`: what a corpus and a checkpoint hold, read without training or
loading a model (`charlm.text` counts the tokens; `charlm.checkpoint` reads the metadata,
`charlm.metadata` says what it holds)."""

from __future__ import annotations

import os
from pathlib import Path
import click

from charlm.cli import best_loss, corpus_options, encoding_option, escaped, non_negative, say_files, to_json
from charlm.presets import COMMON, PREPROCESS_MODES, TOKEN_KINDS


@click.command()
@click.argument("corpus", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--tokens", type=click.Choice(TOKEN_KINDS), default=COMMON["tokens"], show_default=True)
@click.option("--preprocess", type=click.Choice(PREPROCESS_MODES), default=COMMON["preprocess"], show_default=True)
@encoding_option
@corpus_options
@click.option("--top", type=non_negative, default=10, show_default=True, help="How many of the most frequent tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stats(corpus: tuple[Path, ...], tokens: str, preprocess: str, encoding: str, include: tuple[str, ...],
          exclude: tuple[str, ...], top: int, as_json: bool) -> None:
    """Token count, vocab size and the most frequent tokens of CORPUS, one or more text files or
    folders read as `charlm train` reads them, and how training would hold out its validation
    split.

    \b
    charlm stats corpora/timemachine.txt --preprocess d2l
    charlm stats notes/ --include '*.md'
    """
    from charlm.corpus import corpus_stats, find_corpus

    found = find_corpus(corpus, encoding, include, exclude)
    report = corpus_stats(found, encoding, tokens, preprocess, top)
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
    from charlm.checkpoint import read_metadata
    from charlm.metadata import describe, read, write

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
