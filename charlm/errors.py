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
