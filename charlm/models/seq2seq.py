"""Pair models: map one string to another, character by character.

    Tagger    the classic lessons' aligned model: a language model's body (one-hot or embedding,
              then RNN / GRU / LSTM) and a linear layer that names the target character at each
              source position. Source and target have the same length.
    Seq2Seq   d2l's encoder-decoder: encoder -> decoder.init_state(encoder outputs) -> decoder,
              with Bahdanau (additive) attention over the source when `attention` is on.

Batches are (source (B, S), target (B, T)) of character ids, right-padded with `PAD_INDEX`, with
no markers: each model adds the <bos> / <eos> it needs. Both models keep two contracts:

    loss_sum, num_targets, None = model.batch_loss((source, target))     # the trainer's
    state = model.encode(source)                                          # the translator's:
    logits, state = model.decode_step(previous_ids, state)                #   one output per step,
    state = state.select(rows)                                            #   beams reordered

The cell is picked by name and the LSTM's (h, c) handled by `charlm.models.recurrent`. This module knows
nothing about files, vocabularies, search strategies or training.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from charlm.models import kernels, recurrent_layers
from charlm.models.protocol import ModelDefaults
from charlm.models.recurrent import LanguageModel, ModelConfig, recurrent_module
from charlm.models.state import RecurrentState
from charlm.presets import PAIRS
from charlm.text.pairs import BOS_INDEX, EOS_INDEX, PAD_INDEX


@dataclass
class TaggerConfig(ModelConfig):
    """`vocab_size` is the source vocab's; the head predicts among `target_vocab_size` ids. The
    defaults are the pair task's (`charlm.presets`)."""

    cell: str = PAIRS["cell"]
    embedding_size: int = PAIRS["embedding_size"]
    hidden_size: int = PAIRS["hidden_size"]
    num_layers: int = PAIRS["num_layers"]
    dropout: float = PAIRS["dropout"]
    target_vocab_size: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight_drop or self.locked_dropout or self.embedding_dropout:
            raise ValueError("--weight-drop, --locked-dropout and --embedding-dropout are for language models of text")
        if self.target_vocab_size < 1:
            raise ValueError(f"target_vocab_size must be at least 1, got {self.target_vocab_size}")

    @property
    def source_vocab_size(self) -> int:
        return self.vocab_size


@dataclass
class Seq2SeqConfig(TaggerConfig):
    """The encoder and the decoder share the cell, sizes and dropout (the decoder starts from the
    encoder's final state). No one-hot input and no from-scratch cells here: the encoder reads
    packed sequences, which only torch's own modules take."""

    attention: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.embedding_size < 1:
            raise ValueError("a seq2seq model needs embedding_size >= 1 (one-hot input is for the tagger)")
        if self.from_scratch:
            raise ValueError("from_scratch cells are for language models and the tagger, not seq2seq")


def masked_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, number of labels) over the labels that are not padding.
    logits (B, T, V), labels (B, T). The count stays a tensor: no host sync."""
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=PAD_INDEX, reduction="sum")
    return loss, (labels != PAD_INDEX).sum()


# ---------------------------------------------------------------------------------------------
# Tagger


@dataclass
class TaggerState:
    logits: torch.Tensor  # (B, S, V) every position's prediction, computed once
    lengths: torch.Tensor  # (B,) source lengths
    position: int = 0  # the next output position

    def select(self, rows: torch.Tensor) -> TaggerState:
        return TaggerState(self.logits[rows], self.lengths[rows], self.position)


class Tagger(LanguageModel):
    """ids (B, S) -> one-hot or embedding -> recurrent layers (B, S, H) -> logits (B, S, V_target).
    A source's padding comes after it, so it never changes the outputs at its real positions."""

    def __init__(self, config: TaggerConfig) -> None:
        super().__init__(config)
        self.head = nn.Linear(config.hidden_size, config.target_vocab_size)

    def batch_loss(self, batch: tuple[torch.Tensor, ...], state: None = None) -> tuple[torch.Tensor, torch.Tensor, None]:
        source, target = batch
        if source.shape != target.shape:
            raise ValueError(f"the tagger needs aligned pairs, got source {tuple(source.shape)} and target {tuple(target.shape)}")
        logits, _ = self(source)
        return (*masked_loss(logits, target), None)

    def encode(self, source: torch.Tensor) -> TaggerState:
        logits, _ = self(source)
        return TaggerState(logits, (source != PAD_INDEX).sum(1))

    def decode_step(self, previous: torch.Tensor, state: TaggerState) -> tuple[torch.Tensor, TaggerState]:
        """The next position's logits (B, V): its own characters while the source lasts (never
        <eos>), then only <eos>. `previous` is not needed: positions are independent."""
        length = state.logits.shape[1]
        at = min(state.position, length - 1)
        logits = state.logits[:, at].clone()
        logits[:, EOS_INDEX] = float("-inf")
        only_eos = torch.full_like(logits, float("-inf"))
        only_eos[:, EOS_INDEX] = 0.0
        ended = (state.lengths <= state.position)[:, None]  # (B, 1)
        return torch.where(ended, only_eos, logits), replace(state, position=state.position + 1)


