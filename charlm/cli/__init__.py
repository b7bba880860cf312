"""CLI: `charlm train | generate | translate | eval | stats | info | plot | serve | export`, the only home of click.

The CLI parses options and prints; the work is the library's. One module per command: `train`,
`generate`, `translate`, `evaluate` (`charlm eval`), `inspect` (`stats`, `info`), `plot`, `serve`, `export`. This
one holds the group, what the commands share (options, finding a checkpoint, printing) and
`main`, the `charlm` script. Nothing in charlm imports the CLI.

Commands import torch and the rest of charlm lazily, inside the command, so `charlm --help` is
instant. A user's mistake raises `CharlmError` somewhere below; it is shown here as one line on
stderr with a non-zero exit code, never a traceback. Only generated text goes to stdout; text
from a checkpoint reaches a terminal with its control characters escaped (`escaped`). A flag
that sets a setting is made from its row in `charlm.settings` (`options`): its type, bounds,
default and help, so a flag never disagrees with the keyword or the config it fills.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from charlm.presets import CHECKPOINT_DIR
from charlm.errors import out_of_memory
from charlm.settings import TRAIN, TRANSLATE, Setting, for_command
from charlm.settings.rows import LARGEST_SIZE


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
        # A stream the shell closed (`>&-`, `2>&-`) Python leaves None: what a command writes to
        # stdout is one line saying so; notes and progress for a closed stderr go nowhere.
        if sys.stdout is None:
            sys.stdout = ClosedStream()
        if sys.stderr is None:
            sys.stderr = ClosedStream(quiet=True)
        if getattr(sys.stdout, "errors", None) == "strict":
            with contextlib.suppress(AttributeError, ValueError):
                sys.stdout.reconfigure(errors="backslashreplace")
        from charlm.settings.rows import DOOR

        try:
            os.getcwd()  # a folder removed under the shell: torch's libraries would not even load
        except FileNotFoundError:
            fail("the current folder no longer exists (removed while the shell was in it); cd into one that does")
        door = DOOR.set("flag")  # the library's errors name settings by their flags here
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
            if (refused := out_of_memory(error)) is None:
                raise
            fail(str(refused))
        finally:
            DOOR.reset(door)


class ClosedStream(io.TextIOBase):
    """A stream the shell closed (`charlm generate >&-`), where Python leaves `sys.stdout` None:
    a command with output to write there ends with one line saying so, not an AttributeError, and
    one that writes nothing there (train) runs as usual. A `quiet` one (stderr) takes what is
    written to it and drops it."""

    def __init__(self, quiet: bool = False) -> None:
        super().__init__()
        self.quiet = quiet

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        from charlm.errors import CharlmError

        if not text or self.quiet:
            return len(text)
        raise CharlmError("stdout is closed, so there is nowhere to write the output; send it to a file "
                          "(> out.txt) or a pipe")


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

    largest = LARGEST_SIZE

    def __init__(self, min: int) -> None:
        super().__init__(min=min)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        number = super().convert(value, param, ctx)
        if number > self.largest:
            self.fail(f"{number} is too large (at most {self.largest:,})", param, ctx)
        return number


class LiveChoice(click.Choice):
    """A choice among what `choices()` returns when a command runs rather than when the option is
    made: `charlm.models.registry`'s architectures, which a program may add to after importing the CLI."""

    def __init__(self, choices: Callable[[], Iterable[str]]) -> None:
        self.read_choices = choices
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self.read_choices())

    @choices.setter
    def choices(self, _: Iterable[str]) -> None:  # click.Choice.__init__ sets its fixed ones; these are read
        pass


positive = Size(min=1)
non_negative = Size(min=0)


def options(rows: dict[str, Setting] | Iterable[Setting], command: str | None = None) -> Callable[[Any], Any]:
    """A decorator that adds a click option for each of the settings `rows` (`charlm.settings`; of a
    table with `command`, those the command takes), in their order: the flag, type, bounds, default
    and help are the row's, so the command line, the Python API and the checks never disagree."""
    if command is not None:
        rows = for_command(rows, command)
    made = [_option(row) for row in (rows.values() if isinstance(rows, dict) else rows)]

    def add(function: Any) -> Any:
        for option in reversed(made):
            function = option(function)
        return function

    return add


