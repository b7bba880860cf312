"""CLI: `charlm train | generate | translate | eval | stats | info | plot`, the only home of click.

Commands import torch and the rest of charlm lazily, inside the command, so `charlm --help` is
instant. A user's mistake raises `CharlmError` somewhere below; it is shown here as one line on
stderr with a non-zero exit code, never a traceback. Only generated text goes to stdout; text
from a checkpoint reaches a terminal with its control characters escaped (`escaped`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

CHECKPOINT_DIR = "checkpoints"


class CharlmGroup(click.Group):
    """Turns the errors a user can cause into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        from charlm.errors import CharlmError, UsageError

        def fail(message: str, exit_code: int = 1) -> None:
            click.echo(f"charlm: error: {escaped(' '.join(message.split()))}", err=True)
            ctx.exit(exit_code)

        def usage(message: str, command: str | None, exit_code: int) -> None:
            fail(f"{message} (see charlm {command + ' ' if command else ''}--help)", exit_code)

        # A character stdout's encoding cannot hold (a lone surrogate in a vocab, "é" on an ASCII
        # terminal) is written as a backslash escape rather than ending in a traceback.
        if getattr(sys.stdout, "errors", None) == "strict":
            with contextlib.suppress(AttributeError, ValueError):
                sys.stdout.reconfigure(errors="backslashreplace")
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # stdout's reader has gone (`| head`): click ends quietly, as `cat` does
            raise
        except UsageError as error:  # found below the CLI: shown as click's own
            usage(str(error), ctx.invoked_subcommand, error.exit_code)
        except CharlmError as error:
            fail(str(error), error.exit_code)
        except click.UsageError as error:  # a bad flag or argument: click's own words, on one line
            usage(error.format_message(), error.ctx.info_name if error.ctx and error.ctx.parent else None,
                  error.exit_code)
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
    """charlm: train character-level language models on any UTF-8 text, and sample from them;
    or models that map one string to another, from files of source<TAB>target pairs.

    \b
    charlm train corpora/timemachine.txt
    charlm generate --prefix "time "
    charlm train corpora/wordpairs.tsv
    charlm translate man
    """


def main() -> None:
    cli(prog_name="charlm")


# ---------------------------------------------------------------------------------------------
# Printing what a file holds

# C0, DEL and C1 control characters drive a terminal (ESC starts its commands; U+009B is CSI),
# and a lone surrogate cannot be written as UTF-8: text from a checkpoint or a corpus shows them
# escaped wherever it could reach a terminal.
UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def escaped(text: str, keep: str = "") -> str:
    """`text` with the characters of `UNSAFE` but those in `keep` written as \\x1b, \\udcff."""
    def escape(match: re.Match) -> str:
        code = ord(match.group())
        return match.group() if match.group() in keep else f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return UNSAFE.sub(escape, text)


def to_json(value: Any, **options: Any) -> str:
    """JSON that keeps non-ASCII text readable but escapes the rest of `UNSAFE` in its strings:
    json.dumps escapes only C0 control characters itself."""
    text = json.dumps(value, ensure_ascii=False, **options)
    return re.sub(r"[\x7f-\x9f\ud800-\udfff]", lambda match: f"\\u{ord(match.group()):04x}", text)


def is_terminal(stream: Any) -> bool:
    """Whether `stream` is a terminal, where control characters are commands rather than text."""
    return stream.isatty()


def write(text: str, keep: str = "\n\t", end: str = "") -> None:
    """Write text and `end` to stdout at once (it streams): exact into a pipe or a file; on a
    terminal with the control characters but `keep` escaped, so that a model's output cannot
    drive the terminal."""
    sys.stdout.write((escaped(text, keep) if is_terminal(sys.stdout) else text) + end)
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# Shared options

class Size(click.IntRange):
    """A whole number from `min` up to 2**63 - 1, torch's largest size: past it torch fails deep
    inside on an overflow, below it a size too big is "out of memory"."""

    largest = 2**63 - 1

    def __init__(self, min: int) -> None:
        super().__init__(min=min)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        number = super().convert(value, param, ctx)
        if number > self.largest:
            self.fail(f"{number} is too large (at most {self.largest:,})", param, ctx)
        return number


positive = Size(min=1)
non_negative = Size(min=0)
MAX_THREADS = 1024  # torch takes up to 2**31 - 1, and would start them all on a first parallel op
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


