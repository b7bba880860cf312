"""`charlm train`: a language model of a text, or a model of the pairs of a source<TAB>target file.

It turns the flags into settings and prints what the run says; `charlm.runs` assembles the run
and `charlm.trainer` runs it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from charlm import registry
from charlm.cli import (
    CHECKPOINT_DIR, MAX_THREADS, LiveChoice, best_loss, corpus_options, device_option, encoding_option, non_negative,
    positive, report_pairs, say_skipped,
)
from charlm.presets import (
    CELLS, COMMON, ITERATORS, KEEPS, LM, LM_ONLY, MODEL_SETTINGS, OPTIMIZERS, PAIRS, PAIRS_ONLY, PRECISIONS,
    PREPROCESS_MODES, PRESETS, SCHEDULES, TASKS, TOKEN_KINDS, task_defaults,
)

cache_dir_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Keep the token ids here, so the next run on the same text starts at once "
         "[default: .charlm-cache/ beside the text].")
no_cache_option = click.option("--no-cache", is_flag=True, help="Neither read nor write the token cache.")


def _cache_dir(text: Path, cache_dir: Path | None, no_cache: bool) -> str | None:
    from charlm.data import default_cache_dir

    return None if no_cache else str(cache_dir or default_cache_dir(text))


def _per_task(name: str) -> str:
    lm, pairs = PRESETS["lm"][name], PRESETS["translate"][name]
    shown = "torch's" if lm is None else lm
    return f"[default: {shown} for text, {pairs} for pairs]"


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
              help=f"Recurrent cell. {_per_task('cell')}")
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
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None, help=_per_task("dropout"))
@click.option("--seq-len", type=positive, default=COMMON["seq_len"], show_default=True,
              help="Text: steps of backpropagation through time.")
@click.option("--batch-size", type=positive, default=COMMON["batch_size"], show_default=True,
              help="Rows per step, over all processes under torchrun.")
@click.option("--iterator", type=click.Choice(ITERATORS), default=COMMON["iterator"], show_default=True,
              help="Text: sequential carries the hidden state between batches; random samples independent windows.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=COMMON["optimizer"], show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help=f"Learning rate. {_per_task('lr')}")
@click.option("--lr-schedule", type=click.Choice(SCHEDULES), default=None,
              help=f"cosine: from --lr down to --lr x --min-lr-ratio over --epochs. {_per_task('lr_schedule')}")
@click.option("--min-lr-ratio", type=click.FloatRange(0, 1), default=COMMON["min_lr_ratio"], show_default=True)
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
    from charlm.runtime import cpu_threads, distributed

    given = {name for name in options if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}
    flags = {param.name: param.opts[0] for param in ctx.command.params}
    if "allow_changed_corpus" in given and not resume:
        raise click.UsageError("--allow-changed-corpus only applies with --resume")
    parent = _parent(options, given, flags)
    task = _task_of(corpus, options["task"], options["encoding"], parent is not None)
    not_for = [flags[name] for name in (PAIRS_ONLY if task == "lm" else LM_ONLY) if name in given]
    if not_for:
        what = "pair corpora (--task translate)" if task == "lm" else "language models of text (--task lm)"
        raise click.UsageError(f"{', '.join(not_for)} only applies to {what}")
    architecture = parent.architecture if parent is not None else _architecture(task, options, given, flags)
    # The task's defaults, then the architecture's; the command line has the last word.
    defaults = {**task_defaults(task), **architecture.defaults}
    options.update({name: value for name, value in defaults.items() if name not in given})
    options["cache_dir"] = _cache_dir(corpus[0], options["cache_dir"], options.pop("no_cache"))
    if options.pop("extend_vocab"):
        options["unknown"] = "extend"
    if parent is not None:  # the parent's model, with only what leaves its weights as they are changed
        options["model_settings"] = {name: options[name] for name in ("dropout",) if name in given}
        _check_fields(architecture, options["model_settings"], flags, f"the model of {parent.path}")
    world = ctx.with_resource(distributed(options["device"]))  # alone, or one of several under torchrun
    with cpu_threads(options["threads"]):
        _train(task, architecture.name, corpus, out, resume, overwrite, quiet or not world.is_main, options, world,
               parent)


# What --init-from takes from its checkpoint: flags that would change it are refused.
ARCHITECTURE_FLAGS = ("cell", "hidden_size", "num_layers", "embedding_size", "from_scratch", "tokens", "preprocess",
                      "max_vocab", "min_freq")


def _parent(options: dict[str, Any], given: set[str], flags: dict[str, str]) -> Any:
    """The model --init-from names (`charlm.runs.Parent`), or None; the flags that only apply with
    it, or would change the model it gives, are a usage error."""
    if options["init_from"] is None:
        alone = [flags[name] for name in ("unknown", "extend_vocab") if name in given]
        if alone:
            raise click.UsageError(f"{', '.join(alone)} only {'applies' if len(alone) == 1 else 'apply'} with --init-from")
        return None
    changing = [flags[name] for name in ARCHITECTURE_FLAGS if name in given]
    if changing:
        raise click.UsageError(f"{', '.join(changing)} would change the model --init-from starts from (its architecture, "
                               "vocab and text settings are the checkpoint's); drop "
                               f"{'it' if len(changing) == 1 else 'them'}")
    if "unknown" in given and "extend_vocab" in given:
        raise click.UsageError("--unknown and --extend-vocab are two ways with new characters; choose one")
    if "task" in given and options["task"] == "translate":
        raise click.UsageError("--init-from fine-tunes a language model; it does not take --task translate")
    from charlm.runs import load_parent

    return load_parent(options["init_from"])


def _architecture(task: str, options: dict[str, Any], given: set[str], flags: dict[str, str]) -> registry.Architecture:
    """The architecture the flags name: for text --model, for pairs --model-type (--model is then
    the cell). Model flags given that its config has no field for are a usage error."""
    if task == "lm":
        architecture = registry.get("lm", options["cell"] or LM["cell"])
        named, settings = f"--model {architecture.name}", MODEL_SETTINGS
    else:
        if options["cell"] is not None and options["cell"] not in CELLS:
            raise click.UsageError(f"--model {options['cell']} is for text; for pairs --model takes a cell: "
                                   f"{', '.join(CELLS)}")
        architecture = registry.get("translate", options["model_type"] or PAIRS["model_type"])
        named, settings = f"--model-type {architecture.name}", ("cell", *MODEL_SETTINGS)
    _check_fields(architecture, [name for name in settings if name in given], flags, named)
    return architecture


def _check_fields(architecture: registry.Architecture, names: Any, flags: dict[str, str], named: str) -> None:
    """Model flags (`names`) that `architecture`'s config has no field for are a usage error."""
    _, config_class = architecture.classes()
    fields = {field.name for field in dataclasses.fields(config_class)}
    foreign = [flags[name] for name in names if name not in fields]
    if foreign:
        raise click.UsageError(f"{', '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to {named}")


