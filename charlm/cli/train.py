"""`charlm train`: a language model of a text, or a model of the pairs of a source<TAB>target file.

Its flags are the rows of `charlm.settings.TRAIN`; it hands the settings to `charlm.training.launch`, which
checks them and trains, as it does for `charlm.train`, and prints what the run says.
"""

from __future__ import annotations

import math

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from charlm.cli import best_loss, escaped, options, report_pairs
from charlm.settings import TRAIN


@click.command()
@click.argument("corpus", nargs=-1, required=True, type=click.Path(path_type=Path))
@options(TRAIN, "train")
@click.pass_context
def train(ctx: click.Context, corpus: tuple[Path, ...], **settings: Any) -> None:
    """Train a language model on CORPUS, one or more UTF-8 text files or folders, or a translation
    model when CORPUS is one file that holds a source<TAB>target pair per line.

    A folder is read recursively, its files in the order of their sorted paths; hidden files and
    folders are left out and files that are not text skipped (stderr says how many were taken and
    skipped). Files are joined by a blank line ("\\n\\n"), which the model learns as the end of
    a document. With --init-from, CORPUS fine-tunes a trained language model.

    \b
    charlm train corpora/timemachine.txt
    charlm train corpora/timemachine.txt --preprocess d2l --model gru --max-time 300
    charlm train my.txt --out runs/my.safetensors --resume
    charlm train notes/ --include '*.md' --exclude drafts
    charlm train letters.txt --init-from checkpoints/timemachine.safetensors --extend-vocab
    torchrun --nproc_per_node=4 -m charlm train my.txt --batch-size 128   # 4 GPUs, 32 rows each
    charlm train corpora/wordpairs.tsv
    charlm train corpora/hihell.tsv --model-type tagger --model rnn --embedding-size 0 --optimizer adam --lr 0.1 --epochs 15
    """
    from charlm.training.launch import launch

    given = {name for name in settings if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}
    # its notes name the corpus's files, whose names may hold control characters: shown escaped
    done = launch(corpus, settings, given, lambda line: click.echo(escaped(line), err=True))
    if done.shown:
        shown = best_loss(done.summary) or "done"
        if done.summary.get("best_step") is not None:  # the step of the model kept, or of the best with keep last
            shown += f" at step {done.summary['best_step']}" + ("; saved the last model" if
                                                                done.train_config.keep == "last" else "")
        if done.summary.get("held_out_loss") is not None:
            loss = done.summary["held_out_loss"]
            shown += f"; on the whole held-out split val loss {loss:.4f} (ppl {math.exp(min(loss, 700)):.2f})"
        unigram = done.summary.get("unigram_loss")
        if unigram is not None:
            shown += f" (the text's character frequencies alone: ppl {math.exp(min(unigram, 700)):.2f})"
        click.echo(f"saved {done.out}: {done.summary['steps']} steps, {shown}", err=True)
        kept = done.summary.get("held_out_loss", done.summary.get("best_val_loss"))
        if unigram is not None and kept is not None and kept >= unigram:
            click.echo("note: the model predicts the held-out text no better than its characters' frequencies: it has "
                       "learnt little beyond which characters are common. Train longer (--max-time), on more text, "
                       "or a smaller model (--hidden-size)", err=True)
        if done.run.held_out:
            from charlm.evaluation.reports import evaluate_translator

            report_pairs(evaluate_translator(str(done.out), done.run.held_out, settings["device"]), "held out: ")