def _option(row: Setting) -> Callable[[Any], Any]:
    flag = f"{row.option}/--no-{row.option[2:]}" if row.switch else row.option
    shown: bool | str = row.shown_default or (row.default not in (None, "") and row.kind not in (bool, tuple))
    kind = {"is_flag": True} if row.kind is bool and not row.switch else {"multiple": True} if row.kind is tuple else {}
    if row.envvar:
        kind.update(envvar=row.envvar, show_envvar=True)
    return click.option(flag, row.name, type=_click_type(row), default=row.default, show_default=shown,
                        help=row.help or None, metavar=row.metavar, **kind)


def _click_type(row: Setting) -> Any:
    """The click type of a row: a choice (read when a command runs where the row's choices are), a
    range from its bounds (a whole number from a lower bound up is a `Size`), or a path."""
    if row.choices is not None:
        return LiveChoice(row.choices) if callable(row.choices) else click.Choice(row.choices)
    if row.kind is int and row.low is not None:
        return Size(min=int(row.low)) if row.high is None else click.IntRange(int(row.low), int(row.high))
    if row.kind is float and (row.low is not None or row.high is not None):
        return click.FloatRange(row.low, row.high, min_open=row.low_open, max_open=row.high_open)
    if row.kind is os.PathLike:
        return click.Path(file_okay=row.path != "folder", dir_okay=row.path != "file",
                          path_type=Path if row.path else str)
    return {int: int, float: float}.get(row.kind)


device_option = options([TRAIN["device"]])
decoding_options = options(TRANSLATE, "eval")  # --beam, --max-length, --length-penalty: translate and eval
encoding_option = options([TRAIN["encoding"]])
corpus_options = options([TRAIN["include"], TRAIN["exclude"]])  # which files of a folder train, stats and eval read


def say_files(found: Any) -> None:
    """How many of its folders' files a corpus (`charlm.text.corpus.FoundCorpus`, read) took and
    skipped, on stderr; nothing for a corpus of files named one by one."""
    if line := found.summary():
        click.echo(f"note: {escaped(line)}", err=True)


# ---------------------------------------------------------------------------------------------
# What several commands do: find a checkpoint, say what was skipped, show a loss and pair scores


def checkpoint_or_latest(path: str | None, task: str) -> str:
    """The given checkpoint, or the newest of `task` in checkpoints/ (said on stderr)."""
    from charlm.checkpoints.loading import latest

    if path:
        return path
    found = latest(CHECKPOINT_DIR, task)
    if found is None:
        hint = "charlm train corpora/timemachine.txt" if task == "lm" else "charlm train corpora/wordpairs.tsv"
        raise click.UsageError(f"no checkpoint in {CHECKPOINT_DIR}/ yet; train one first ({hint}) or pass --checkpoint")
    click.echo(f"using {found}", err=True)
    return found


def best_loss(training: dict) -> str | None:
    """The best loss of a training summary as shown: "best val loss L (ppl P)", or "best train
    loss ..." for a run without a validation split; None if it holds no such number (metadata is
    data: any type, and an int too big for a float)."""
    from charlm.evaluation.reports import perplexity

    for key, name in (("best_val_loss", "val"), ("best_train_loss", "train")):
        value = training.get(key)
        if isinstance(value, float) or (type(value) is int and -1e308 < value < 1e308):
            return f"best {name} loss {value:.4f} (ppl {perplexity(value):.2f})"
    return None


def report_pairs(report: dict[str, Any], lead: str = "") -> None:
    """One line of translation scores (on stderr when it comments on training), notes after it."""
    bleu = f"  BLEU {report['bleu']:.2f}" if report["bleu"] is not None else ""
    click.echo(f"{lead}exact match {100 * report['exact_match']:.1f} %  CER {report['cer']:.3f}{bleu}  "
               f"({report['pairs']:,} pairs, {report['sources']:,} distinct sources)", err=bool(lead))
    if report["unknown_characters"]:
        click.echo(f"note: {report['unknown_characters']:,} source characters are not in the model's vocab "
                   "and count as <unk>", err=True)
    if report.get("note"):
        click.echo(f"note: {report['note']}", err=True)


# ---------------------------------------------------------------------------------------------
# The commands, one module each; they use what is above, so they are imported last.

from charlm.cli import evaluate, export, generate, inside, inspect, plot, serve, train, translate  # noqa: E402

for command in (train.train, generate.generate, translate.translate_command, evaluate.evaluate, inside.inside,
                inspect.stats, inspect.info, plot.plot, serve.serve, export.export):
    cli.add_command(command)
