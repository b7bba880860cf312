"""What a request may ask: each field of a JSON body read once, with its type and its bounds
(`Limits`), a field nobody asked for refused by name, and how many requests may be at work at once
(`Slots`). A refusal is a `RequestError`: a status and one line for the client.

It reads a setting's field by its row (`charlm.settings`); it knows nothing about HTTP beyond status
codes, nor about models.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from typing import Any

from charlm.settings import Setting


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, how many may run at once, and how long a client may take to
    send its body or to take its stream (the README lists them)."""

    body_bytes: int = 64 * 1024     # a request body; refused unread past this
    prefix_chars: int = 4000        # /v1/generate's prefix
    length: int = 2000              # tokens per sample
    num_samples: int = 32           # samples per request
    inputs: int = 64                # /v1/translate's inputs per request
    input_chars: int = 1000         # each input (and /v1/attention's one)
    beam: int = 16                  # beam width
    max_length: int = 2000          # characters per translation
    in_flight: int = 64             # generations and translations running at once; then 429
    prompts: int = 16               # /v1/completions' prompts per request (times n: at most num_samples)
    messages: int = 256             # /v1/chat/completions' messages per request
    inside_chars: int = 20_000      # /v1/inside's text
    top_k: int = 20                 # /v1/inside's expectations per token
    read_seconds: float = 10.0      # a body that takes longer to arrive; then 408
    write_seconds: float = 10.0     # a stream whose client takes none of it for this long is ended

    def bounds(self, name: str) -> tuple[int | None, int | None]:
        """The server's own (low, high) on a field of a generation or translation, beside its row's
        (None: the row's)."""
        return {"prefix": (None, self.prefix_chars), "length": (None, self.length),
                "num_samples": (None, self.num_samples), "seed": SEED_RANGE, "beam": (None, self.beam),
                "max_length": (None, self.max_length)}.get(name, (None, None))


SEED_RANGE = (-(2**63), 2**64 - 1)  # the seeds torch takes
WHOLE_RANGE = (-(10**20) + 1, 10**20 - 1)  # any whole number a field takes: a longer one is no count, nor a float