def _train(task: str, architecture: str, corpus: tuple[Path, ...], out: Path | None, resume: bool, overwrite: bool,
           quiet: bool, options: dict[str, Any], world: Any, parent: Any = None) -> None:
    from charlm.data import DataConfig
    from charlm.runs import language_model_run, translation_run
    from charlm.recipe import TrainConfig
    from charlm.trainer import Trainer

    train_config = TrainConfig(**{key: options[key] for key in TrainConfig.__dataclass_fields__})
    out = out or Path(CHECKPOINT_DIR) / f"{Path(os.path.abspath(corpus[0])).stem or 'corpus'}.safetensors"
    if world.is_main:  # before reading the corpus, which can take minutes; the trainer checks again
        from charlm.runfiles import check_creatable

        check_creatable(out)
    data_config = DataConfig(**{key: options[key] for key in DataConfig.__dataclass_fields__ if key in options})
    inputs: list[Any] = [corpus[0]]
    resume_meta: dict[str, Any] = {}
    if task == "lm":
        from charlm.corpus import find_corpus

        found = find_corpus(corpus, options["encoding"], options["include"], options["exclude"])
        if parent is not None:
            run = language_model_run(found, data_config, train_config, model_settings=options["model_settings"],
                                     world=world, parent=parent)
        else:
            run = language_model_run(found, data_config, train_config, architecture, options, world)
        inputs = [file.path for file in found.files] + ([parent.path] if parent is not None else [])
        if found.single:  # the resume file alone records it: a checkpoint of one file stays as it was
            from charlm.runs import single_file_record

            resume_meta = single_file_record(found.roots[0])
    else:
        run = translation_run(corpus[0], data_config, train_config, architecture, options,
                              detected=options["task"] == "auto")
    train_config = run.train_config or train_config
    if resume:
        from charlm.runfiles import run_paths
        from charlm.runstate import check_corpus

        changed = check_corpus(run_paths(out)["resume"], {**run.meta, **resume_meta}, options["allow_changed_corpus"])
        if changed:
            run.notes.append(f"{changed}; going on, as --allow-changed-corpus says")
    if world.is_main:
        for note in run.notes:
            click.echo(f"note: {note}", err=True)
    if not quiet:
        say_skipped(corpus[0], run.skipped)
        click.echo(f"{run.description}{f' on {world.size} processes' if world.size > 1 else ''} -> {out}", err=True)
    summary = Trainer(run.model, run.train_batches, run.val_batches, train_config, out, run.meta,
                      not quiet, world, inputs=inputs, tuning_dir=data_config.cache_dir,
                      resume_meta=resume_meta).run(resume, overwrite)
    if not quiet:
        shown = best_loss(summary) or "done"
        if train_config.keep == "last":
            shown += f" at step {summary['best_step']}; saved the last model"
        click.echo(f"saved {out}: {summary['steps']} steps, {shown}", err=True)
        if run.held_out:
            from charlm.evaluation import evaluate_translator

            report_pairs(evaluate_translator(str(out), run.held_out, options["device"]), "held out: ")


def _task_of(corpus: tuple[Path, ...], task: str, encoding: str, fine_tuning: bool = False) -> str:
    """The task asked for, or with "auto" the one the file's shape says: text for several paths,
    a folder, or a language model to fine-tune."""
    from charlm.pairs import looks_like_pairs

    several = len(corpus) > 1 or os.path.isdir(corpus[0])
    if several and task == "translate":
        raise click.UsageError("pairs are read from one file; give one source<TAB>target file for --task translate")
    if task != "auto":
        return task
    if several or fine_tuning:
        return "lm"
    return "translate" if looks_like_pairs(corpus[0], encoding) else "lm"
