"""The generation request: one frozen, hashable object from the door (`charlm generate`'s flags,
`TextModel.generate`'s keywords, the fields of a JSON body) down to the sampler.

Each field is a row of `charlm.settings.GENERATE`: its default and bounds are the row's, checked
once, when the request is made, and a value out of bounds is refused with one line that names it
as its door does (`said`: "flag", "keyword", "field"). `Sampling`, how each token is drawn, is
its own frozen part, so that the server's batcher can draw together exactly the requests that
sample alike (a new sampling field can never be shared by mistake). A sampling option is a row,
a field of `Sampling` and a step of `charlm.generation.sampling.filter_logits`.

Standard library only: it knows nothing about models or tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import InitVar, dataclass, fields
from typing import Any

from charlm.settings import GENERATE, said_by


def _check(instance: Any, said: str) -> None:
    """Each field of `instance` that is a setting checked by its row, named as `said` does; a whole
    number given for a float is kept as a float."""
    for field in fields(instance):
        if field.name in GENERATE:
            row = GENERATE[field.name]
            object.__setattr__(instance, field.name, row.check(getattr(instance, field.name), said_by(row, said)))


@dataclass(frozen=True)
class Sampling:
    """How each next token is drawn: a division of the logits, top-k, top-p, or the likeliest
    (greedy; a temperature of 0 is made greedy).
    Frozen and hashable: the batcher draws the requests of equal `Sampling`s at once. Each field
    is a row of `charlm.settings.GENERATE` (its default, bounds and help), checked by the row when
    it is made; `said` names a refused value as its door does ("keyword", "flag", "field")."""

    temperature: float = GENERATE["temperature"].default
    top_k: int = GENERATE["top_k"].default  # 0: no limit
    top_p: float = GENERATE["top_p"].default  # 1: no limit
    greedy: bool = GENERATE["greedy"].default
    said: InitVar[str] = "keyword"

    def __post_init__(self, said: str) -> None:
        _check(self, said)
        if self.temperature == 0:  # greedy, as every generator reads it: equal to Sampling(greedy=True)
            object.__setattr__(self, "temperature", GENERATE["temperature"].default)
            object.__setattr__(self, "greedy", True)


@dataclass(frozen=True)
class Request:
    """One generation as asked, from its door (`charlm generate`'s flags, `TextModel.generate`'s
    keywords, the fields of a JSON body) down to the sampler: the prefix text, how many tokens and
    samples, the `Sampling`, the seed (None: a fresh one), what to do with unknown characters and
    the steps' precision (the server steps in its own). Frozen, hashable and equal by value; each
    field is a row of `charlm.settings.GENERATE`, checked once, when it is made, and a value out
    of bounds refused with one line that names it as `said` does ("keyword", "flag", "field")."""

    prefix: str = GENERATE["prefix"].default
    length: int = GENERATE["length"].default
    sampling: Sampling = Sampling()
    seed: int | None = GENERATE["seed"].default
    num_samples: int = GENERATE["num_samples"].default
    unknown: str = GENERATE["unknown"].default
    precision: str = GENERATE["precision"].default
    said: InitVar[str] = "keyword"

    def __post_init__(self, said: str) -> None:
        _check(self, said)

    @classmethod
    def from_fields(cls, values: Mapping[str, Any], said: str = "keyword") -> Request:
        """The request of `values`, settings by name (a door's flags, keywords or fields; those
        left out take their defaults): `Sampling`'s go into `sampling`."""
        in_sampling = {field.name for field in fields(Sampling)}
        sampling = Sampling(**{name: value for name, value in values.items() if name in in_sampling}, said=said)
        return cls(**{name: value for name, value in values.items() if name not in in_sampling}, sampling=sampling,
                   said=said)
