"""CLI: `charlm train | generate | eval | stats | info | plot`, the only home of click.

Commands import torch and the rest of charlm lazily, inside the command, so `charlm --help` is
instant. A user's mistake raises `CharlmError` somewhere below; it is shown here as one line on
stderr with a non-zero exit code, never a traceback. Only generated text goes to stdout.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import click

CHECKPOINT_DIR = "checkpoints"


class CharlmGroup(click.Group):
    """Turns the errors a user can cause into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        from charlm.errors import CharlmError

        def fail(message: str, exit_code: int = 1) -> None:
            click.echo(f"charlm: error: {' '.join(message.split())}", err=True)
            ctx.exit(exit_code)

        try:
            return super().invoke(ctx)
        except CharlmError as error:
            fail(str(error), error.exit_code)
        except click.UsageError as error:  # a bad flag or argument: click's own words, on one line
            command = error.ctx.info_name if error.ctx and error.ctx.parent else None
            fail(f"{error.format_message()} (see charlm {command + ' ' if command else ''}--help)", error.exit_code)
        except KeyboardInterrupt:
            click.echo("charlm: interrupted", err=True)
            ctx.exit(130)
        except OSError as error:  # disk full, permission denied, ...
            fail(f"{error.strerror or error}: {error.filename or ''}".rstrip(": "))
        except (MemoryError, RuntimeError) as error:  # torch says "can't allocate memory" in a RuntimeError
            wanted = re.search(r"allocate (\d+) bytes", str(error))
            if not (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or wanted):
                raise
            size = f" ({int(wanted.group(1)):,} bytes asked for)" if wanted else ""
            fail(f"out of memory{size}; use smaller sizes: --hidden-size, --batch-size, --length, --num-samples")


@click.group(cls=CharlmGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="charlm")
def cli() -> None:
    """charlm: train character-level language models on any UTF-8 text, and sample from them.

    \b
    charlm train corpora/timemachine.txt
    charlm generate --prefix "time "
    """


def main() -> None:
    cli(prog_name="charlm")


# ---------------------------------------------------------------------------------------------
# Shared options

positive = click.IntRange(min=1)
non_negative = click.IntRange(min=0)
unknown_option = click.option(
    "--unknown", type=click.Choice(["error", "skip", "unk"]), default="error", show_default=True,
    help="What to do with characters the model never saw: stop with an error, drop them, or map them to <unk>.")
device_option = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True,
    help="Where to run: auto picks cuda, then mps, then cpu.")
encoding_option = click.option(
    "--encoding", default="utf-8", show_default=True, help="Text encoding of the input file.")
cache_dir_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Keep the token ids here, so the next run on the same text starts at once "
         "[default: .charlm-cache/ beside the text].")
no_cache_option = click.option("--no-cache", is_flag=True, help="Neither read nor write the token cache.")


def _cache_dir(text: Path, cache_dir: Path | None, no_cache: bool) -> str | None:
    from charlm.data import default_cache_dir

    return None if no_cache else str(cache_dir or default_cache_dir(text))


def _checkpoint_or_latest(path: str | None, task: str) -> str:
    """The given checkpoint, or the newest of `task` in checkpoints/ (said on stderr)."""
    from charlm.checkpoint import latest

    if path:
        return path
    found = latest(CHECKPOINT_DIR, task)
    if found is None:
        hint = "charlm train corpora/timemachine.txt" if task == "lm" else "charlm train corpora/wordpairs.tsv"
        raise click.UsageError(f"no checkpoint in {CHECKPOINT_DIR}/ yet; train one first ({hint}) or pass --checkpoint")
    click.echo(f"using {found}", err=True)
    return found


# ---------------------------------------------------------------------------------------------
# train


@cli.command()
@click.argument("corpus", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--model", "cell", type=click.Choice(["rnn", "gru", "lstm"]), default="lstm", show_default=True,
              help="Recurrent cell.")
@click.option("--from-scratch", is_flag=True, help="Use the from-scratch cells (explicit equations) instead of torch's.")
@click.option("--tokens", type=click.Choice(["char", "word"]), default="char", show_default=True,
              help="Tokenize into characters or whitespace-separated words.")
@click.option("--preprocess", type=click.Choice(["none", "d2l"]), default="none", show_default=True,
              help="none: the text as it is; d2l: letters only, lower case (the d2l book's).")
