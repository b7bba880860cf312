"""The model contract: what every model charlm trains, generates with or translates with must do,
as `typing.Protocol`s, and `ModelDefaults`, the optional hooks' defaults every charlm model inherits.

    class MyModel(ModelDefaults, nn.Module): ...          # then one `registry.register(...)` line
    assert isinstance(MyModel(config), LanguageModelContract)

The trainer, the generator, the optimizer's recipe and `charlm.runtime.measured` call the hooks; they never
ask whether a model has one. A model overrides a hook only where it does better than the default:
the recurrent models and the transformer offer a fast `stepper`, the transformer its own
`parameter_groups`, the recurrent models a choice of `fast_path`.

What the contract is not for: data, checkpoints (the config is a dataclass, rebuilt from the
metadata by `charlm.checkpoints.loading`), sampling strategies, devices or precision policy. A model does
arithmetic on tensors and says what it is; what runs it is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from charlm.models.recurrent_stepper import ban_vector

# `logits, state = step(ids, state)`: ids (B,) -> logits (B, V) of the next token.
StepFunction = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]


@runtime_checkable
class Model(Protocol):
    """What every model does, of any task. `Model(config)` builds it from its config dataclass
    (with the vocab sizes in it) and keeps it as `.config`; `batch_loss` is the trainer's one call;
    `state_class` is the class of the state it carries between batches (a `charlm.models.state` protocol
    object), or None where it carries none. The hooks below have defaults in `ModelDefaults`."""

    config: Any
    state_class: ClassVar[type | None]
    fast_path: bool | None  # set by the trainer to the recurrent path `charlm.runtime.measured` chose, if offered

    def batch_loss(self, batch: tuple[torch.Tensor, ...], state: Any = None) -> tuple[torch.Tensor, Any, Any]:
        """(summed loss, number of predicted tokens, state to carry) of one batch."""

    def num_parameters(self) -> int: ...

    def parameter_groups(self, weight_decay: float) -> Iterable[Any]:
        """What the optimizer is built over: parameters, or groups with their own weight decay."""

    def hidden_matrices(self) -> list[Any]:
        """The 2-D weights inside the model that --optimizer muon orthogonalises the updates of (not
        the embeddings or the head, which read or write tokens)."""

    def describe(self) -> str:
        """One line for the user ("lstm 2x512"), or "" to be named by its architecture."""

    def fast_path_choices(self) -> tuple[bool, ...]:
        """The ways of running its layers in training that `charlm.runtime.measured` may measure and set as `fast_path`."""


@runtime_checkable
class LanguageModelContract(Model, Protocol):
    """A language model: ids (B, T) -> logits (B, T, V), the state carried along the text."""

    def forward(self, ids: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]: ...

    def step(self, ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One step of generation: ids (B,) -> logits (B, V)."""

    def init_state(self, batch_size: int) -> Any:
        """The state of `batch_size` rows before any token."""

    def stepper(self, banned: Sequence[int] = (), precision: str = "fp32") -> StepFunction:
        """`step` for generation with `banned` ids at -inf, its products in `precision`."""

    def stepper_precisions(self) -> tuple[str, ...]:
        """The precisions `stepper` runs in, of "fp32" and "bf16"."""


@runtime_checkable
class PairModelContract(Model, Protocol):
    """A model of source -> target strings: the translator encodes once, then decodes step by step."""

    def encode(self, source: torch.Tensor) -> Any: ...

    def decode_step(self, previous: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """previous ids (B,) -> logits of the next character (B, V), and the state after it."""


class ModelDefaults:
    """The optional hooks of the contract as a model without its own does them: no carried state,
    no choice of path, every parameter in one group, named by its architecture, and generation
    through `step` in fp32. Inherit it first: `class MyModel(ModelDefaults, nn.Module)`."""

    state_class: ClassVar[type | None] = None
    fast_path: bool | None = None

    def parameter_groups(self: Any, weight_decay: float) -> Iterable[Any]:
        return self.parameters()  # decayed by the optimizer's own weight decay

    def hidden_matrices(self: Any) -> list[Any]:
        return [parameter for name, parameter in self.named_parameters()  # by name: embeddings and heads read
                if parameter.dim() == 2 and min(parameter.shape) > 1  # and write tokens; a row is a vector
                and not any(part in name for part in ("embedding", "head"))]

    def describe(self) -> str:
        return ""

    def fast_path_choices(self) -> tuple[bool, ...]:
        return ()

    def num_parameters(self: Any) -> int:
        return sum(parameter.numel() for parameter in self.parameters())

    def stepper(self: Any, banned: Sequence[int] = (), precision: str = "fp32") -> StepFunction:
        """`model.step` with `banned` ids at -inf, in fp32 whatever `precision` says."""
        ban = None

        def step(ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
            nonlocal ban
            logits, state = self.step(ids, state)
            if ban is None:
                ban = ban_vector(logits.shape[-1], banned, logits.device)
            return logits + ban, state

        return step

    def stepper_precisions(self) -> tuple[str, ...]:
        return ("fp32",)

