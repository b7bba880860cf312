"""`charlm eval`: the scores of a checkpoint on a file, text or pairs, as a line or as JSON.

Scoring is the Python API's (`TextModel.evaluate`, `PairModel.evaluate`), as for a program; this
module picks the checkpoint and prints the report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from charlm.cli import (
    CHECKPOINT_DIR, checkpoint_or_latest, corpus_options, decoding_options, device_option, encoding_option, options,
    report_pairs, say_files,
)
from charlm.settings import TRAIN


@click.command("eval")
@click.option("--checkpoint", type=click.Path(path_type=str), default=None,
              help=f"A checkpoint [default: the newest in {CHECKPOINT_DIR}/ for FILE's kind: text or pairs].")
@click.argument("file", nargs=-1, required=True, type=click.Path(path_type=Path))
@encoding_option
@corpus_options
@decoding_options
@options([TRAIN["held_out"], TRAIN["skip_bad_lines"]])
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate(checkpoint: str | None, file: tuple[Path, ...], encoding: str, include: tuple[str, ...],
             exclude: tuple[str, ...], beam: int, length_penalty: float, max_length: int | None, held_out: bool,
             skip_bad_lines: bool, device: str, as_json: bool) -> None:
    """Loss, perplexity and bits per character of a language model on FILE, one or more text
    files or folders read as `charlm train` reads them (joined by a blank line); or exact match,
    character error rate and BLEU of a translation model on the pairs of one FILE.

    \b
    charlm eval --checkpoint checkpoints/timemachine.safetensors corpora/timemachine.txt
    charlm eval --checkpoint checkpoints/notes.safetensors notes/ --include '*.md'
    charlm eval --checkpoint checkpoints/wordpairs.safetensors corpora/wordpairs.tsv --held-out
    """
    from charlm.runtime.cores import CpuWatch, use_free_cores

    watch = CpuWatch()  # what other programs use while this one loads: the threads a text is scored on
    from charlm.checkpoints.files import read_metadata
    from charlm.text.pairs import looks_like_pairs

    several = len(file) > 1 or os.path.isdir(file[0])
    if checkpoint:
        task = read_metadata(checkpoint).get("task")
    else:
        task = "translate" if not several and looks_like_pairs(file[0], encoding) else "lm"
    path = checkpoint_or_latest(checkpoint, task)
    from charlm.trained import PairModel, TextModel
    from charlm.runtime.device import pick_device

    if task == "translate":
        if several:
            raise click.UsageError("a translation model is scored on the pairs of one file; give one "
                                   "source<TAB>target file")
        report = PairModel(path, pick_device(device)).evaluate(file[0], held_out, beam, length_penalty, max_length,
                                                               skip_bad_lines, encoding)
        if as_json:
            click.echo(json.dumps(report))
        else:
            report_pairs(report)
        return
    from charlm.text.corpus import find_corpus

    found = find_corpus(file, encoding, include, exclude)
    model = TextModel(path, pick_device(device))
    use_free_cores(watch)
    report = model.evaluate(found, encoding, held_out=held_out)
    say_files(found)
    if report["unknown_tokens"] and not as_json:
        click.echo(f"note: {report['unknown_tokens']:,} tokens of {found.shown} are not in the "
                   "model's vocab and count as <unk>", err=True)
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(f"loss {report['loss']:.4f} nats/token  perplexity {report['ppl']:.3f}  "
                   f"bits/token {report['bpc']:.4f}  ({report['tokens']:,} tokens)")
