"""Rows: what a setting is. A `Setting` is a row: its name (the Python keyword and the JSON field), its type, its default,
its bounds in words, its help, and the commands that take it. From the rows come the click options
(`charlm.cli.options`), the Python API's signatures and `help()`, the HTTP request fields of
generation, and the checks: `Setting.check(value, said)` refuses a value out of bounds with one
line that names it as the caller named it (a flag, a keyword, a JSON field). A bound is checked
here, once; click's own range types are made from the same bounds, so `--help` and the check
never disagree.

Standard library only: it knows nothing about what a setting does; the tables of rows are
`charlm.settings.training`'s and `charlm.settings.generation`'s.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from charlm.errors import CharlmError

# The largest size torch takes (a length, a count of units, rows or samples): past it torch fails
# deep inside on an overflow; below it, a size too big is "out of memory".
LARGEST_SIZE = 2**63 - 1


class SettingError(CharlmError):
    """A value a setting refuses; `setting` is the row's name, `said` how the caller named it."""

    def __init__(self, message: str, setting: str, said: str) -> None:
        super().__init__(message)
        self.setting, self.said = setting, said


@dataclass(frozen=True)
class Setting:
    """One setting. `kind` is int, float, str, bool, os.PathLike (a path) or tuple (repeatable
    text); `default` None means "not set" (a task's or an architecture's default, or the feature
    off). Numbers are checked against `low` / `high` (open or closed) and
    `finite`; `rule` says the bound in words, as the error shows it: "{said} must be {rule}, got
    {value}". `choices` is a tuple, or a function read when a command runs (registered
    architectures). `flag` is the command-line flag when it is not "--" + the name with dashes;
    `keyword` the API keyword when it is not the name; `switch` makes a boolean whose default is
    None a --name/--no-name pair. A training setting also says which task reads it (`only`) and
    how it meets a model: a field of its config (`model_field`), fixed by a parent (`from_parent`)."""

    name: str
    kind: type
    default: Any = None
    help: str = ""
    commands: tuple[str, ...] = ()
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    finite: bool = False
    rule: str = ""
    flag: str | None = None
    keyword: str | None = None
    switch: bool = False
    metavar: str | None = None
    shown_default: str | None = None  # what --help shows as the default when it is not `default` itself
    only: str | None = None  # the one task that reads it ("lm", "translate"): given for the other, an error
    model_field: bool = False  # goes to the model's config by field name: an error for one without that field
    from_parent: bool = False  # --init-from takes it from its checkpoint: given with it, an error
    path: str | None = None  # of a path: "file" or "folder" (given on as a `Path`); None: either (as given)
    envvar: str | None = None  # the environment variable a command reads when the flag is not given

    @property
    def option(self) -> str:
        """The command-line flag: --hidden-size for hidden_size."""
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def argument(self) -> str:
        """The Python keyword: `model` for the setting `cell`."""
        return self.keyword or self.name

    def choice_list(self) -> tuple[str, ...]:
        choices = self.choices() if callable(self.choices) else self.choices
        return tuple(choices or ())

    def check(self, value: Any, said: str | None = None) -> Any:
        """`value` if this setting takes it, else a `SettingError` naming it as `said` (the flag by
        default). None passes where the default is None (not set)."""
        said = said or self.option
        if value is None:
            if self.default is None:
                return None
            raise SettingError(f"{said} must be given, got null", self.name, said)
        if self.kind is bool:
            if not isinstance(value, bool):
                raise SettingError(f"{said} must be true or false, got {shown_value(value)}", self.name, said)
            return value
        if self.choices is not None:
            choices = self.choice_list()
            if value not in choices:
                raise SettingError(f"{said} must be one of {', '.join(choices)}, got {shown_value(value)}", self.name, said)
            return value
        if self.kind is int:  # any whole number (numpy's too, made an int), but a bool: it is no number of steps
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise SettingError(f"{said} must be a whole number, got {shown_value(value)}", self.name, said)
            value = int(value)
            self._check_bounds(value, said)
            if self.is_size and value > LARGEST_SIZE:
                raise SettingError(f"{said} is too large: {shown_value(value)} (at most {LARGEST_SIZE:,})", self.name, said)
            return value
        if self.kind is float:  # any real number (numpy's too), made a float
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise SettingError(f"{said} must be a number, got {shown_value(value)}", self.name, said)
            try:
                number = float(value)
            except OverflowError:  # a whole number past float's range: as far as a float goes
                number = math.inf if value > 0 else -math.inf
            self._check_bounds(number, said, value)
            return number
        if self.kind is str:
            if not isinstance(value, str):
                raise SettingError(f"{said} must be a string, got {shown_value(value)}", self.name, said)
            return value
        if self.kind is os.PathLike:
            if not isinstance(value, (str, os.PathLike)):
                raise SettingError(f"{said} must be a path, got {shown_value(value)}", self.name, said)
            return value
        if self.kind is tuple:
            if isinstance(value, str):
                return (value,)
            if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
                raise SettingError(f"{said} must be strings, got {shown_value(value)}", self.name, said)
            return tuple(value)
        return value

    @property
    def is_size(self) -> bool:
        """Whether the row is a size torch is given (a whole number from a lower bound up): at most
        `LARGEST_SIZE`."""
        return self.kind is int and self.low is not None and self.high is None

    def in_bounds(self, value: float) -> bool:
        """Whether a number is within `low` and `high` (NaN never is; infinity only without `finite`)."""
        if math.isnan(value) or (self.finite and math.isinf(value)):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def _check_bounds(self, value: float, said: str, given: Any = None) -> None:
        """A `SettingError` unless `value` is `in_bounds`, showing it as `given` (the caller's number)."""
        if not self.in_bounds(value):
            shown = shown_value(value if given is None else given)
            raise SettingError(f"{said} must be {self.rule or self.bounds_in_words()}, got {shown}", self.name, said)

    def bounds_in_words(self) -> str:
        """The bounds as the error says them when no `rule` is given: "from 1 to 64", "at least 0"."""
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"
        if self.low is not None:
            return f"above {_number(self.low)}" if self.low_open else f"at least {_number(self.low)}"
        if self.high is not None:
            return f"below {_number(self.high)}" if self.high_open else f"at most {_number(self.high)}"
        return "a finite number" if self.finite else "a number"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else str(value)


