"""Model: the character (or word) language model, one contract for every recurrent cell.

    logits, state = model(ids, state)      # ids (B, T) int64 -> logits (B, T, V)

The cell is chosen by name: "rnn" (tanh), "gru" or "lstm", either torch's fused module or its
from-scratch twin in `charlm.models.cells` (`from_scratch=True`). Input is an embedding, or one-hot
vectors when `embedding_size == 0` (the lessons' form). Its state is a `charlm.models.state.RecurrentState`
(h, and c for the LSTM), converted to torch's own form only where a recurrent module is called.

This module knows nothing about data, training, checkpoints or sampling strategies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.nn import functional as F

from charlm.models import cells, kernels, recurrent_layers
from charlm.models.protocol import ModelDefaults
from charlm.models.state import RecurrentState
from charlm.presets import CELLS, LM, RECORDED_WHEN_SET


@dataclass
class ModelConfig:
    vocab_size: int
    cell: str = LM["cell"]
    embedding_size: int = LM["embedding_size"]  # 0: one-hot input
    hidden_size: int = LM["hidden_size"]
    num_layers: int = LM["num_layers"]
    dropout: float = LM["dropout"]
    from_scratch: bool = LM["from_scratch"]
    # The regularisers (AWD-LSTM's). Recorded in a checkpoint only when set (`presets.record`),
    # so a run without them writes the bytes it always did and resumes runs started before them.
    weight_drop: float = field(default=LM["weight_drop"], metadata=RECORDED_WHEN_SET)  # DropConnect on W_hh
    locked_dropout: bool = field(default=LM["locked_dropout"], metadata=RECORDED_WHEN_SET)  # one mask per sequence
    embedding_dropout: float = field(default=LM["embedding_dropout"], metadata=RECORDED_WHEN_SET)  # whole tokens

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}")
        for name in ("vocab_size", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.embedding_size < 0:
            raise ValueError(f"embedding_size must be 0 (one-hot) or more, got {self.embedding_size}")
        for name in ("dropout", "weight_drop", "embedding_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.embedding_dropout and self.embedding_size == 0:
            raise ValueError("embedding_dropout needs an embedding: one-hot input (embedding_size 0) has none")



def recurrent_module(config: ModelConfig, input_size: int) -> nn.Module:
    """torch's nn.RNN / nn.GRU / nn.LSTM, or the from-scratch twin, with the same parameters."""
    dropout = config.dropout if config.num_layers > 1 else 0.0
    if config.from_scratch:
        scratch = {"rnn": cells.ScratchRNN, "gru": cells.ScratchGRU, "lstm": cells.ScratchLSTM}
        return scratch[config.cell](input_size, config.hidden_size, config.num_layers, dropout,
                                    locked=config.locked_dropout)
    torch_class = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[config.cell]
    return torch_class(input_size, config.hidden_size, config.num_layers, dropout=dropout, batch_first=True)


