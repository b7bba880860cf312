"""`charlm train`: a language model of a text, or a model of the pairs of a source<TAB>target file.

It turns the flags into settings and prints what the run says; `charlm.launch` checks the
settings and trains, as it does for `charlm.train`, so the two never disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from charlm import registry
from charlm.cli import (
    MAX_THREADS, LiveChoice, best_loss, corpus_options, device_option, encoding_option, non_negative, positive,
    report_pairs,
)
from charlm.presets import (
    ARCHITECTURE_DEFAULTS, CELLS, COMMON, ITERATORS, KEEPS, LM, OPTIMIZERS, PAIRS, PRECISIONS, PREPROCESS_MODES, PRESETS,
    SCHEDULES, TASKS, TOKEN_KINDS,
)

cache_dir_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Keep the token ids here, so the next run on the same text starts at once "
         "[default: .charlm-cache/ beside the text].")
no_cache_option = click.option("--no-cache", is_flag=True, help="Neither read nor write the token cache.")


def _per_task(name: str) -> str:
    lm, pairs = PRESETS["lm"][name], PRESETS["translate"][name]
    shown = "torch's" if lm is None else lm
    return f"[default: {shown} for text, {pairs} for pairs]"


def _text_default(name: str) -> str:
    return f"[default: {PRESETS['lm'][name]}]"


def _transformer_defaults() -> str:
    """The transformer's defaults where they differ from text's, as flags: "--seq-len 64, ..."."""
    changed = {name: value for name, value in ARCHITECTURE_DEFAULTS["transformer"].items() if value != LM.get(name)}
    return ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in changed.items())


def _model_names() -> tuple[str, ...]:
    """What --model takes: any language-model architecture registered now (text), or a cell (pairs)."""
    return tuple(dict.fromkeys((*registry.names("lm"), *CELLS)))


@click.command()
@click.argument("corpus", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--task", type=click.Choice(("auto", *TASKS)), default="auto", show_default=True,
              help="lm: a language model of the text; translate: a model of source<TAB>target pairs; "
                   "auto: translate when most lines hold a tab.")
@click.option("--model-type", type=LiveChoice(lambda: registry.names("translate")), default=None,
              help="Pairs: an encoder-decoder, or the lessons' tagger for pairs of equal lengths "
                   f"[default: {PAIRS['model_type']}].")
@click.option("--attention/--no-attention", default=None,
              help="Pairs: Bahdanau attention in the seq2seq decoder [default: on].")
@click.option("--skip-bad-lines", is_flag=True, help="Pairs: leave out malformed lines instead of stopping.")
@click.option("--model", "cell", type=LiveChoice(_model_names), default=None,
              help="Text: the recurrent cell, or a causal transformer, which has its own defaults: "
                   f"{_transformer_defaults()}. Pairs: the cell. {_per_task('cell')}")
@click.option("--from-scratch", is_flag=True, help="Use the from-scratch cells (explicit equations) instead of torch's.")
@click.option("--tokens", type=click.Choice(TOKEN_KINDS), default=COMMON["tokens"], show_default=True,
              help="Text: tokenize into characters or whitespace-separated words.")
@click.option("--preprocess", type=click.Choice(PREPROCESS_MODES), default=COMMON["preprocess"], show_default=True,
              help="Text: none, the text as it is; d2l, letters only, lower case (the d2l book's).")
@encoding_option
@corpus_options
@click.option("--min-freq", type=positive, default=COMMON["min_freq"], show_default=True, help="Rarer tokens become <unk>.")
@click.option("--max-vocab", type=positive, default=COMMON["max_vocab"], help="Keep at most this many tokens (the rest become <unk>).")
@cache_dir_option
@no_cache_option
@click.option("--embedding-size", type=non_negative, default=None,
              help=f"0 feeds one-hot vectors (not for seq2seq). {_per_task('embedding_size')}")
@click.option("--hidden-size", type=positive, default=None, help=_per_task("hidden_size"))
@click.option("--num-layers", type=positive, default=None, help=_per_task("num_layers"))
@click.option("--num-heads", type=positive, default=None,
              help="Transformer: attention heads; they split --embedding-size, the model's width "
                   f"[default: {ARCHITECTURE_DEFAULTS['transformer']['num_heads']}].")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None, help=_per_task("dropout"))
@click.option("--weight-drop", type=click.FloatRange(0, 1, max_open=True), default=None,
              help=f"Text: DropConnect on the recurrent weights W_hh, one mask per batch (AWD-LSTM). {_text_default('weight_drop')}")
@click.option("--locked-dropout/--no-locked-dropout", default=None,
              help="Text: --dropout with one mask per sequence for every step (variational), on the embedding, "
                   f"between the layers and before the head. {_text_default('locked_dropout')}")
@click.option("--embedding-dropout", type=click.FloatRange(0, 1, max_open=True), default=None,
              help=f"Text: drop whole tokens' embeddings, one mask per batch. {_text_default('embedding_dropout')}")
@click.option("--ema", type=click.FloatRange(0, 1, max_open=True), default=COMMON["ema"], show_default=True,
              help="Evaluate and keep an exponential moving average of the weights with this decay "
                   "(e.g. 0.999); 0 keeps the weights themselves.")
@click.option("--seq-len", type=positive, default=COMMON["seq_len"], show_default=True,
              help="Text: steps of backpropagation through time; for the transformer, its context.")
@click.option("--batch-size", type=positive, default=COMMON["batch_size"], show_default=True,
              help="Rows per step, over all processes under torchrun.")
@click.option("--iterator", type=click.Choice(ITERATORS), default=COMMON["iterator"], show_default=True,
              help="Text: sequential carries the hidden state between batches; random samples independent windows.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=COMMON["optimizer"], show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help=f"Learning rate. {_per_task('lr')}")
@click.option("--lr-schedule", type=click.Choice(SCHEDULES), default=None,
              help=f"cosine: from --lr down to --lr x --min-lr-ratio over --epochs. {_per_task('lr_schedule')}")
@click.option("--min-lr-ratio", type=click.FloatRange(0, 1), default=COMMON["min_lr_ratio"], show_default=True)
@click.option("--warmup-steps", type=non_negative, default=COMMON["warmup_steps"], show_default=True,
              help="Steps rising linearly to --lr before the schedule (the transformer's default: "
                   f"{ARCHITECTURE_DEFAULTS['transformer']['warmup_steps']}).")
@click.option("--lr-decay-steps", type=positive, default=COMMON["lr_decay_steps"],
              help="The steps the schedule runs over, fixed (nanoGPT's lr_decay_iters); by default --epochs', or "
                   "with --max-time the steps it allows. --max-steps only stops, so a stopped run resumes on its curve.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=COMMON["weight_decay"], show_default=True)
@click.option("--clip", type=click.FloatRange(min=0), default=COMMON["clip"], show_default=True,
              help="Clip the global gradient norm to this (0: off).")
@click.option("--epochs", type=positive, default=None, help=_per_task("epochs"))
@click.option("--max-steps", type=positive, default=COMMON["max_steps"], help="Stop after this many optimizer steps.")
@click.option("--max-time", type=click.FloatRange(min=0, min_open=True), default=COMMON["max_time"],
              help="Stop after this many seconds.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=COMMON["val_fraction"],
              show_default=True,
              help="Held out for validation: the last part of a text (of several files, the last part of each of "
                   "20 equal stretches of their text); a seeded random part of the pairs.")
@click.option("--eval-every", type=positive, default=COMMON["eval_every"], help="Evaluate every N steps (default: each epoch).")
@click.option("--seed", type=int, default=COMMON["seed"], show_default=True)
@device_option
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None,
              help=f"CPU threads for torch (small models are faster on one). {_per_task('threads')}")
@click.option("--precision", type=click.Choice(PRECISIONS), default=COMMON["precision"], show_default=True,
              help="auto: bf16 autocast on a CUDA GPU that supports it, or on a CPU with bf16 matrix "
                   "instructions where a step measures faster with the same loss (kept in the cache folder), else fp32.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint path [default: checkpoints/<corpus stem>.safetensors].")
@click.option("--keep", type=click.Choice(KEEPS), default=None,
              help="The model to save at --out: the best by validation loss, or the last (pairs such as antonyms "
                   f"cannot generalise, so their model must learn them all). {_per_task('keep')}")
@click.option("--resume", is_flag=True, help="Continue the run saved at --out from where it stopped.")
@click.option("--allow-changed-corpus", is_flag=True,
              help="With --resume: go on although files of the corpus were added, removed or edited since the run "
                   "started (its vocab must stay the same).")
@click.option("--init-from", type=click.Path(path_type=str), default=None, metavar="CHECKPOINT",
              help="Fine-tune: start from this language model's weights, architecture, vocab and text settings, "
                   "with a fresh optimizer and schedule.")
@click.option("--unknown", type=click.Choice(("error", "unk")), default="error", show_default=True,
              help="With --init-from: characters of the text that the model's vocab lacks stop with an error "
                   "naming them, or become <unk>.")
@click.option("--extend-vocab", is_flag=True,
              help="With --init-from: add the characters the model's vocab lacks, as new rows of the embedding "
                   "(columns of a one-hot input's weights) and of the output layer; the old ones stay as they are.")
@click.option("--overwrite", is_flag=True, help="Replace a run already saved at --out.")
@click.option("--quiet", is_flag=True, help="No progress bar or evaluation lines.")
@click.pass_context
def train(ctx: click.Context, corpus: tuple[Path, ...], out: Path | None, resume: bool, overwrite: bool, quiet: bool,
          **options: Any) -> None:
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
    from charlm.launch import launch

    given = {name for name in options if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}
    done = launch(corpus, options, given, out, resume, overwrite, quiet, lambda line: click.echo(line, err=True))
    if done.shown:
        shown = best_loss(done.summary) or "done"
        if done.train_config.keep == "last":
            shown += f" at step {done.summary['best_step']}; saved the last model"
        click.echo(f"saved {done.out}: {done.summary['steps']} steps, {shown}", err=True)
        if done.run.held_out:
            from charlm.evaluation import evaluate_translator

            report_pairs(evaluate_translator(str(done.out), done.run.held_out, options["device"]), "held out: ")