def shown_value(value: Any) -> str:
    """A value as an error line shows it: its repr (a float's str), cut at 40 characters."""
    text = repr(value) if not isinstance(value, float) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def table(*rows: Setting) -> dict[str, Setting]:
    """Rows by name; a name twice is a mistake in the table."""
    named: dict[str, Setting] = {}
    for row in rows:
        if row.name in named:
            raise ValueError(f"setting {row.name!r} is declared twice")
        named[row.name] = row
    return named


def for_command(rows: dict[str, Setting], command: str) -> list[Setting]:
    """The rows a command takes, in the table's order."""
    return [row for row in rows.values() if command in row.commands]


KEYWORD_TYPES = {int: "int", float: "float", str: "str", bool: "bool", os.PathLike: "PathLike",
                 tuple: "Sequence[str]"}


def annotation(row: Setting) -> str:
    """The type a signature shows for the row: "int | None" for a setting that may be unset."""
    shown = KEYWORD_TYPES.get(row.kind, row.kind.__name__)
    return f"{shown} | None" if row.default is None else shown


def said_by(row: Setting, door: str) -> str:
    """How a door names a setting, for `Setting.check`: "flag" as the CLI does (--top-p),
    "keyword" as the Python API does (top_p), "field" as a JSON body does (top_p)."""
    return {"flag": row.option, "keyword": row.argument, "field": row.name}[door]


def parameters(rows: Iterable[Setting], keyword_only: bool = False) -> list[Any]:
    """The rows as a signature's parameters (`inspect.Parameter`s), what help() and a notebook's
    completion show: each keyword with its default and `annotation`."""
    import inspect

    kind = inspect.Parameter.KEYWORD_ONLY if keyword_only else inspect.Parameter.POSITIONAL_OR_KEYWORD
    return [inspect.Parameter(row.argument, kind, default=row.default, annotation=annotation(row)) for row in rows]


# Who is calling: "keyword" (a program, the default), "flag" (the command line sets it for its
# command), "field" (the server, for a request's work). Errors worded with flags are shown in its terms.
DOOR: ContextVar[str] = ContextVar("charlm_door", default="keyword")


def in_callers_terms(message: str, rows: Iterable[Setting]) -> str:
    """`message` as the caller of now (`DOOR`) names settings: unchanged for the command line."""
    door = DOOR.get()
    return message if door == "flag" else in_terms(message, door, rows)


def in_terms(message: str, door: str, rows: Iterable[Setting]) -> str:
    """`message`, worded with command-line flags as charlm's errors are, with each flag of `rows`
    named as `door` names it: for a program ("keyword") `resume=True`, `unknown="skip"`, `lr`; for
    a JSON body ("field") `"resume": true`, `"unknown": "skip"`, `lr`. Other words stay as they are."""
    flags: dict[str, tuple[Setting, bool]] = {}
    for row in rows:
        flags[row.option] = (row, True)
        if row.switch:
            flags["--no-" + row.option[2:]] = (row, False)

    def named(match: re.Match) -> str:
        found = flags.get(match.group(1))
        if found is None:
            return match.group(0)
        row, on = found
        name = said_by(row, door)
        value = match.group(2)
        if row.kind is bool:
            shown = str(on) if door == "keyword" else str(on).lower()
            return (f"{name}={shown}" if door == "keyword" else f'"{name}": {shown}') + (f" {value}" if value else "")
        if value is not None and value in row.choice_list():
            return f'{name}="{value}"' if door == "keyword" else f'"{name}": "{value}"'
        return name + (f" {value}" if value else "")

    return re.sub(r"(--[a-z][a-z0-9-]*)(?: ([A-Za-z0-9_.]+))?", named, message)