class LanguageModel(ModelDefaults, nn.Module):
    """ids (B, T) -> embedding or one-hot (B, T, E) -> recurrent layers (B, T, H) -> logits (B, T, V)."""

    state_class = RecurrentState
    # Training on a CPU: charlm's kernels (True) or torch's own module (False) run the recurrent
    # layers; None leaves it to the kernels' rule. `charlm.runtime.measured` measures both and sets it.
    fast_path: bool | None = None

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        if config.embedding_size > 0:
            self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
            input_size = config.embedding_size
        else:
            self.embedding = None
            input_size = config.vocab_size
        self.rnn = recurrent_module(config, input_size)
        self.dropout = kernels.Dropout(config.dropout, locked_dim=1 if config.locked_dropout else None)  # (B, T, .)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def set_dropout(self, p: float) -> None:
        """Change --dropout as the model trains (the recipe's, once a --max-time run's plan says its
        passes): on the embedding and the outputs, and between the layers."""
        self.config = replace(self.config, dropout=p)
        self.dropout.p = p
        if self.config.num_layers > 1:
            self.rnn.dropout = p

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self.embedding is None:
            return recurrent_layers.one_hot(ids, self.config.vocab_size, self.head.weight.dtype)  # (B, T, V)
        table = self.embedding.weight  # (V, E)
        if self.training and self.config.embedding_dropout > 0:  # a dropped token is zeros wherever it occurs
            table = kernels.dropout(table, self.config.embedding_dropout, locked_dim=1)
        return self.dropout(F.embedding(ids, table))  # (B, T, E)

    def forward(
        self, ids: torch.Tensor, state: RecurrentState | None = None
    ) -> tuple[torch.Tensor, RecurrentState]:
        outputs, state = self.recurrent(ids, state)  # (B, T, H)
        return self.head(self.dropout(outputs)), state  # (B, T, V)

    def recurrent(self, ids: torch.Tensor, state: RecurrentState | None) -> tuple[torch.Tensor, RecurrentState]:
        """ids (B, T) -> outputs of the top recurrent layer (B, T, H), and the state after them."""
        config = self.config
        initial = None if state is None else RecurrentState.of(state).torch_form()
        weights = None
        if self.training and config.weight_drop > 0:  # DropConnect: one mask on each W_hh for the batch
            weights = {name: kernels.dropout(parameter, config.weight_drop)
                       for name, parameter in self.rnn.named_parameters() if name.startswith("weight_hh")}
        if config.from_scratch:
            inputs = self.embed(ids)
            outputs, final = self.rnn(inputs, initial) if weights is None else \
                torch.func.functional_call(self.rnn, weights, (inputs, initial))
        else:  # one-hot input goes in as the ids themselves: the kernels gather instead of multiplying
            inputs = ids if self.embedding is None else self.embed(ids)
            fast = None
            if self.fast_path is not None and torch.is_grad_enabled() and recurrent_layers.supports(self.rnn, inputs):
                fast = self.fast_path
            outputs, final = recurrent_layers.recurrent(self.rnn, inputs, initial, fast, weights, config.locked_dropout)
        return outputs, RecurrentState.of(final)

    def batch_loss(
        self, batch: tuple[torch.Tensor, ...], state: RecurrentState | None = None
    ) -> tuple[torch.Tensor, int, RecurrentState]:
        """The trainer's contract, shared by every model: (summed loss, number of predicted tokens,
        state to carry). Here batch = (inputs (B, T), targets (B, T))."""
        inputs, targets = batch
        logits, state = self(inputs, state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum")
        return loss, targets.numel(), state

    def step(self, ids: torch.Tensor, state: RecurrentState | None) -> tuple[torch.Tensor, RecurrentState]:
        """One step of generation: ids (B,) -> logits (B, V)."""
        logits, state = self(ids[:, None], state)
        return logits[:, 0], state

    def stepper(
        self, banned: Sequence[int] = (), precision: str = "fp32"
    ) -> Callable[[torch.Tensor, RecurrentState | None], tuple[torch.Tensor, RecurrentState]]:
        """A fast `step` for generation with the current weights, `banned` ids at -inf, its
        products in `precision` (fp32 or bf16; see `charlm.models.recurrent_stepper`)."""
        from charlm.models.recurrent_stepper import Stepper

        return Stepper(self, banned, precision)

    def stepper_precisions(self) -> tuple[str, ...]:
        return ("fp32", "bf16")

    def fast_path_choices(self) -> tuple[bool, ...]:
        """The ways of running the recurrent layers in training that `charlm.runtime.measured` may measure:
        charlm's kernels and torch's module, or none for the from-scratch cells."""
        return () if self.config.from_scratch else (True, False)

    def init_state(self, batch_size: int) -> RecurrentState:
        """Zeros: h (L, B, H), and c for the LSTM."""
        config = self.config
        return RecurrentState.zeros(config.num_layers, batch_size, config.hidden_size, config.cell == "lstm",
                                    like=self.head.weight)

    def num_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())

    def hidden_matrices(self) -> list[nn.Parameter]:
        """`ModelDefaults`', but for the first layer's input weights over one-hot ids: an embedding."""
        one_hot = self.rnn.weight_ih_l0 if self.embedding is None else None
        return [parameter for parameter in super().hidden_matrices() if parameter is not one_hot]

    def describe(self) -> str:
        """One line for the user: "lstm 2x512"."""
        return f"{self.config.cell} {self.config.num_layers}x{self.config.hidden_size}"
