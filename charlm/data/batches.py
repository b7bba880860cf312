"""Batches: ids cut into what a model trains and is evaluated on.

Batch layout for both language-model iterators, as in d2l: `inputs` and `targets` are (B, T) and
`targets[b, t] == inputs[b, t + 1]` in the corpus. Pair batches (`PairBatches`, read by
`charlm.text.pairs`) are (source (B, S), target (B, T)), right-padded, with no <bos> / <eos>: adding
them is each model's business. It knows nothing about models or training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from charlm.data.ids import EncodedPair
from charlm.errors import CorpusError
from charlm.presets import ITERATORS
from charlm.runtime.device import seeded_generator
from charlm.text.tokens import Vocab


def fit_batch_size(num_tokens: int, batch_size: int, seq_len: int) -> int:
    """The largest batch size, up to `batch_size`, whose batches fit in `num_tokens` at every epoch
    offset: a batch needs batch_size x seq_len tokens, plus seq_len for the offset. A corpus too
    short for even one row is a `CorpusError`."""
    fitting = (num_tokens - seq_len) // seq_len
    if fitting < 1:
        shorter = f"lower --seq-len to {num_tokens // 2} or less, or " if num_tokens >= 2 else ""
        raise CorpusError(
            f"the training split has {num_tokens} tokens, too few for one row of --seq-len {seq_len} "
            f"(that needs {2 * seq_len}); {shorter}use a longer corpus"
        )
    return min(batch_size, fitting)


class BatchIterator:
    """Cuts a 1-D id tensor into (B, T) input/target batches, epoch by epoch.

    sequential: the ids are laid out as B long rows and batch i holds columns [i*T, (i+1)*T), so
        row b of batch i+1 continues row b of batch i, and the hidden state can be carried over
        (detached). Drawn for B=2, T=3 on ids 0..13 with offset 1:
            row 0: 1 2 3 | 4 5 6        batch 0 = [[1 2 3], [7 8 9]]
            row 1: 7 8 9 | 10 11 12     batch 1 = [[4 5 6], [10 11 12]]
    random: independent windows of T at shuffled positions; the state is reset each batch.

    Each epoch starts at a random offset in [0, T) as in d2l. The randomness of epoch e is drawn
    from a generator seeded with (seed, e) alone, so `batches(epoch, start=k)` resumes an epoch
    exactly at its k-th batch, whatever came before.
    """

    def __init__(
        self, ids: torch.Tensor, batch_size: int, seq_len: int, kind: str = "sequential", seed: int = 0
    ) -> None:
        if kind not in ITERATORS:
            raise CorpusError(f"unknown iterator {kind!r}; choose one of {', '.join(ITERATORS)}")
        self.ids, self.batch_size, self.seq_len, self.kind, self.seed = ids, batch_size, seq_len, kind, seed
        if fit_batch_size(len(ids), batch_size, seq_len) < batch_size:
            raise CorpusError(
                f"the training split has {len(ids)} tokens but one batch needs {batch_size * seq_len + seq_len} "
                f"(batch size {batch_size} x seq len {seq_len}, plus an offset); "
                f"lower --batch-size or --seq-len, or use a longer corpus"
            )

    @property
    def carries_state(self) -> bool:
        return self.kind == "sequential"

    def __len__(self) -> int:
        """Batches per epoch (the same for every offset)."""
        usable = len(self.ids) - self.seq_len  # the largest offset is T - 1, and targets need 1 more
        if self.kind == "sequential":
            return (usable // self.batch_size) // self.seq_len
        return (usable // self.seq_len) // self.batch_size

    def _generator(self, epoch: int) -> torch.Generator:
        return seeded_generator(self.seed * 1_000_003 + epoch)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (inputs, targets), each (B, T) int64, for batches start..len(self)-1 of `epoch`."""
        generator = self._generator(epoch)
        offset = int(torch.randint(0, self.seq_len, (1,), generator=generator))
        count, size, steps = len(self), self.batch_size, self.seq_len
        if self.kind == "sequential":
            row_len = count * steps
            rows = self.ids[offset : offset + size * row_len + 1]
            inputs = rows[:-1].view(size, row_len)
            targets = rows[1:].view(size, row_len)
            for index in range(start, count):
                columns = slice(index * steps, (index + 1) * steps)
                yield inputs[:, columns].long(), targets[:, columns].long()
        else:
            starts = offset + torch.randperm(count * size, generator=generator) * steps
            window = torch.arange(steps)
            for index in range(start, count):
                positions = starts[index * size : (index + 1) * size, None] + window  # (B, T)
                yield self.ids[positions].long(), self.ids[positions + 1].long()