@encoding_option
@click.option("--min-freq", type=positive, default=1, show_default=True, help="Rarer tokens become <unk>.")
@click.option("--max-vocab", type=positive, default=None, help="Keep at most this many tokens (the rest become <unk>).")
@cache_dir_option
@no_cache_option
@click.option("--embedding-size", type=non_negative, default=64, show_default=True, help="0 feeds one-hot vectors.")
@click.option("--hidden-size", type=positive, default=512, show_default=True)
@click.option("--num-layers", type=positive, default=2, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.25, show_default=True)
@click.option("--seq-len", type=positive, default=64, show_default=True, help="Steps of backpropagation through time.")
@click.option("--batch-size", type=positive, default=32, show_default=True,
              help="Rows per step, over all processes under torchrun.")
@click.option("--iterator", type=click.Choice(["sequential", "random"]), default="sequential", show_default=True,
              help="sequential carries the hidden state between batches; random samples independent windows.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw"]), default="adamw", show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-3, show_default=True, help="Learning rate.")
@click.option("--lr-schedule", type=click.Choice(["constant", "cosine"]), default="cosine", show_default=True,
              help="cosine: from --lr down to --lr x --min-lr-ratio over --epochs.")
@click.option("--min-lr-ratio", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--clip", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Clip the global gradient norm to this (0: off).")
@click.option("--epochs", type=positive, default=20, show_default=True)
@click.option("--max-steps", type=positive, default=None, help="Stop after this many optimizer steps.")
@click.option("--max-time", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this many seconds.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="The last part of the corpus held out for validation.")
@click.option("--eval-every", type=positive, default=None, help="Evaluate every N steps (default: each epoch).")
@click.option("--seed", type=int, default=0, show_default=True)
@device_option
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="auto: bf16 autocast on a CUDA GPU that supports it, else fp32.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint path [default: checkpoints/<corpus stem>.safetensors].")
@click.option("--resume", is_flag=True, help="Continue the run saved at --out from where it stopped.")
@click.option("--overwrite", is_flag=True, help="Replace a run already saved at --out.")
@click.option("--quiet", is_flag=True, help="No progress bar or evaluation lines.")
def train(corpus: Path, out: Path | None, resume: bool, overwrite: bool, quiet: bool, tokens: str, preprocess: str, encoding: str,
          min_freq: int, max_vocab: int | None, cache_dir: Path | None, no_cache: bool, **options: Any) -> None:
    """Train a language model on CORPUS, a UTF-8 text file.

    \b
    charlm train corpora/timemachine.txt
    charlm train corpora/timemachine.txt --preprocess d2l --model gru --max-time 300
    charlm train my.txt --out runs/my.safetensors --resume
    torchrun --nproc_per_node=4 -m charlm train my.txt --batch-size 128   # 4 GPUs, 32 rows each
    """
    from dataclasses import replace

    from charlm.data import BatchIterator, fit_batch_size, lm_eval_batches, load_corpus
    from charlm.errors import CharlmError
    from charlm.model import LanguageModel, ModelConfig
    from charlm.runtime import distributed, seed_everything
    from charlm.trainer import TrainConfig, Trainer

    model_keys = {"cell", "embedding_size", "hidden_size", "num_layers", "dropout", "from_scratch"}
    train_config = TrainConfig(**{key: value for key, value in options.items() if key not in model_keys})
    out = out or Path(CHECKPOINT_DIR) / f"{corpus.stem}.safetensors"
    world = click.get_current_context().with_resource(distributed(train_config.device))  # alone, or under torchrun
    quiet = quiet or not world.is_main
    with world.main_first():  # rank 0 fills the token cache, then the others read it
        data = load_corpus(corpus, tokens, preprocess, encoding, min_freq, max_vocab,
                           cache_dir=_cache_dir(corpus, cache_dir, no_cache))
    train_ids, val_ids = data.split(train_config.val_fraction)
    batch_size = fit_batch_size(len(train_ids), train_config.batch_size, train_config.seq_len)
    if batch_size < train_config.batch_size and world.is_main:
        click.echo(f"note: the training split has {len(train_ids):,} tokens, too few for batches of "
                   f"{train_config.batch_size} x {train_config.seq_len}: using --batch-size {batch_size}", err=True)
    train_config = replace(train_config, batch_size=batch_size)
    try:
        config = ModelConfig(vocab_size=len(data.vocab), **{key: options[key] for key in model_keys})
    except ValueError as error:  # a model option click's ranges let through (nan)
        raise CharlmError(str(error)) from None
    seed_everything(train_config.seed)  # the initial weights are part of what --seed fixes
    model = LanguageModel(config)
    meta = {"task": "lm", "model": _asdict(config), "vocab": data.vocab.to_dict(), "tokens": tokens,
            "preprocess": preprocess, "corpus": corpus.name}
    if not quiet:
        click.echo(f"{corpus}: {len(data.ids):,} tokens{' (cached)' if data.cached else ''}, vocab {len(data.vocab)}; "
                   f"{config.cell} {config.num_layers}x{config.hidden_size}, "
                   f"{model.num_parameters():,} parameters{f' on {world.size} processes' if world.size > 1 else ''} -> {out}",
                   err=True)
    train_batches = BatchIterator(train_ids, train_config.batch_size, train_config.seq_len, train_config.iterator,
                                  train_config.seed)
    val_batches = lm_eval_batches(val_ids, train_config.batch_size, train_config.seq_len) if len(val_ids) >= 2 else None
    summary = Trainer(model, train_batches, val_batches, train_config, out, meta, not quiet, world).run(resume, overwrite)
    if not quiet:
        best = summary["best_val_loss"]
        shown = f"best val loss {best:.4f} (ppl {_exp(best):.2f})" if best is not None else "done"
        click.echo(f"saved {out}: {summary['steps']} steps, {shown}", err=True)