def finite(value: float) -> bool:
    """Whether a JSON number is finite as a float (a whole number too long for one is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
MAX_STOPS = 4  # stop texts a request may give: OpenAI's bound


class RequestError(Exception):
    """A request the API refuses: a status and one line for the client; `param` the field it is
    about, `code` a word for a program (OpenAI's error object has both)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Fields:
    """A request body's fields, each read once with its type and bounds; a field the endpoint does
    not know is refused by name."""

    def __init__(self, data: dict[str, Any], known: tuple[str, ...]) -> None:
        unknown = [name for name in data if name not in known]
        if unknown:
            raise RequestError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                               f"this endpoint takes {', '.join(known)}", param=unknown[0])
        self.data = data

    def _given(self, name: str, default: Any) -> tuple[bool, Any]:
        value = self.data.get(name)
        return value is not None, (value if value is not None else default)

    def text(self, name: str, default: str | None, max_chars: int | None) -> str | None:
        given, value = self._given(name, default)
        if given and not isinstance(value, str):
            raise RequestError(f"{name} must be a string, got {shown(value)}", param=name)
        if given and max_chars is not None and len(value) > max_chars:
            raise RequestError(f"{name} is {len(value):,} characters long; at most {max_chars:,}", param=name)
        return value

    def integer(self, name: str, default: int | None, low: int | None, high: int | None) -> int | None:
        given, value = self._given(name, default)
        if given and (type(value) is not int or not WHOLE_RANGE[0] <= value <= WHOLE_RANGE[1]):
            raise RequestError(f"{name} must be a whole number of at most 20 digits, got {shown(value)}"
                               if type(value) is int else f"{name} must be a whole number, got {shown(value)}",
                               param=name)
        if given and low is not None and not (low <= value and (high is None or value <= high)):
            raise RequestError(f"{name} must be from {low:,}" + (f" to {high:,}" if high is not None else " up")
                               + f", got {shown(value)}", param=name)
        if given and low is None and high is not None and value > high:
            raise RequestError(f"{name} must be at most {high:,}, got {shown(value)}", param=name)
        return value

    def number(self, name: str, default: float | None, low: float | None, high: float | None = None,
               low_open: bool = False, high_open: bool = False) -> float | None:
        given, value = self._given(name, default)
        if given and (type(value) not in (int, float) or not finite(value)):
            raise RequestError(f"{name} must be a number, got {shown(value)}", param=name)
        if not given:
            return value
        above = low is None or (value > low if low_open else value >= low)
        below = high is None or (value < high if high_open else value <= high)
        if not (above and below):
            bounds = [] if low is None else [f"above {low}" if low_open else f"at least {low}"]
            bounds += [] if high is None else [f"below {high}" if high_open else f"at most {high}"]
            raise RequestError(f"{name} must be {' and '.join(bounds)}, got {shown(value)}", param=name)
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        given, value = self._given(name, default)
        if given and not isinstance(value, bool):
            raise RequestError(f"{name} must be true or false, got {shown(value)}", param=name)
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        given, value = self._given(name, default)
        if given and value not in choices:
            raise RequestError(f"{name} must be one of {', '.join(choices)}, got {shown(value)}", param=name)
        return value

    def setting(self, row: Setting, low: int | None = None, high: int | None = None) -> Any:
        """The field of a setting (`charlm.settings`): its type, default and bounds the row's, and
        the server's own where `low` or `high` is given (a number's bounds, a text's length)."""
        if row.choices is not None:
            return self.choice(row.name, row.default, row.choice_list())
        if row.kind is bool:
            return self.boolean(row.name, row.default)
        if row.kind is tuple:
            return self.stops(row.name)
        if row.kind is str:
            return self.text(row.name, row.default, high)
        low = row.low if low is None else low if row.low is None else max(low, row.low)
        high = row.high if high is None else high if row.high is None else min(high, row.high)
        if row.kind is int:
            return self.integer(row.name, row.default, low, high)
        return self.number(row.name, row.default, low, high, row.low_open, row.high_open)

    def stops(self, name: str) -> tuple[str, ...]:
        """Stop texts: a string, or a list of at most `MAX_STOPS` strings (their lengths are the
        request's to check)."""
        value = self.data.get(name)
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise RequestError(f"{name} must be a string or a list of strings, got {shown(value)}", param=name)
        if len(value) > MAX_STOPS:
            raise RequestError(f"{name} takes at most {MAX_STOPS} strings, got {len(value)}", param=name)
        return tuple(value)

    def texts(self, name: str, max_count: int, max_chars: int, required: bool = True) -> list[str]:
        """A list of strings; one left out is [] where it is not `required`."""
        if not required and name not in self.data:
            return []
        value = self.data.get(name)
        if not isinstance(value, list) or (required and not value) or not all(isinstance(item, str) for item in value):
            raise RequestError(f"{name} must be a list of one or more strings, got {shown(value)}", param=name)
        if len(value) > max_count:
            raise RequestError(f"{name} holds {len(value):,} strings; at most {max_count:,}", param=name)
        if longest := max((len(item) for item in value if len(item) > max_chars), default=0):
            raise RequestError(f"a string of {name} is {longest:,} characters long; at most {max_chars:,}", param=name)
        return value


class Slots:
    """At most `count` requests at work at once, across threads and event loops."""

    def __init__(self, count: int) -> None:
        self.count, self.used, self._lock = count, 0, threading.Lock()

    def take(self) -> None:
        with self._lock:
            if self.used >= self.count:
                raise RequestError(f"the server is busy ({self.count} requests at work); try again shortly", 429)
            self.used += 1

    def give_back(self) -> None:
        with self._lock:
            self.used -= 1