# Defaults that depend on the task: a language model of a long text, or a model of short pairs.
TASK_DEFAULTS = {
    "lm": {"cell": "lstm", "embedding_size": 64, "hidden_size": 512, "num_layers": 2, "dropout": 0.3,
           "lr": 3e-3, "lr_schedule": "cosine", "epochs": 10, "keep": "best", "threads": None},
    "translate": {"cell": "gru", "embedding_size": 32, "hidden_size": 128, "num_layers": 1, "dropout": 0.0,
                  "lr": 5e-3, "lr_schedule": "constant", "epochs": 30, "keep": "last", "threads": 1},
}
PAIR_THREADS = TASK_DEFAULTS["translate"]["threads"]
LM_ONLY = ("tokens", "preprocess", "seq_len", "iterator", "cache_dir", "no_cache")
PAIRS_ONLY = ("model_type", "attention", "skip_bad_lines")


def _per_task(name: str) -> str:
    lm, pairs = TASK_DEFAULTS["lm"][name], TASK_DEFAULTS["translate"][name]
    shown = "torch's" if lm is None else lm
    return f"[default: {shown} for text, {pairs} for pairs]"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@cli.command()
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
        _say_skipped(corpus, run.skipped)
        click.echo(f"{run.description}{f' on {world.size} processes' if world.size > 1 else ''} -> {out}", err=True)
    summary = Trainer(run.model, run.train_batches, run.val_batches, train_config, out, run.meta,
                      not quiet, world, inputs=[corpus]).run(resume, overwrite)
    if not quiet:
        shown = _best_loss(summary) or "done"
        if train_config.keep == "last":
            shown += f" at step {summary['best_step']}; saved the last model"
        click.echo(f"saved {out}: {summary['steps']} steps, {shown}", err=True)
        if run.held_out:
            from charlm.evaluation import evaluate_translator

            _report_pairs(evaluate_translator(str(out), run.held_out, options["device"]), "held out: ")


def _task_of(corpus: Path, task: str, encoding: str) -> str:
    """The task asked for, or with "auto" the one the file's shape says."""
    from charlm.pairs import looks_like_pairs

    if task != "auto":
        return task
    return "translate" if looks_like_pairs(corpus, encoding) else "lm"


def _say_skipped(path: Path, skipped: list[int]) -> None:
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (" ..." if len(skipped) > 10 else "")
        click.echo(f"skipped {len(skipped)} malformed line{'s' if len(skipped) > 1 else ''} of {path}: {shown}", err=True)


def _best_loss(training: dict) -> str | None:
    """The best loss of a training summary as shown: "best val loss L (ppl P)", or "best train
    loss ..." for a run without a validation split; None if it holds no such number (metadata is
    data: any type, and an int too big for a float)."""
    from charlm.evaluation import perplexity

    for key, name in (("best_val_loss", "val"), ("best_train_loss", "train")):
        value = training.get(key)
        if isinstance(value, float) or (type(value) is int and -1e308 < value < 1e308):
            return f"best {name} loss {value:.4f} (ppl {perplexity(value):.2f})"
    return None


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

    sampling = generator.Sampling(temperature, top_k, top_p, greedy)
    path = _checkpoint_or_latest(checkpoint, "lm")
    model, meta, vocab = load_model(path, "lm", pick_device(device))
    prefix_ids = generator.encode_prefix(prefix, vocab, meta["tokens"], meta["preprocess"], unknown)
    if prefix and not prefix_ids and unknown == "skip":
        click.echo("note: every character of the prefix was unknown and skipped: generating without one", err=True)
    generator.stream_text(model, vocab, meta["tokens"], prefix_ids, length, sampling, num_samples, seed, on_text=write)


# ---------------------------------------------------------------------------------------------
# translate