def _asdict(config: Any) -> dict:
    from dataclasses import asdict

    return asdict(config)


def _exp(value: float) -> float:
    import math

    return math.exp(min(value, 700.0))


# ---------------------------------------------------------------------------------------------
# generate


@cli.command()
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
@click.option("--seed", type=int, default=None, help="Same seed, same text.")
@unknown_option
@device_option
def generate(checkpoint: str | None, prefix: str, length: int, temperature: float, top_k: int, top_p: float,
             greedy: bool, num_samples: int, seed: int | None, unknown: str, device: str) -> None:
    """Sample text from a trained language model; it streams to stdout.

    \b
    charlm generate --prefix "time "
    charlm generate --checkpoint checkpoints/timemachine.safetensors --top-p 0.9 --seed 1
    """
    from charlm import generate as generator
    from charlm.checkpoint import load_model
    from charlm.runtime import pick_device
    from charlm.text import Tokenizer

    sampling = generator.Sampling(temperature, top_k, top_p, greedy)
    path = _checkpoint_or_latest(checkpoint, "lm")
    model, meta, vocab = load_model(path, "lm", pick_device(device))
    tokenizer = Tokenizer(meta["tokens"])
    prefix_ids = generator.encode_prefix(prefix, vocab, meta["tokens"], meta["preprocess"], unknown)
    context = prefix_ids or generator.start_ids(vocab)
    shown_prefix = tokenizer.join(vocab.decode(prefix_ids))
    banned = generator.special_ids(vocab)
    separator = "" if meta["tokens"] == "char" or not prefix_ids else " "

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    if num_samples == 1:
        write(shown_prefix + separator)
        first = [True]

        def stream(block: Any) -> None:
            pieces = vocab.decode(block[0].tolist())
            write(("" if first[0] else separator) + tokenizer.join(pieces))
            first[0] = False

        generator.generate(model, context, length, sampling, 1, seed, on_tokens=stream, banned=banned)
        write("\n")
    else:
        made = generator.generate(model, context, length, sampling, num_samples, seed, banned=banned)
        for index, sample in enumerate(made.tolist()):
            write(("\n" if index else "") + shown_prefix + separator + tokenizer.join(vocab.decode(sample)) + "\n")


# ---------------------------------------------------------------------------------------------
# eval, stats, info


@cli.command("eval")
@click.option("--checkpoint", type=click.Path(path_type=str), default=None,
              help=f"A checkpoint [default: the newest language model in {CHECKPOINT_DIR}/].")
@click.argument("file", type=click.Path(path_type=Path))
@encoding_option
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep FILE's token ids here for the next evaluation [default: no cache].")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate(checkpoint: str | None, file: Path, encoding: str, cache_dir: Path | None, device: str,
             as_json: bool) -> None:
    """Loss, perplexity and bits per character of a model on FILE.

    \b
    charlm eval --checkpoint checkpoints/timemachine.safetensors corpora/timemachine.txt
    """
    from charlm.checkpoint import load_model
    from charlm.data import lm_eval_batches, load_corpus
    from charlm.runtime import pick_device
    from charlm.trainer import evaluate as evaluate_batches, loss_report

    path = _checkpoint_or_latest(checkpoint, "lm")
    model, meta, vocab = load_model(path, "lm", pick_device(device))
    data = load_corpus(file, meta["tokens"], meta["preprocess"], encoding, vocab=vocab,
                       cache_dir=cache_dir)  # evaluating writes no file unless asked
    if len(data.ids) < 2:
        raise click.UsageError(f"{file} has fewer than 2 tokens; nothing to predict")
    unknown = int((data.ids == vocab.unk_index).sum())
    report = {"tokens": len(data.ids) - 1, "unknown_tokens": unknown, **loss_report(evaluate_batches(model, lm_eval_batches(data.ids)()))}
    if unknown and not as_json:
        click.echo(f"note: {unknown:,} tokens of {file} are not in the model's vocab and count as <unk>", err=True)
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(f"loss {report['loss']:.4f} nats/token  perplexity {report['ppl']:.3f}  "
                   f"bits/token {report['bpc']:.4f}  ({report['tokens']:,} tokens)")


