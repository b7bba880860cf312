"""Token ids: a corpus as a compact tensor of ids (`Corpus`, with its train/validation split), made
from a stream of tokens in one pass into a preallocated tensor of the smallest dtype that holds the
vocab (`encode_stream`), and the one way charlm counts tokens (`count`: characters through their
code points, summed in C), which training's vocab and `charlm stats` share.

Reading and tokenizing text is `charlm.text`'s job; loading a corpus through the cache is
`charlm.data.loading`'s, cutting ids into batches `charlm.data.batches`'. It knows nothing about
models or training.
"""

from __future__ import annotations

import array
import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from charlm.errors import CorpusError
from charlm.presets import COMMON
from charlm.text.corpus import VAL_STRETCHES, FoundCorpus, document_chunks
from charlm.text.corpus import held_out as corpus_held_out
from charlm.text.tokens import Vocab, count_tokens


def id_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer dtype that holds ids below `vocab_size`."""
    if vocab_size <= 256:
        return torch.uint8
    if vocab_size <= 32768:
        return torch.int16
    return torch.int32


@dataclass
class Corpus:
    """A tokenized corpus: ids (N,) in a compact dtype, and how they were made."""

    ids: torch.Tensor
    vocab: Vocab
    tokens: str = "char"
    preprocess: str = "none"
    cached: bool = False  # the ids came from a `TokenCache`
    documents: int = 1  # the files joined into the ids
    sha256: str | None = None  # of a one-file corpus's bytes, as its reading (or its cache check) hashed them

    def split(self, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(train ids, validation ids), as `held_out` says: of one document, the last
        `val_fraction` (views of the ids); of several, the last `val_fraction` of each of
        `VAL_STRETCHES` equal stretches, so that every part of the corpus is validated, not only
        the files that sort last (the parts are joined: one copy of the ids)."""
        num_val = int(len(self.ids) * val_fraction)
        if self.documents == 1 or num_val == 0:
            return self.ids[: len(self.ids) - num_val], self.ids[len(self.ids) - num_val :]
        heads, tails = [], []
        for index in range(VAL_STRETCHES):  # stretch i: [bounds[i], bounds[i+1]); its last `held` are held out
            start, end = (len(self.ids) * at // VAL_STRETCHES for at in (index, index + 1))
            held = min(num_val * (index + 1) // VAL_STRETCHES - num_val * index // VAL_STRETCHES, end - start)
            heads.append(self.ids[start : end - held])
            tails.append(self.ids[end - held : end])
        return torch.cat(heads), torch.cat(tails)



class _MoreThanCounted(CorpusError):
    """`encode_stream` was given more tokens than `num_tokens`."""


def encode_stream(
    token_chunks: Iterable[Sequence[str]], vocab: Vocab, num_tokens: int | None = None
) -> torch.Tensor:
    """Encode token chunks into one (N,) tensor of ids in the vocab's compact dtype. With
    `num_tokens` known the tensor is allocated once and filled (more tokens than that raise
    `_MoreThanCounted`); otherwise the parts are joined."""
    dtype = id_dtype(len(vocab))
    encoder = _CharEncoder(vocab) if all(len(token) == 1 for token in vocab.itos[1:]) else None
    parts, filled = [], 0
    out = torch.empty(num_tokens, dtype=dtype) if num_tokens is not None else None
    for chunk in token_chunks:
        if not chunk:
            continue
        if encoder is not None and isinstance(chunk, str):
            part = encoder(chunk)
        else:
            part = torch.frombuffer(array.array("i", vocab.encode(chunk)), dtype=torch.int32)  # 2x torch.tensor(list)
        if out is not None:
            if filled + len(part) > num_tokens:
                raise _MoreThanCounted(f"more than the {num_tokens} tokens counted")
            out[filled : filled + len(part)] = part
        else:
            parts.append(part.to(dtype))
        filled += len(part)
    if out is not None:
        return out[:filled]
    return torch.cat(parts) if parts else torch.empty(0, dtype=dtype)


class _CharEncoder:
    """Encodes a string of characters with a lookup table over every code point (0x110000 entries
    of the ids' dtype, 1-4 MB), in C, not per char: a chunk of n characters costs 8n bytes of
    UTF-32 on the way, and the result is already compact."""

    def __init__(self, vocab: Vocab) -> None:
        self.table = torch.full((MAX_CODE_POINT,), vocab.unk_index, dtype=id_dtype(len(vocab)))
        code_points = torch.tensor([ord(token) for token in vocab.itos[1:]], dtype=torch.long)
        self.table[code_points] = torch.arange(1, len(vocab)).to(self.table.dtype)

    def __call__(self, text: str) -> torch.Tensor:
        return self.table.index_select(0, code_points(text))  # not table[...]: 40 ms more a call


MAX_CODE_POINT = 0x110000


def code_points(text: str) -> torch.Tensor:
    """The code points of `text`, (n,) int32, through UTF-32 (4n bytes, in C)."""
    if not text:
        return torch.zeros(0, dtype=torch.int32)  # frombuffer refuses an empty buffer
    return torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32)


def count(chunks: Iterable[str], kind: str = "char") -> Counter:
    """Token frequencies of a stream of text chunks, as `charlm.text.tokens.count_tokens` counts them: the
    one way charlm counts (training's vocab, `charlm stats`), characters through `count_chars`."""
    return count_chars(chunks) if kind == "char" else count_tokens(chunks, kind)


def count_chars(chunks: Iterable[str]) -> Counter:
    """What `charlm.text.tokens.count_tokens(chunks, "char")` counts, summed over code points in C rather
    than per character in Python: ~5x faster on text with many non-Latin characters."""
    totals = torch.zeros(MAX_CODE_POINT, dtype=torch.long)
    one = torch.ones(1, dtype=torch.long)
    for chunk in chunks:
        points = code_points(chunk)
        totals.index_add_(0, points, one.expand(len(points)))
    present = totals.nonzero().squeeze(1)
    return Counter(dict(zip(map(chr, present.tolist()), totals[present].tolist())))


def corpus_stats(found: FoundCorpus, encoding: str = "utf-8", tokens: str = "char", preprocess: str = "none",
                 top: int = 10) -> dict[str, Any]:
    """What `charlm stats --json` says of a corpus `find_corpus` found: its token count, vocab
    size, the `top` most frequent tokens ([token, count] pairs), how many files it took and
    skipped, and how training would hold out its validation split."""
    counts = count(document_chunks(found, encoding, preprocess), tokens)
    vocab = Vocab(counts)
    split = f"{corpus_held_out(len(found.files), COMMON['val_fraction'])} (--val-fraction {COMMON['val_fraction']:g})"
    return {"tokens": sum(counts.values()), "vocab_size": len(vocab), "distinct_tokens": len(counts),
            "most_frequent": [[token, counts[token]] for token in vocab.itos[1 : 1 + top]],
            "files": len(found.files), "skipped_files": len(found.skipped), "held_out": split}


# ---------------------------------------------------------------------------------------------
# The token cache




def unigram_loss(train_ids: torch.Tensor, val_ids: torch.Tensor, vocab_size: int) -> float:
    """The held-out loss (nats per token predicted, as a language model's evaluation predicts
    `val_ids[1:]`) of a table of the training split's token frequencies, add-one smoothed: what a
    model must beat to have learnt more than which characters are common."""
    counts = torch.bincount(train_ids.long(), minlength=vocab_size).double() + 1
    log_probabilities = counts.log() - counts.sum().log()
    return float(-log_probabilities[val_ids[1:].long()].mean())


def content_digest(ids: torch.Tensor, vocab: Vocab) -> str:
    """SHA-256 of token ids (their dtype, count and bytes, read in place through numpy, which
    safetensors needs anyway) and of the vocab they index."""
    hasher = hashlib.sha256(f"{ids.dtype}:{len(ids)}:".encode())
    hasher.update(vocab.to_json().encode())
    hasher.update(ids.contiguous().view(torch.uint8).numpy())
    return hasher.hexdigest()


# ---------------------------------------------------------------------------------------------
# Batches





# ---------------------------------------------------------------------------------------------
# Pairs

EncodedPair = tuple[list[int], list[int]]