def decoding_options(function: Any) -> Any:
    """--beam, --length-penalty and --max-length, shared by translate and eval."""
    options = [
        click.option("--beam", type=positive, default=1, show_default=True,
                     help="Beam search keeping this many candidates (1: greedy)."),
        click.option("--length-penalty", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="Beam search ranks finished outputs by log-probability / length ** this "
                          "(0: total log-probability; 1: per character)."),
        click.option("--max-length", type=positive, default=None,
                     help="Stop an output at this many characters [default: twice the input's length + 10]."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@cli.command("translate")
@click.argument("words", nargs=-1)
@click.option("--checkpoint", type=click.Path(path_type=str), default=None,
              help=f"A translation checkpoint [default: the newest in {CHECKPOINT_DIR}/].")
@decoding_options
@click.option("--attention-plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Draw the attention weights of the one input as a heat map to this PNG (needs charlm[plot]).")
@unknown_option
@device_option
def translate_command(words: tuple[str, ...], checkpoint: str | None, beam: int, length_penalty: float,
                      max_length: int | None, attention_plot: Path | None, unknown: str, device: str) -> None:
    """Translate each WORD, or each line of stdin as it comes when no WORD is given: one line out
    per input.

    \b
    charlm translate man king
    printf 'hello\\nhihell\\n' | charlm translate --checkpoint checkpoints/hihell.safetensors
    charlm translate --checkpoint checkpoints/fra-eng-20k.safetensors --beam 5 "I'm cold."
    charlm translate --checkpoint checkpoints/fra-eng-20k.safetensors --attention-plot a.png "Go away."
    """
    from charlm import translate
    from charlm.checkpoint import load_translator
    from charlm.runtime import cpu_threads, pick_device

    texts = list(words) or None  # None: each line of stdin, translated as it comes
    if attention_plot:
        texts = texts or list(itertools.islice(stdin_lines(unknown), 2))
        if len(texts) != 1:
            got = len(texts) if words else "more than one line" if texts else "no line"
            raise click.UsageError(f"--attention-plot draws one input; got {got}")
    path = _checkpoint_or_latest(checkpoint, "translate")
    model, _, source_vocab, target_vocab = load_translator(path, pick_device(device))

    def translated(inputs: list[str]) -> list[str]:
        return translate.translate(model, inputs, source_vocab, target_vocab, beam, max_length, length_penalty,
                                   unknown)

    with cpu_threads(PAIR_THREADS):
        if texts is None:  # a line's answer is out before the next line is read: `yes man |` works
            for line in stdin_lines(unknown):
                write(translated([line])[0], keep="", end="\n")
            return
        outputs = translated(texts)  # in batches
    for output in outputs:
        write(output, keep="", end="\n")
    if attention_plot:
        from charlm.generate import encode_prefix
        from charlm.plot import plot_attention

        source_ids = encode_prefix(texts[0], source_vocab, unknown=unknown, what="input")
        if not source_ids:
            raise click.UsageError("nothing to plot: the input is empty")
        weights = translate.attention_weights(model, source_ids, target_vocab.encode(outputs[0]))
        plot_attention(weights, source_vocab.decode(source_ids), [*outputs[0], "<eos>"], attention_plot)
        click.echo(f"attention weights drawn in {attention_plot}", err=True)


MAX_LINE_BYTES = 1 << 20  # a line of stdin; `translate < /dev/zero` must not read forever


def stdin_lines(unknown: str) -> Iterator[str]:
    """The lines of stdin, each as soon as it has come, without its "\\n" or "\\r\\n" (and the
    first without a byte-order mark). stdin is read as bytes and decoded here: bytes that are not
    text in its encoding are an error naming the line, or under --unknown skip / unk characters
    the model never saw (U+FFFD)."""
    from charlm.errors import CharlmError

    if sys.stdin is None:
        raise click.UsageError("stdin is closed; give the WORDS to translate, or pipe lines in")
    encoding = sys.stdin.encoding or "utf-8"
    for number in itertools.count(1):
        line = sys.stdin.buffer.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        elif len(line) > MAX_LINE_BYTES:
            raise CharlmError(f"line {number} of stdin is longer than {MAX_LINE_BYTES:,} bytes; give shorter lines")
        try:
            text = line.decode(encoding)
        except UnicodeDecodeError as error:
            if unknown == "error":
                raise CharlmError(
                    f"line {number} of stdin is not valid {encoding} at byte offset {error.start}; convert it to "
                    f"{encoding}, or pass --unknown skip (drop what is not) or --unknown unk (map it to <unk>)"
                ) from None
            text = line.decode(encoding, errors="replace")
        yield text.removeprefix("\ufeff") if number == 1 else text


# ---------------------------------------------------------------------------------------------
# eval, stats, info


@cli.command("eval")
@click.option("--checkpoint", type=click.Path(path_type=str), default=None,
              help=f"A checkpoint [default: the newest in {CHECKPOINT_DIR}/ for FILE's kind: text or pairs].")
@click.argument("file", type=click.Path(path_type=Path))
@encoding_option
@decoding_options
@click.option("--held-out", is_flag=True, help="Pairs: score only the pairs of FILE held out when the model was trained on it.")
@click.option("--skip-bad-lines", is_flag=True, help="Pairs: leave out malformed lines instead of stopping.")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate(checkpoint: str | None, file: Path, encoding: str, beam: int, length_penalty: float,
             max_length: int | None, held_out: bool, skip_bad_lines: bool, device: str, as_json: bool) -> None:
    """Loss, perplexity and bits per character of a language model on FILE; or exact match,
    character error rate and BLEU of a translation model on FILE's pairs.

    \b
    charlm eval --checkpoint checkpoints/timemachine.safetensors corpora/timemachine.txt
    charlm eval --checkpoint checkpoints/wordpairs.safetensors corpora/wordpairs.tsv --held-out
    """
    from charlm.checkpoint import read_metadata
    from charlm.pairs import looks_like_pairs

    if checkpoint:
        task = read_metadata(checkpoint).get("task")
    else:
        task = "translate" if looks_like_pairs(file, encoding) else "lm"
    path = _checkpoint_or_latest(checkpoint, task)
    if task == "translate":
        from charlm.evaluation import evaluate_translator
        from charlm.pairs import read_pairs

        pairs, skipped = read_pairs(file, encoding, skip_bad_lines)
        _say_skipped(file, skipped)
        report = evaluate_translator(path, pairs, device, held_out, beam, length_penalty, max_length)
        if as_json:
            click.echo(json.dumps(report))
        else:
            _report_pairs(report)
        return
    if held_out:
        raise click.UsageError("--held-out is for translation models")
    from charlm.checkpoint import load_model
    from charlm.evaluation import evaluate_text
    from charlm.runtime import pick_device

    model, meta, vocab = load_model(path, "lm", pick_device(device))
    report = evaluate_text(model, meta, vocab, file, encoding)
    if report["unknown_tokens"] and not as_json:
        click.echo(f"note: {report['unknown_tokens']:,} tokens of {file} are not in the model's vocab and count as <unk>",
                   err=True)
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(f"loss {report['loss']:.4f} nats/token  perplexity {report['ppl']:.3f}  "
                   f"bits/token {report['bpc']:.4f}  ({report['tokens']:,} tokens)")


def _report_pairs(report: dict, lead: str = "") -> None:
    """One line of translation scores (on stderr when it comments on training), notes after it."""
    bleu = f"  BLEU {report['bleu']:.2f}" if report["bleu"] is not None else ""
    click.echo(f"{lead}exact match {100 * report['exact_match']:.1f} %  CER {report['cer']:.3f}{bleu}  "
               f"({report['pairs']:,} pairs, {report['sources']:,} distinct sources)", err=bool(lead))
    if report["unknown_characters"]:
        click.echo(f"note: {report['unknown_characters']:,} source characters are not in the model's vocab "
                   "and count as <unk>", err=True)
    if report.get("note"):
        click.echo(f"note: {report['note']}", err=True)


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
        click.echo(to_json(report))
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
        click.echo(to_json(meta, indent=2))
        return
    def field(value: Any, kind: type | tuple[type, ...], default: Any) -> Any:  # metadata is data: trust no type
        return value if isinstance(value, kind) and not isinstance(value, bool) else default

    model, training = field(meta.get("model"), dict, {}), field(meta.get("training"), dict, {})
    vocab_size = lambda key: len(field(field(meta.get(key), dict, {}).get("itos"), list, []))
    if meta.get("task") == "translate":
        vocabs = f"source vocab {vocab_size('source_vocab')}, target vocab {vocab_size('target_vocab')}"
    else:
        vocabs = f"vocab {vocab_size('vocab')}"
    best = _best_loss(training)
    lines = [
        f"checkpoint   {checkpoint} ({os.path.getsize(checkpoint):,} bytes, format {meta.get('format_version')})",
        f"task         {meta.get('task')} ({meta.get('kind', 'model')})",
        f"model        {str(meta['architecture']) + ': ' if meta.get('architecture') else ''}"
        f"{', '.join(f'{key}={value}' for key, value in model.items())}",
        f"text         tokens={meta.get('tokens')}, preprocess={meta.get('preprocess')}, {vocabs}"
        + (f", corpus {meta['corpus']}" if meta.get("corpus") else ""),
        f"training     {training.get('steps')} steps, {training.get('tokens')} tokens"
        + (f", {best} at step {training.get('best_step')}" if best else ""),
    ]
    click.echo("\n".join(escaped(line) for line in lines))  # the metadata is anyone's text


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

    for note in plot_runs(list(runs), out, title):
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {out}", err=True)