@cli.command()
@click.argument("corpus", type=click.Path(path_type=Path))
@click.option("--tokens", type=click.Choice(["char", "word"]), default="char", show_default=True)
@click.option("--preprocess", type=click.Choice(["none", "d2l"]), default="none", show_default=True)
@encoding_option
@click.option("--top", type=non_negative, default=10, show_default=True, help="How many of the most frequent tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stats(corpus: Path, tokens: str, preprocess: str, encoding: str, top: int, as_json: bool) -> None:
    """Token count, vocab size and the most frequent tokens of CORPUS.

    \b
    charlm stats corpora/timemachine.txt --preprocess d2l
    """
    from charlm.text import Vocab, count_tokens, preprocess_chunks, read_chunks

    counts = count_tokens(preprocess_chunks(read_chunks(corpus, encoding), preprocess), tokens)
    vocab = Vocab(counts)
    frequent = [[token, counts[token]] for token in vocab.itos[1 : 1 + top]]
    report = {"tokens": sum(counts.values()), "vocab_size": len(vocab), "distinct_tokens": len(counts),
              "most_frequent": frequent}
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False))
        return
    click.echo(f"tokens      {report['tokens']:,}")
    click.echo(f"vocab size  {report['vocab_size']} (<unk> + {report['distinct_tokens']} distinct)")
    for token, count in frequent:
        click.echo(f"  {token!r:>12}  {count:,}")


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the whole metadata as JSON.")
def info(checkpoint: str, as_json: bool) -> None:
    """What is inside CHECKPOINT, read from its metadata alone.

    \b
    charlm info checkpoints/timemachine.safetensors
    """
    from charlm.checkpoint import read_metadata

    meta = read_metadata(checkpoint)
    if as_json:
        click.echo(json.dumps(meta, ensure_ascii=False, indent=2))
        return
    def field(value: Any, kind: type | tuple[type, ...], default: Any) -> Any:  # metadata is data: trust no type
        return value if isinstance(value, kind) and not isinstance(value, bool) else default

    model, training = field(meta.get("model"), dict, {}), field(meta.get("training"), dict, {})
    vocab = field(field(meta.get("vocab"), dict, {}).get("itos"), list, [])
    best = field(training.get("best_val_loss"), (int, float), None)
    lines = [
        f"checkpoint   {checkpoint} ({os.path.getsize(checkpoint):,} bytes, format {meta.get('format_version')})",
        f"task         {meta.get('task')} ({meta.get('kind', 'model')})",
        f"model        {', '.join(f'{key}={value}' for key, value in model.items())}",
        f"text         tokens={meta.get('tokens')}, preprocess={meta.get('preprocess')}, vocab {len(vocab)}"
        + (f", corpus {meta['corpus']}" if meta.get("corpus") else ""),
        f"training     {training.get('steps')} steps, {training.get('tokens')} tokens"
        + (f", best val loss {best:.4f} (ppl {_exp(best):.2f}) at step {training.get('best_step')}" if best is not None else ""),
    ]
    click.echo("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# plot


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("curve.png"), show_default=True,
              help="The picture to write (.png, .svg or .pdf).")
@click.option("--title", default=None, help="A title above the plots.")
def plot(runs: tuple[Path, ...], out: Path, title: str | None) -> None:
    """Loss and perplexity against tokens seen, for one or several RUNS on one figure.

    A run is its metrics file (X.metrics.jsonl) or its checkpoint (X.safetensors), whose
    metrics file is beside it. Needs matplotlib: pip install 'charlm[plot]'.

    \b
    charlm plot checkpoints/timemachine.safetensors
    charlm plot runs/lstm.metrics.jsonl runs/gru.metrics.jsonl --out compare.png
    """
    from charlm.plot import plot_runs

    plot_runs(list(runs), out, title)
    click.echo(f"wrote {out}", err=True)
