"""What a request may ask: each field of a JSON body read once, with its type and its bounds
(`Limits`), a field nobody asked for refused by name, and how many requests may be at work at once
(`Slots`). A refusal is a `RequestError`: a status and one line for the client.

Standard library only: it knows nothing about HTTP beyond status codes, nor about models.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how many may run at once (the README lists them)."""

    body_bytes: int = 64 * 1024     # a request body; refused unread past this
    prefix_chars: int = 4000        # /v1/generate's prefix
    length: int = 2000              # tokens per sample
    num_samples: int = 32           # samples per request
    inputs: int = 64                # /v1/translate's inputs per request
    input_chars: int = 1000         # each input (and /v1/attention's one)
    beam: int = 16                  # beam width
    max_length: int = 2000          # characters per translation
    in_flight: int = 64             # generations and translations running at once; then 429


class RequestError(Exception):
    """A request the API refuses: a status and one line for the client."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


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
                               f"this endpoint takes {', '.join(known)}")
        self.data = data

    def _given(self, name: str, default: Any) -> tuple[bool, Any]:
        value = self.data.get(name)
        return value is not None, (value if value is not None else default)

    def text(self, name: str, default: str | None, max_chars: int) -> str | None:
        given, value = self._given(name, default)
        if given and not isinstance(value, str):
            raise RequestError(f"{name} must be a string, got {shown(value)}")
        if given and len(value) > max_chars:
            raise RequestError(f"{name} is {len(value):,} characters long; at most {max_chars:,}")
        return value

    def integer(self, name: str, default: int | None, low: int, high: int | None) -> int | None:
        given, value = self._given(name, default)
        if given and type(value) is not int:
            raise RequestError(f"{name} must be a whole number, got {shown(value)}")
        if given and not (low <= value and (high is None or value <= high)):
            raise RequestError(f"{name} must be from {low:,}" + (f" to {high:,}" if high is not None else " up")
                               + f", got {shown(value)}")
        return value

    def number(self, name: str, default: float, low: float, high: float | None = None, low_open: bool = False,
               ) -> float:
        given, value = self._given(name, default)
        if given and (type(value) not in (int, float) or not math.isfinite(value)):
            raise RequestError(f"{name} must be a number, got {shown(value)}")
        if given and not ((value > low if low_open else value >= low) and (high is None or value <= high)):
            bounds = f"above {low}" if low_open else f"at least {low}"
            raise RequestError(f"{name} must be {bounds}" + (f" and at most {high}" if high is not None else "")
                               + f", got {shown(value)}")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        given, value = self._given(name, default)
        if given and not isinstance(value, bool):
            raise RequestError(f"{name} must be true or false, got {shown(value)}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        given, value = self._given(name, default)
        if given and value not in choices:
            raise RequestError(f"{name} must be one of {', '.join(choices)}, got {shown(value)}")
        return value

    def texts(self, name: str, max_count: int, max_chars: int) -> list[str]:
        value = self.data.get(name)
        if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
            raise RequestError(f"{name} must be a list of one or more strings, got {shown(value)}")
        if len(value) > max_count:
            raise RequestError(f"{name} holds {len(value):,} strings; at most {max_count:,}")
        if longest := max((len(item) for item in value if len(item) > max_chars), default=0):
            raise RequestError(f"a string of {name} is {longest:,} characters long; at most {max_chars:,}")
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
