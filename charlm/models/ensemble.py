"""Ensemble: several language models of one architecture, trained side by side from their own
initial weights, predicting with the mean of their next-token distributions (`--ensemble N`).

    p(next) = (p_1(next) + ... + p_N(next)) / N        logits = logsumexp_k log_softmax(logits_k) - log N

Each member learns on its own: a training batch's loss is the mean of the members' own losses, so
that they do not co-adapt and each sees the whole text. An evaluation (the model in eval mode) is the
loss of the mixture. On a small text the members over-fit it in different ways, and their mean is
better than any of them: on The Time Machine two LSTMs of 4.07 and 4.08 make a mixture of 3.96.

The ensemble keeps the contract of `charlm.models.protocol`, so the trainer, the evaluator, the
generator, the server and the exporter handle it as any model: its state (`EnsembleState`) holds the
members' states, its `stepper` mixes the members' fast steppers. It is built from a member class and
its config (`Ensemble.of`); a checkpoint records the number of members in its model config
("ensemble"), which `charlm.checkpoints.loading` reads back. Its weights are the members', as
"members.<k>.<name>".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from charlm.models.protocol import ModelDefaults, StepFunction

ENSEMBLE = "ensemble"  # the key of a model config's record that holds the number of members (absent: 1)
SEPARATOR = "."  # a member's state tensor "k.name": member k's tensor `name`


def mixture(logits: Sequence[Tensor]) -> Tensor:
    """The log-probabilities (..., V) of the mean of the distributions that `logits` give, in fp32."""
    stacked = torch.stack([F.log_softmax(each.float(), dim=-1) for each in logits])
    return torch.logsumexp(stacked, dim=0) - math.log(len(logits))


class EnsembleState:
    """The members' states, in member order. A class of it per member state class (`of`), so that
    `from_tensors` and `join` know what they read."""

    member_class: ClassVar[Any] = None

    def __init__(self, members: Sequence[Any]) -> None:
        self.members = tuple(members)

    @staticmethod
    @cache
    def of(member_class: type) -> type[EnsembleState]:
        """The ensemble state class over states of `member_class`."""
        return type(f"EnsembleState[{member_class.__name__}]", (EnsembleState,), {"member_class": member_class})

    def __reduce__(self) -> tuple:  # pickled (torchrun gathers states) by its member class, not its own
        return _rebuilt, (self.member_class, self.members)

    @property
    def batch_size(self) -> int:
        return self.members[0].batch_size

    def map(self, function: Callable[[Tensor], Tensor]) -> EnsembleState:
        return type(self)([member.map(function) for member in self.members])

    def rows(self, index: slice | Tensor) -> EnsembleState:
        return type(self)([member.rows(index) for member in self.members])

    def tensors(self) -> dict[str, Tensor]:
        return {f"{k}{SEPARATOR}{name}": tensor for k, member in enumerate(self.members)
                for name, tensor in member.tensors().items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> EnsembleState:
        parts: dict[int, dict[str, Tensor]] = {}
        for name, tensor in tensors.items():
            k, _, own = name.partition(SEPARATOR)
            if not k.isdigit() or not own:
                raise ValueError(f"an ensemble's state holds tensors named <member>.<name>, not {name!r}")
            parts.setdefault(int(k), {})[own] = tensor
        if sorted(parts) != list(range(len(parts))):
            raise ValueError(f"an ensemble's state holds members 0 to {len(parts) - 1}, not {sorted(parts)}")
        return cls([cls.member_class.from_tensors(parts[k]) for k in range(len(parts))])

    @classmethod
    def join(cls, states: Sequence[EnsembleState]) -> EnsembleState:
        return cls([cls.member_class.join([state.members[k] for state in states])
                    for k in range(len(states[0].members))])


def _rebuilt(member_class: type, members: Sequence[Any]) -> EnsembleState:
    return EnsembleState.of(member_class)(members)


class Ensemble(ModelDefaults, nn.Module):
    """`count` members of one language-model class (see the module docstring)."""

    def __init__(self, members: Iterable[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.state_class = EnsembleState.of(self.members[0].state_class) \
            if self.members[0].state_class is not None else None

    @classmethod
    def of(cls, model_class: type, config: Any, count: int) -> nn.Module:
        """`count` members built from `config` one after the other (each its own initial weights);
        a lone model where `count` is 1."""
        return model_class(config) if count == 1 else cls(model_class(config) for _ in range(count))

    @property
    def config(self) -> Any:  # the members' config: what every reader of a model's config wants
        return self.members[0].config

    @property
    def fast_path(self) -> bool | None:
        return self.members[0].fast_path

    @fast_path.setter
    def fast_path(self, value: bool | None) -> None:
        for member in self.members:
            member.fast_path = value

    def set_dropout(self, p: float) -> None:
        for member in self.members:
            member.set_dropout(p)

    def member_states(self, state: EnsembleState | None) -> Sequence[Any]:
        """Each member's state in `state` (None for each where it is None: zeros)."""
        return (None,) * len(self.members) if state is None else state.members

    def _state(self, states: Sequence[Any]) -> EnsembleState | None:
        """The members' states as one; None where they carry none (a transformer's random windows)."""
        return None if self.state_class is None or all(state is None for state in states) else self.state_class(states)

    def _mixed(self, outputs: Sequence[tuple[Tensor, Any]]) -> tuple[Tensor, EnsembleState | None]:
        """The members' (logits, state after) as the ensemble's: the mixture, and their states as one."""
        return mixture([logits for logits, _ in outputs]), self._state([after for _, after in outputs])

    def forward(self, ids: Tensor, state: EnsembleState | None = None) -> tuple[Tensor, EnsembleState | None]:
        """ids (B, T) -> the mixture's log-probabilities (B, T, V)."""
        return self._mixed([member(ids, own) for member, own in zip(self.members, self.member_states(state))])

    def batch_loss(self, batch: tuple[Tensor, ...], state: EnsembleState | None = None) -> tuple[Tensor, int, Any]:
        """Training: the mean of the members' own summed losses. Evaluating: the mixture's."""
        if not self.training:
            inputs, targets = batch
            logits, state = self(inputs, state)
            return F.nll_loss(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"), \
                targets.numel(), state
        losses, count, states = [], 0, []
        for member, own in zip(self.members, self.member_states(state)):
            loss, count, after = member.batch_loss(batch, own)
            losses.append(loss)
            states.append(after)
        return torch.stack(losses).mean(), count, self._state(states)

    def step(self, ids: Tensor, state: EnsembleState | None) -> tuple[Tensor, EnsembleState | None]:
        return self._mixed([member.step(ids, own) for member, own in zip(self.members, self.member_states(state))])

    def init_state(self, batch_size: int) -> EnsembleState | None:
        return self._state([member.init_state(batch_size) for member in self.members])

    def stepper(self, banned: Sequence[int] = (), precision: str = "fp32") -> StepFunction:
        """The members' own steppers, mixed: a banned id is -inf in every member, so in the mixture."""
        steps = [member.stepper(banned, precision) for member in self.members]

        def step(ids: Tensor, state: EnsembleState | None) -> tuple[Tensor, EnsembleState | None]:
            return self._mixed([each(ids, own) for each, own in zip(steps, self.member_states(state))])

        return step

    def stepper_precisions(self) -> tuple[str, ...]:
        return self.members[0].stepper_precisions()

    def parameter_groups(self, weight_decay: float) -> list[Any]:
        return [group for member in self.members for group in member.parameter_groups(weight_decay)]

    def hidden_matrices(self) -> list[nn.Parameter]:
        return [matrix for member in self.members for matrix in member.hidden_matrices()]

    def fast_path_choices(self) -> tuple[bool, ...]:
        return self.members[0].fast_path_choices()

    def describe(self) -> str:
        """"2 x lstm 2x512": the members' count and line (empty where they are named by their architecture)."""
        line = self.members[0].describe()
        return f"{len(self.members)} x {line}" if line else ""
