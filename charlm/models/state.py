"""State: what a model carries from one batch, or one generated token, to the next.

The trainer, the evaluator, the generator and the resume file handle a model's state without knowing
what is inside it. A state is None (nothing carried: zeros, or a model without one) or an object
with this protocol:

    state.map(function)            every tensor through `function` (detach, .cpu(), .float())
    state.rows(index)              the state of batch rows `index` (a slice, or row ids in order)
    state.batch_size               its number of rows
    state.tensors()                {name: tensor} to save; `type(state).from_tensors(...)` reads it back
    type(state).join(states)       the rows of several states, in order (processes of a torchrun)

A model says which class its states are (`model.state_class`) and makes zeros with
`model.init_state(batch_size)`, so a resume file can be read back and checked against it.

`RecurrentState` is the recurrent cells' state: h (L, B, H), and c for the LSTM. torch's modules
and the kernels take it in torch's own form (`TorchState`: h, or the tuple (h, c)); `torch_form`
and `RecurrentState.of` convert at that boundary, and nowhere else.

This module knows nothing about models, data or files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

TorchState = Tensor | tuple[Tensor, Tensor]  # h (L, B, H), or (h, c) for an LSTM: torch's own form
S = TypeVar("S", bound="State")


class State(Protocol):
    """What every carried state offers (see the module docstring)."""

    @property
    def batch_size(self) -> int: ...

    def map(self: S, function: Callable[[Tensor], Tensor]) -> S: ...

    def rows(self: S, index: slice | Tensor) -> S: ...

    def tensors(self) -> dict[str, Tensor]: ...

    @classmethod
    def from_tensors(cls: type[S], tensors: dict[str, Tensor]) -> S: ...

    @classmethod
    def join(cls: type[S], states: Sequence[S]) -> S: ...


@dataclass(frozen=True)
class RecurrentState:
    """h (L, B, H), and for an LSTM the cell state c (L, B, H). Saved as {"0": h, "1": c}."""

    h: Tensor
    c: Tensor | None = None

    @classmethod
    def zeros(cls, num_layers: int, batch_size: int, hidden_size: int, cell_state: bool,
              like: Tensor) -> RecurrentState:
        """Zeros in the dtype and on the device of `like`: the one place a zero state is made."""
        h = like.new_zeros(num_layers, batch_size, hidden_size)
        return cls(h, torch.zeros_like(h) if cell_state else None)

    @classmethod
    def of(cls, state: TorchState | RecurrentState | None) -> RecurrentState | None:
        """torch's form (h, or (h, c)) as a `RecurrentState`."""
        if state is None or isinstance(state, RecurrentState):
            return state
        return cls(*state) if isinstance(state, tuple) else cls(state)

    def torch_form(self) -> TorchState:
        """h, or (h, c): what torch's recurrent modules take and return."""
        return self.h if self.c is None else (self.h, self.c)

    @property
    def batch_size(self) -> int:
        return self.h.shape[1]

    @property
    def top(self) -> Tensor:
        """The top layer's hidden state (B, H)."""
        return self.h[-1]

    def map(self, function: Callable[[Tensor], Tensor]) -> RecurrentState:
        return RecurrentState(function(self.h), None if self.c is None else function(self.c))

    def rows(self, index: slice | Tensor) -> RecurrentState:
        return self.map(lambda tensor: tensor[:, index])

    def tensors(self) -> dict[str, Tensor]:
        return {"0": self.h} if self.c is None else {"0": self.h, "1": self.c}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> RecurrentState:
        if set(tensors) not in ({"0"}, {"0", "1"}):
            raise ValueError(f"a recurrent state holds tensors 0 (and 1), not {sorted(tensors)}")
        return cls(tensors["0"], tensors.get("1"))

    @classmethod
    def join(cls, states: Sequence[RecurrentState]) -> RecurrentState:
        c = None if states[0].c is None else torch.cat([state.c for state in states], dim=1)
        return cls(torch.cat([state.h for state in states], dim=1), c)


def map_state(function: Callable[[Tensor], Tensor], state: Any) -> Any:
    """`state.map(function)`, and None for None."""
    return None if state is None else state.map(function)
