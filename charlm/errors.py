"""Errors a user can cause, as opposed to bugs.

Anything raised as a `CharlmError` is reported by the CLI as one line on stderr with a non-zero exit
code and no traceback; the message should say what to do next. This module knows nothing else.
"""


class CharlmError(Exception):
    """A problem with the user's input: a file, a flag, a checkpoint. The message is shown as is."""

    exit_code = 1


class UsageError(CharlmError):
    """A request the input leaves nothing to do for (a text of one token, no pair held out), found
    below the CLI: shown as click shows a bad flag, with the command's --help, exit code 2."""

    exit_code = 2


class KeywordError(CharlmError, TypeError):
    """A call of the Python API with a keyword or an argument its function does not take: a
    `TypeError`, as Python's own, and a `CharlmError` like every other mistake in the input."""


class CorpusError(CharlmError):
    """A corpus file that cannot be read or used. `reason` says what is wrong with the file alone,
    without its path or advice, where the error is about one file."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class CheckpointError(CharlmError):
    """A checkpoint that cannot be loaded, or is the wrong kind for the command."""


class MissingExtra(CharlmError):
    """An optional dependency is not installed; the message names the extra that brings it."""


class TrainingInterrupted(CharlmError):
    """Training was stopped by a signal after a resumable checkpoint was written."""

    exit_code = 130


class TrainingDiverged(CharlmError):
    """The loss became NaN or infinite."""


# The flags whose values size what a run, a generation or a translation allocates.
MEMORY_SIZES = ("--hidden-size", "--embedding-size", "--batch-size", "--length", "--num-samples", "--beam",
                "--max-length")


def out_of_memory(error: BaseException, sizes: tuple[str, ...] = MEMORY_SIZES) -> CharlmError | None:
    """The one line for an allocation that failed (Python's MemoryError, torch's "can't allocate
    memory" RuntimeError, CUDA's OutOfMemoryError), naming the bytes asked for and the flags of
    `sizes` that would ask for fewer; None for any other error."""
    import re

    wanted = re.search(r"allocate (\d+) bytes", str(error))
    if not (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or wanted):
        return None
    size = f" ({int(wanted.group(1)):,} bytes asked for)" if wanted else ""
    return CharlmError(f"out of memory{size}" + (f"; use smaller sizes: {', '.join(sizes)}" if sizes else ""))
