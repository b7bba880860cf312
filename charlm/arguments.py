"""The Python API's arguments: each keyword checked by its row of `charlm.settings`, each other
argument by its kind (a path, a text), an unknown keyword refused, and every error a function
raises worded as its caller names settings (`settings.rows.DOOR`: a keyword for a program, a JSON
field for the server, a flag for the command line), an allocation too big as one line. What a
function does with its arguments is `charlm.trained`'s and `charlm.api`'s. Standard library only.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from charlm.errors import MEMORY_SIZES, CharlmError, KeywordError, UsageError, out_of_memory
from charlm.settings import Setting
from charlm.settings.rows import in_callers_terms, shown_value

PathLike = str | os.PathLike


def in_callers_words(error: CharlmError, rows: Iterable[Setting]) -> CharlmError:
    """`error`, its message worded with flags, naming the settings of `rows` as the caller does."""
    error.args = (in_callers_terms(str(error), rows), *error.args[1:])
    return error


def callers_terms(*tables: dict[str, Setting]) -> Callable[[Any], Any]:
    """A function whose errors, worded with charlm's flags, name the settings as its caller does
    (`settings.rows.DOOR`: a keyword for a program, a JSON field for the server, the flag for the
    command line, which calls these functions too). A keyword or argument it does not take is a
    `KeywordError`; an allocation that fails is "out of memory", naming the settings of `tables`
    that would ask for less, as `charlm`'s commands say it."""
    rows = [row for table in tables for row in table.values()]
    sizes = tuple(flag for flag in MEMORY_SIZES if flag in {row.option for row in rows})

    def wrap(function: Any) -> Any:
        @functools.wraps(function)
        def call(*args: Any, **keywords: Any) -> Any:
            taken = inspect.signature(call)
            try:
                taken.bind(*args, **keywords)
            except TypeError as error:
                takes = ", ".join(name for name in taken.parameters if name != "self")
                raise KeywordError(f"{function.__name__}() {error} (it takes {takes})") from None
            try:
                return function(*args, **keywords)
            except CharlmError as error:
                raise in_callers_words(error, rows)
            except (MemoryError, RuntimeError) as error:
                if (refused := out_of_memory(error, sizes)) is None:
                    raise
                raise in_callers_words(refused, rows) from None

        return call

    return wrap


def paths(corpus: PathLike | Sequence[PathLike], said: str = "corpus") -> tuple[Path, ...]:
    """The paths of a corpus given as one path or a list of them; anything else (a number, an empty
    list, an empty string, which `Path` would read as the working folder) a `UsageError` naming `said`."""
    given = [corpus] if isinstance(corpus, (str, os.PathLike)) else corpus
    if not isinstance(given, Sequence) or isinstance(given, bytes) or not given or not all(
            isinstance(path, (str, os.PathLike)) and os.fspath(path) not in ("", b"") for path in given):
        raise UsageError(f"{said} must be a path or a list of paths (none empty), got {shown_value(corpus)}")
    return tuple(Path(path) for path in given)


def checked(table: dict[str, Setting], **values: Any) -> list[Any]:
    """`values`, each checked by the row of its name in `table` and named by its keyword."""
    return [table[name].check(value, table[name].argument) for name, value in values.items()]


def one_text(text: Any, said: str) -> None:
    """Nothing if `text` is a str, else a `UsageError` naming `said`."""
    if not isinstance(text, str):
        raise UsageError(f"{said} must be a text (a str), got {shown_value(text)}")


def text_list(texts: Any, said: str) -> list[str]:
    """A text or a list of texts as a list; anything else a `UsageError` naming `said`."""
    listed = [texts] if isinstance(texts, str) else texts
    if not isinstance(listed, (list, tuple)) or not all(isinstance(text, str) for text in listed):
        raise UsageError(f"{said} must be a text or a list of texts, got {shown_value(texts)}")
    return list(listed)