def eval_batches(
    ids: torch.Tensor, batch_size: int, seq_len: int, max_positions: int | None = None, positions: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every position of `ids` predicted exactly once, with no offset or shuffling: the ids are cut
    into at most `batch_size` equal rows of at least `seq_len` walked T at a time (carry the state
    between batches), then the few left over, which continue the last row, come as one (1, r)
    batch: keep the last row of the state for it. T is `seq_len`, or less where a batch would hold
    more than `max_positions` (rows x T) positions; how many steps a batch walks changes no result.
    With `positions`, about that many only: the start of each row (a part of every stretch of
    `ids`, not only its first), and none of the few left over."""
    num_targets = len(ids) - 1
    rows = max(min(batch_size, num_targets // max(seq_len, 1)), 1)
    steps = max(seq_len, 1)
    if max_positions is not None:
        rows = min(rows, max(max_positions, 1))  # fewer rows (a slightly other loss): a vocab of millions
        steps = max(min(steps, max_positions // rows), 1)
    row_len = num_targets // rows
    inputs = ids[: rows * row_len].view(rows, row_len)
    targets = ids[1 : rows * row_len + 1].view(rows, row_len)
    walked = row_len if positions is None else min(row_len, max(positions // rows, 1))
    for start in range(0, walked, steps):
        end = min(start + steps, walked)
        yield inputs[:, start:end].long(), targets[:, start:end].long()
    if rows * row_len < num_targets and walked == row_len:
        yield ids[None, rows * row_len : num_targets].long(), ids[None, rows * row_len + 1 :].long()


# The float32 logits of one evaluation batch: 32 rows x 256 steps of a 100k-word vocab would be
# 3.3 GB (and the loss takes as much again).
EVAL_LOGITS_BYTES = 256 << 20


def lm_eval_batches(
    ids: torch.Tensor, batch_size: int = 32, seq_len: int = 256, vocab_size: int | None = None,
    positions: int | None = None,
) -> Callable[[], Iterator]:
    """Validation batches of a language model, as a function the trainer calls at each evaluation:
    every position of `ids` once (or about `positions` of them, spread over `ids`), in rows of at
    least 256 steps; with `vocab_size`, in batches whose logits stay within `EVAL_LOGITS_BYTES`."""
    most = EVAL_LOGITS_BYTES // (4 * vocab_size) if vocab_size else None

    def batches() -> Iterator:
        return eval_batches(ids, batch_size, max(seq_len, 256), most, positions)

    batches.positions = min(len(ids) - 1, positions or len(ids))  # about the tokens an evaluation predicts
    return batches


def encode_pairs(pairs: Iterable, source_vocab: Vocab, target_vocab: Vocab) -> list[EncodedPair]:
    """`charlm.text.pairs.Pair`s -> (source ids, target ids), one id per character, no markers."""
    return [(source_vocab.encode(pair.source), target_vocab.encode(pair.target)) for pair in pairs]


def pad(sequences: Sequence[Sequence[int]], pad_index: int) -> torch.Tensor:
    """Id lists -> one int64 (B, longest) tensor, right-padded with `pad_index`."""
    out = torch.full((len(sequences), max(len(ids) for ids in sequences)), pad_index, dtype=torch.long)
    for row, ids in enumerate(sequences):
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def pad_pairs(encoded: Sequence[EncodedPair], pad_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of pairs: (source (B, S), target (B, T)), both right-padded with `pad_index`."""
    return pad([source for source, _ in encoded], pad_index), pad([target for _, target in encoded], pad_index)


class PairBatches:
    """Padded (source (B, S), target (B, T)) batches of pairs, for the trainer.

    Each epoch, the pairs are shuffled, then sorted by source length within pools of 32 batches
    (so a batch holds pairs of similar lengths and little padding), cut into batches, and the
    batches shuffled. All of it is drawn from a generator seeded with (seed, epoch) alone, so
    `batches(epoch, start=k)` resumes an epoch exactly at its k-th batch. Pairs are independent:
    no state is carried from one batch to the next.
    """

    carries_state = False
    POOL_BATCHES = 32

    def __init__(self, encoded: Sequence[EncodedPair], batch_size: int, pad_index: int, seed: int = 0) -> None:
        if not encoded:
            raise CorpusError("no training pairs left after holding out the validation split; lower --val-fraction")
        self.encoded, self.batch_size, self.pad_index, self.seed = encoded, batch_size, pad_index, seed

    def __len__(self) -> int:
        return -(-len(self.encoded) // self.batch_size)

    def plan(self, epoch: int) -> list[list[int]]:
        """The pair indices of every batch of `epoch`, in order."""
        generator = seeded_generator(self.seed * 1_000_003 + epoch)  # any integer is a seed
        order = torch.randperm(len(self.encoded), generator=generator).tolist()
        pool = self.batch_size * self.POOL_BATCHES
        batches = []
        for start in range(0, len(order), pool):
            pooled = sorted(order[start : start + pool], key=lambda index: len(self.encoded[index][0]))
            batches += [pooled[i : i + self.batch_size] for i in range(0, len(pooled), self.batch_size)]
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[index] for index in shuffled]

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (source, target) for batches start..len(self)-1 of `epoch`."""
        for indices in self.plan(epoch)[start:]:
            yield pad_pairs([self.encoded[index] for index in indices], self.pad_index)


def pair_eval_batches(encoded: Sequence[EncodedPair], pad_index: int, batch_size: int = 64) -> Callable[[], Iterator]:
    """Validation batches of pairs, as a function the trainer calls at each evaluation: every pair
    once, in file order."""
    return lambda: (pad_pairs(encoded[start : start + batch_size], pad_index)
                    for start in range(0, len(encoded), batch_size))