# ---------------------------------------------------------------------------------------------
# Encoder-decoder


class BahdanauAttention(nn.Module):
    """Additive attention (Bahdanau et al. 2015, as in d2l): score(q, k) = w_v . tanh(W_q q + W_k k),
    a softmax over the source positions that are not padding, and the weighted sum of the values."""

    def __init__(self, query_size: int, key_size: int, attention_size: int) -> None:
        super().__init__()
        self.query_layer = nn.Linear(query_size, attention_size, bias=False)
        self.key_layer = nn.Linear(key_size, attention_size, bias=False)
        self.score_layer = nn.Linear(attention_size, 1, bias=False)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, Q, H), keys (B, S, A) already through `key_layer`, values (B, S, H), mask
        (B, S) True on real positions -> (context (B, Q, H), weights (B, Q, S), 0 on padding)."""
        features = torch.tanh(self.query_layer(query)[:, :, None] + keys[:, None])  # (B, Q, S, A)
        scores = self.score_layer(features).squeeze(-1)  # (B, Q, S)
        weights = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), dim=-1)
        return torch.bmm(weights, values), weights


class Encoder(nn.Module):
    """source (B, S) -> embedding (B, S, E) -> recurrent layers -> outputs (B, S, H), final state.
    Packed sequences make each row's final state the one after its last real character."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(config.source_vocab_size, config.embedding_size)
        self.dropout = kernels.Dropout(config.dropout)
        self.rnn = recurrent_module(config, config.embedding_size)

    def forward(self, source: torch.Tensor) -> tuple[torch.Tensor, RecurrentState, torch.Tensor]:
        """-> (outputs (B, S, H), zeros on padding; final state; mask (B, S))."""
        mask = source != PAD_INDEX
        embedded = self.dropout(self.embedding(source))  # (B, S, E)
        packed = nn.utils.rnn.pack_padded_sequence(embedded, mask.sum(1).cpu(), batch_first=True, enforce_sorted=False)
        outputs, state = self.rnn(packed)
        outputs, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, total_length=source.shape[1])
        return outputs, RecurrentState.of(state), mask


@dataclass
class DecoderState:
    hidden: RecurrentState
    context: torch.Tensor  # (B, H) the encoder's final top-layer state, fed at every step without attention
    memory: torch.Tensor  # (B, S, H) the encoder's outputs, attended to
    keys: torch.Tensor | None  # (B, S, A) the memory through the attention's key layer, computed once
    mask: torch.Tensor  # (B, S) True on real source characters

    def select(self, rows: torch.Tensor) -> DecoderState:
        """The state of the batch rows `rows` (B',), in that order: beams follow their parents."""
        keys = None if self.keys is None else self.keys[rows]
        return DecoderState(self.hidden.rows(rows), self.context[rows], self.memory[rows], keys, self.mask[rows])


