"""The generation request: one frozen, hashable object from the door (`charlm generate`'s flags,
`TextModel.generate`'s keywords, the fields of a JSON body) down to the sampler.

Each field is a row of `charlm.settings.GENERATE`: its default and bounds are the row's, checked
once, when the request is made, and a value out of bounds is refused with one line that names it
as its door does (`said`: "flag", "keyword", "field"). `Sampling`, how each token is drawn, is
its own frozen part, so that the server's batcher can draw together exactly the requests that
sample alike (a new sampling field can never be shared by mistake). A sampling option is a row,
a field of `Sampling` and a step of `charlm.generation.sampling.filter_logits` (a penalty: of
`charlm.generation.sampling.History`, which keeps each row's own tokens so far).

Standard library only: it knows nothing about models or tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import InitVar, dataclass, fields
from typing import Any

from charlm.settings import GENERATE, SettingError, said_by
from charlm.settings.generation import MAX_STOP_CHARS, MAX_STOPS


def _check(instance: Any, said: str) -> None:
    """Each field of `instance` that is a setting checked by its row, named as `said` does; a whole
    number given for a float is kept as a float."""
    for field in fields(instance):
        if field.name in GENERATE:
            row = GENERATE[field.name]
            object.__setattr__(instance, field.name, row.check(getattr(instance, field.name), said_by(row, said)))


@dataclass(frozen=True)
class Sampling:
    """How each next token is drawn: penalties on the tokens so far, a division of the logits,
    top-k, top-p, min-p, or the likeliest (greedy; a temperature of 0 is made greedy).
    Frozen and hashable: the batcher draws the requests of equal `Sampling`s at once. Each field
    is a row of `charlm.settings.GENERATE` (its default, bounds and help), checked by the row when
    it is made; `said` names a refused value as its door does ("keyword", "flag", "field")."""

    temperature: float = GENERATE["temperature"].default
    top_k: int = GENERATE["top_k"].default  # 0: no limit
    top_p: float = GENERATE["top_p"].default  # 1: no limit
    greedy: bool = GENERATE["greedy"].default
    min_p: float = GENERATE["min_p"].default  # 0: off
    repetition_penalty: float = GENERATE["repetition_penalty"].default  # 1: off
    presence_penalty: float = GENERATE["presence_penalty"].default  # 0: off
    frequency_penalty: float = GENERATE["frequency_penalty"].default  # 0: off
    said: InitVar[str] = "keyword"

    def __post_init__(self, said: str) -> None:
        _check(self, said)
        if self.temperature == 0:  # greedy, as every generator reads it: equal to Sampling(greedy=True)
            object.__setattr__(self, "temperature", GENERATE["temperature"].default)
            object.__setattr__(self, "greedy", True)

    @property
    def penalized(self) -> bool:
        """Whether a draw depends on the tokens so far (a penalty is on)."""
        return self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0

    @property
    def filtered(self) -> bool:
        """Whether the logits are changed before a draw (but for the penalties)."""
        return self.temperature != 1 or self.top_k != 0 or self.top_p < 1 or self.min_p > 0


@dataclass(frozen=True)
class Request:
    """One generation as asked, from its door (`charlm generate`'s flags, `TextModel.generate`'s
    keywords, the fields of a JSON body) down to the sampler: the prefix text, how many tokens and
    samples, the `Sampling`, the seed (None: a fresh one), what to do with unknown characters, the
    steps' precision (the server steps in its own), the texts a sample stops before (at most
    `MAX_STOPS`, none empty) and how many likeliest tokens' log-probabilities to give with each new
    one (None: none). Frozen, hashable and equal by value; each
    field is a row of `charlm.settings.GENERATE`, checked once, when it is made, and a value out
    of bounds refused with one line that names it as `said` does ("keyword", "flag", "field")."""

    prefix: str = GENERATE["prefix"].default
    length: int = GENERATE["length"].default
    sampling: Sampling = Sampling()
    seed: int | None = GENERATE["seed"].default
    num_samples: int = GENERATE["num_samples"].default
    unknown: str = GENERATE["unknown"].default
    precision: str = GENERATE["precision"].default
    stop: tuple[str, ...] = GENERATE["stop"].default
    logprobs: int | None = GENERATE["logprobs"].default
    said: InitVar[str] = "keyword"

    def __post_init__(self, said: str) -> None:
        _check(self, said)
        name = said_by(GENERATE["stop"], said)
        if len(self.stop) > MAX_STOPS:
            raise SettingError(f"{name} takes at most {MAX_STOPS} texts, got {len(self.stop)}", "stop", name)
        if any(not text or len(text) > MAX_STOP_CHARS for text in self.stop):
            raise SettingError(f"{name} texts must be 1 to {MAX_STOP_CHARS} characters long", "stop", name)

    @classmethod
    def from_fields(cls, values: Mapping[str, Any], said: str = "keyword") -> Request:
        """The request of `values`, settings by name (a door's flags, keywords or fields; those
        left out take their defaults): `Sampling`'s go into `sampling`."""
        in_sampling = {field.name for field in fields(Sampling)}
        sampling = Sampling(**{name: value for name, value in values.items() if name in in_sampling}, said=said)
        return cls(**{name: value for name, value in values.items() if name not in in_sampling}, sampling=sampling,
                   said=said)
