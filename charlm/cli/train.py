"""`charlm train`: a language model of a text, or a model of the pairs of a source<TAB>target file.

It turns the flags into settings and prints what the run says; `charlm.runs` assembles the run
and `charlm.trainer` runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from charlm.cli import (
    CHECKPOINT_DIR, MAX_THREADS, best_loss, device_option, encoding_option, non_negative, positive, report_pairs,
    say_skipped,
)

cache_dir_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Keep the token ids here, so the next run on the same text starts at once "
         "[default: .charlm-cache/ beside the text].")
no_cache_option = click.option("--no-cache", is_flag=True, help="Neither read nor write the token cache.")


def _cache_dir(text: Path, cache_dir: Path | None, no_cache: bool) -> str | None:
    from charlm.data import default_cache_dir

    return None if no_cache else str(cache_dir or default_cache_dir(text))


# Defaults that depend on the task: a language model of a long text, or a model of short pairs.
TASK_DEFAULTS = {
    "lm": {"cell": "lstm", "embedding_size": 64, "hidden_size": 512, "num_layers": 2, "dropout": 0.3,
           "lr": 3e-3, "lr_schedule": "cosine", "epochs": 10, "keep": "best", "threads": None},
    "translate": {"cell": "gru", "embedding_size": 32, "hidden_size": 128, "num_layers": 1, "dropout": 0.0,
                  "lr": 5e-3, "lr_schedule": "constant", "epochs": 30, "keep": "last", "threads": 1},
}
LM_ONLY = ("tokens", "preprocess", "seq_len", "iterator", "cache_dir", "no_cache")
PAIRS_ONLY = ("model_type", "attention", "skip_bad_lines")


def _per_task(name: str) -> str:
    lm, pairs = TASK_DEFAULTS["lm"][name], TASK_DEFAULTS["translate"][name]
    shown = "torch's" if lm is None else lm
    return f"[default: {shown} for text, {pairs} for pairs]"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@click.command()
@click.argument("corpus", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--task", type=click.Choice(["auto", "lm", "translate"]), default="auto", show_default=True,
              help="lm: a language model of the text; translate: a model of source<TAB>target pairs; "
                   "auto: translate when most lines hold a tab.")
@click.option("--model-type", type=click.Choice(["seq2seq", "tagger"]), default=None,
              help="Pairs: an encoder-decoder, or the lessons' tagger for pairs of equal lengths [default: seq2seq].")
@click.option("--attention/--no-attention", default=None,
              help="Pairs: Bahdanau attention in the seq2seq decoder [default: on].")
@click.option("--skip-bad-lines", is_flag=True, help="Pairs: leave out malformed lines instead of stopping.")
@click.option("--model", "cell", type=click.Choice(["rnn", "gru", "lstm"]), default=None,
              help=f"Recurrent cell. {_per_task('cell')}")
@click.option("--from-scratch", is_flag=True, help="Use the from-scratch cells (explicit equations) instead of torch's.")
@click.option("--tokens", type=click.Choice(["char", "word"]), default="char", show_default=True,
              help="Text: tokenize into characters or whitespace-separated words.")
@click.option("--preprocess", type=click.Choice(["none", "d2l"]), default="none", show_default=True,
              help="Text: none, the text as it is; d2l, letters only, lower case (the d2l book's).")
@encoding_option
@click.option("--min-freq", type=positive, default=1, show_default=True, help="Rarer tokens become <unk>.")
@click.option("--max-vocab", type=positive, default=None, help="Keep at most this many tokens (the rest become <unk>).")
@cache_dir_option
@no_cache_option
@click.option("--embedding-size", type=non_negative, default=None,
              help=f"0 feeds one-hot vectors (not for seq2seq). {_per_task('embedding_size')}")
@click.option("--hidden-size", type=positive, default=None, help=_per_task("hidden_size"))
@click.option("--num-layers", type=positive, default=None, help=_per_task("num_layers"))
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None, help=_per_task("dropout"))
@click.option("--seq-len", type=positive, default=35, show_default=True, help="Text: steps of backpropagation through time.")
@click.option("--batch-size", type=positive, default=32, show_default=True,
              help="Rows per step, over all processes under torchrun.")
@click.option("--iterator", type=click.Choice(["sequential", "random"]), default="sequential", show_default=True,
              help="Text: sequential carries the hidden state between batches; random samples independent windows.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw"]), default="adamw", show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help=f"Learning rate. {_per_task('lr')}")
@click.option("--lr-schedule", type=click.Choice(["constant", "cosine"]), default=None,
              help=f"cosine: from --lr down to --lr x --min-lr-ratio over --epochs. {_per_task('lr_schedule')}")
@click.option("--min-lr-ratio", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--clip", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Clip the global gradient norm to this (0: off).")
@click.option("--epochs", type=positive, default=None, help=_per_task("epochs"))
@click.option("--max-steps", type=positive, default=None, help="Stop after this many optimizer steps.")
@click.option("--max-time", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this many seconds.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Held out for validation: the last part of a text; a seeded random part of the pairs.")
@click.option("--eval-every", type=positive, default=None, help="Evaluate every N steps (default: each epoch).")
@click.option("--seed", type=int, default=0, show_default=True)
@device_option
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None,
              help=f"CPU threads for torch (small models are faster on one). {_per_task('threads')}")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="auto: bf16 autocast on a CUDA GPU that supports it, else fp32.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint path [default: checkpoints/<corpus stem>.safetensors].")
@click.option("--keep", type=click.Choice(["best", "last"]), default=None,
              help="The model to save at --out: the best by validation loss, or the last (pairs such as antonyms "
                   f"cannot generalise, so their model must learn them all). {_per_task('keep')}")
@click.option("--resume", is_flag=True, help="Continue the run saved at --out from where it stopped.")
@click.option("--overwrite", is_flag=True, help="Replace a run already saved at --out.")
@click.option("--quiet", is_flag=True, help="No progress bar or evaluation lines.")
@click.pass_context
def train(ctx: click.Context, corpus: Path, out: Path | None, resume: bool, overwrite: bool, quiet: bool, **options: Any) -> None:
    """Train a language model on CORPUS, a UTF-8 text file, or a translation model when CORPUS
    holds one source<TAB>target pair per line.

    \b
    charlm train corpora/timemachine.txt
    charlm train corpora/timemachine.txt --preprocess d2l --model gru --max-time 300
    charlm train my.txt --out runs/my.safetensors --resume
    torchrun --nproc_per_node=4 -m charlm train my.txt --batch-size 128   # 4 GPUs, 32 rows each
    charlm train corpora/wordpairs.tsv
    charlm train corpora/hihell.tsv --model-type tagger --model rnn --embedding-size 0 --optimizer adam --lr 0.1 --epochs 15
    """
    from charlm.runtime import cpu_threads, distributed

    task = _task_of(corpus, options["task"], options["encoding"])
    not_for = PAIRS_ONLY if task == "lm" else LM_ONLY
    given = [_flag(name) for name in not_for if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
    if given:
        what = "pair corpora (--task translate)" if task == "lm" else "language models of text (--task lm)"
        raise click.UsageError(f"{', '.join(given)} only applies to {what}")
    for name, value in TASK_DEFAULTS[task].items():
        options[name] = value if options[name] is None else options[name]
    options["cache_dir"] = _cache_dir(corpus, options["cache_dir"], options.pop("no_cache"))
    world = ctx.with_resource(distributed(options["device"]))  # alone, or one of several under torchrun
    with cpu_threads(options["threads"]):
        _train(task, corpus, out, resume, overwrite, quiet or not world.is_main, options, world)


def _train(task: str, corpus: Path, out: Path | None, resume: bool, overwrite: bool, quiet: bool, options: dict,
           world: Any) -> None:
    from charlm.data import DataConfig
    from charlm.runs import language_model_run, translation_run
    from charlm.trainer import TrainConfig, Trainer

    train_config = TrainConfig(**{key: options[key] for key in TrainConfig.__dataclass_fields__})
    out = out or Path(CHECKPOINT_DIR) / f"{corpus.stem}.safetensors"
    if world.is_main:  # before reading the corpus, which can take minutes; the trainer checks again
        from charlm.runfiles import check_creatable

        check_creatable(out)
    data_config = DataConfig(**{key: options[key] for key in DataConfig.__dataclass_fields__ if key in options})
    if task == "lm":
        run = language_model_run(corpus, data_config, train_config, options["cell"], options, world)
    else:
        run = translation_run(corpus, data_config, train_config, options["model_type"] or "seq2seq", options,
                              detected=options["task"] == "auto")
    train_config = run.train_config or train_config
    if world.is_main:
        for note in run.notes:
            click.echo(f"note: {note}", err=True)
    if not quiet:
        say_skipped(corpus, run.skipped)
        click.echo(f"{run.description}{f' on {world.size} processes' if world.size > 1 else ''} -> {out}", err=True)
    summary = Trainer(run.model, run.train_batches, run.val_batches, train_config, out, run.meta,
                      not quiet, world, inputs=[corpus]).run(resume, overwrite)
    if not quiet:
        shown = best_loss(summary) or "done"
        if train_config.keep == "last":
            shown += f" at step {summary['best_step']}; saved the last model"
        click.echo(f"saved {out}: {summary['steps']} steps, {shown}", err=True)
        if run.held_out:
            from charlm.evaluation import evaluate_translator

            report_pairs(evaluate_translator(str(out), run.held_out, options["device"]), "held out: ")


def _task_of(corpus: Path, task: str, encoding: str) -> str:
    """The task asked for, or with "auto" the one the file's shape says."""
    from charlm.pairs import looks_like_pairs

    if task != "auto":
        return task
    return "translate" if looks_like_pairs(corpus, encoding) else "lm"