class Decoder(nn.Module):
    """previous characters (B, T) -> embedding (B, T, E), joined with a context (B, T, H) ->
    recurrent layers (B, T, H) -> logits (B, T, V_target). The context is the encoder's final
    state (d2l's Seq2SeqDecoder) or, with attention, recomputed at each step from the decoder's
    last hidden state (d2l's Seq2SeqAttentionDecoder)."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        hidden_size = config.hidden_size
        self.embedding = nn.Embedding(config.target_vocab_size, config.embedding_size)
        self.attention = BahdanauAttention(hidden_size, hidden_size, hidden_size) if config.attention else None
        self.dropout = kernels.Dropout(config.dropout)
        self.rnn = recurrent_module(config, config.embedding_size + hidden_size)
        self.head = nn.Linear(hidden_size, config.target_vocab_size)

    def init_state(self, encoder_outputs: tuple[torch.Tensor, RecurrentState, torch.Tensor]) -> DecoderState:
        memory, hidden, mask = encoder_outputs
        keys = None if self.attention is None else self.attention.key_layer(memory)
        return DecoderState(hidden, hidden.top, memory, keys, mask)

    def forward(
        self, inputs: torch.Tensor, state: DecoderState
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor | None]:
        """-> (logits (B, T, V), state after the last step, attention weights (B, T, S) or None)."""
        embedded = self.dropout(self.embedding(inputs))  # (B, T, E)
        if self.attention is None:
            context = state.context[:, None].expand(-1, inputs.shape[1], -1)  # (B, T, H)
            outputs, hidden = self._recurrent(torch.cat([embedded, context], -1), state.hidden)
            weights = None
        else:  # the query of step t is the hidden state left by step t - 1
            hidden, steps, step_weights = state.hidden, [], []
            for t in range(inputs.shape[1]):
                query = hidden.top[:, None]  # (B, 1, H)
                context, weights = self.attention(query, state.keys, state.memory, state.mask)  # (B, 1, H), (B, 1, S)
                output, hidden = self._recurrent(torch.cat([embedded[:, t : t + 1], context], -1), hidden)
                steps.append(output)
                step_weights.append(weights)
            outputs, weights = torch.cat(steps, 1), torch.cat(step_weights, 1)  # (B, T, H), (B, T, S)
        return self.head(self.dropout(outputs)), replace(state, hidden=hidden), weights

    def _recurrent(self, inputs: torch.Tensor, state: RecurrentState) -> tuple[torch.Tensor, RecurrentState]:
        outputs, final = recurrent_layers.recurrent(self.rnn, inputs, state.torch_form())
        return outputs, RecurrentState.of(final)


class Seq2Seq(ModelDefaults, nn.Module):
    """Encoder and decoder, trained with teacher forcing: the decoder reads <bos> + target and
    predicts target + <eos>; padding is masked out of the loss."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def encode(self, source: torch.Tensor) -> DecoderState:
        return self.decoder.init_state(self.encoder(source))

    def forward(self, source: torch.Tensor, decoder_inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """source (B, S), decoder inputs (B, T) -> (logits (B, T, V), attention weights (B, T, S) or None)."""
        logits, _, weights = self.decoder(decoder_inputs, self.encode(source))
        return logits, weights

    def batch_loss(self, batch: tuple[torch.Tensor, ...], state: None = None) -> tuple[torch.Tensor, torch.Tensor, None]:
        source, target = batch
        inputs, labels = teacher_forcing(target)
        logits, _ = self(source, inputs)
        return (*masked_loss(logits, labels), None)

    def decode_step(self, previous: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """previous ids (B,) -> logits of the next character (B, V)."""
        logits, state, _ = self.decoder(previous[:, None], state)
        return logits[:, 0], state

    def num_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())


def teacher_forcing(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """target (B, T), right-padded -> (decoder inputs <bos> + target, labels target + <eos>), (B, T + 1).
    Drawn for "ab" and "c" (P = <pad>):
        inputs  <bos> a b        labels  a b <eos>
                <bos> c P                c <eos> P
    """
    batch = target.shape[0]
    lengths = (target != PAD_INDEX).sum(1)  # (B,)
    inputs = torch.cat([target.new_full((batch, 1), BOS_INDEX), target], 1)
    labels = torch.cat([target, target.new_full((batch, 1), PAD_INDEX)], 1)
    labels[torch.arange(batch, device=target.device), lengths] = EOS_INDEX
    return inputs, labels
