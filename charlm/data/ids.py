"""Data: a corpus as a compact tensor of token ids, its train/validation split, and batch iterators.

Reading and tokenizing text is `charlm.text.tokens`'s job; this module turns token streams into ids (two
streaming passes: count, then encode into a preallocated tensor of the smallest dtype that holds
the vocab), keeps those ids in a cache folder for the next run (`TokenCache`), and cuts the ids
into batches. It knows nothing about models or training.

Batch layout for both language-model iterators, as in d2l: `inputs` and `targets` are (B, T) and
`targets[b, t] == inputs[b, t + 1]` in the corpus. Pair batches (`PairBatches`, read by
`charlm.text.pairs`) are (source (B, S), target (B, T)), right-padded, with no <bos> / <eos>: adding
them is each model's business.
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from charlm.text.corpus import (
    VAL_STRETCHES, FoundCorpus, changed_file, document_chunks, file_digest, file_hash, file_size, find_corpus,
    records_digest, stamp,
)
from charlm.text.corpus import held_out as corpus_held_out
from charlm.errors import CharlmError, CorpusError
from charlm.presets import COMMON, ITERATORS
from charlm.runtime.device import cpu_threads, seeded_generator
from charlm.text.tokens import Tokenizer, Vocab, count_tokens


@dataclass(frozen=True)
class DataConfig:
    """How a corpus becomes tokens (the text flags of `charlm train`); defaults from
    `charlm.presets`. `cache_dir` None keeps no token cache; `skip_bad_lines` is for pair files;
    `unknown` is for fine-tuning: what the tokens a trained model's vocab lacks become (see
    `load_corpus`)."""

    tokens: str = COMMON["tokens"]
    preprocess: str = COMMON["preprocess"]
    encoding: str = COMMON["encoding"]
    min_freq: int = COMMON["min_freq"]
    max_vocab: int | None = COMMON["max_vocab"]
    cache_dir: str | None = None
    skip_bad_lines: bool = False
    unknown: str = "error"


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


def load_corpus(
    corpus: str | os.PathLike | FoundCorpus,
    tokens: str = "char",
    preprocess: str = "none",
    encoding: str = "utf-8",
    min_freq: int = 1,
    max_vocab: int | None = None,
    vocab: Vocab | None = None,
    cache_dir: str | os.PathLike | None = None,
    unknown: str = "unk",
) -> Corpus:
    """Read, preprocess and tokenize a file, or the files `charlm.text.corpus.find_corpus` found, into a
    `Corpus`. With `vocab` given (evaluating or fine-tuning a trained model) it is used as is, and
    the tokens it lacks become `<unk>` (`unknown="unk"`), are an error naming them ("error"), or
    are added after its own ("extend"); otherwise one is built. With `cache_dir` the ids are kept
    there too, and the next call with the same files and settings loads them instead of reading
    the text (see `TokenCache`)."""
    found = corpus if isinstance(corpus, FoundCorpus) else find_corpus((corpus,), encoding)
    single = found.single  # one file: cached, hashed and recorded by its path, as a corpus always was
    path = found.roots[0]
    settings = {"tokens": tokens, "preprocess": preprocess, "encoding": encoding, "min_freq": min_freq,
                "max_vocab": max_vocab, "vocab": _digest(vocab.to_json().encode()) if vocab is not None else None}
    if vocab is not None and unknown != "unk":
        settings["unknown"] = unknown
    cache = TokenCache(cache_dir, path if single else found, settings) if cache_dir is not None else None
    if cache is not None and (cached := cache.load()) is not None:
        return cached
    hasher = hashlib.sha256()  # fed by the first pass over one file: the content hash costs no pass
    if single:  # a folder's files are stamped as the first pass checks them
        found.files = [replace(file, stamp=stamp(file.path)) for file in found.files]

    def chunks(hashed: bool) -> Iterator[str]:
        return document_chunks(found, encoding, preprocess, hasher=hasher if hashed and single else None)

    name = found.shown

    def moved() -> str | None:
        """A file that changed since it was stamped, by name, or None."""
        changed = changed_file(found.files)
        return None if changed is None else path if single else changed.name

    num_tokens = None
    try:
        # torch on one thread: each chunk op here is short and memory-bound, a thread team gains
        # nothing, and on a busy machine each op waited ~20 ms for a descheduled thread
        with cpu_threads(1):
            if vocab is None or unknown != "unk":
                counted = chunks(hashed=True)
                counts = count(counted, tokens)
                num_tokens = sum(counts.values())
                if vocab is not None:
                    vocab = _with_unknown(vocab, counts, unknown, name, tokens)
                else:
                    vocab = Vocab(counts, min_freq=min_freq, max_size=max_vocab)
                    if counts and len(vocab) < 2:
                        raise CorpusError(f"{name}: the vocab would hold only <unk> (--min-freq {min_freq}, "
                                          f"--max-vocab {max_vocab}); lower --min-freq or raise --max-vocab")
            try:
                ids = encode_stream(Tokenizer(tokens).split_chunks(chunks(hashed=num_tokens is None)), vocab, num_tokens)
                two_passes = num_tokens is not None
                changed = (two_passes and len(ids) != num_tokens) or bool((two_passes or not single) and moved())
            except _MoreThanCounted:
                changed = True
    except CorpusError:
        if single or not moved():
            raise
        changed = True  # a file of several that reads otherwise than it did when it was found
    # Two passes (count, then encode) must read the same text: otherwise the vocab, the count
    # (the tensor's size) and the hash belong to another text than the ids.
    if changed:
        raise CorpusError(f"{moved() or name}: the file changed while it was being read; try again once nothing "
                          "writes to it")
    if len(ids) == 0:
        raise CorpusError(f"{name}: no tokens left after preprocessing {preprocess!r}")
    corpus = Corpus(ids, vocab, tokens, preprocess, documents=len(found.files),
                    sha256=hasher.hexdigest() if single else None)
    if cache is not None:
        cache.store(corpus, hasher.hexdigest())
    return corpus


def _with_unknown(vocab: Vocab, counts: Counter, unknown: str, name: str, tokens: str) -> Vocab:
    """`vocab` for a text of `counts`: as it is when it has every token, or when `unknown` is "unk";
    with the tokens it lacks added after its own, most frequent first ("extend"); an error naming
    them ("error")."""
    missing = [token for token, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if token not in vocab]
    if not missing or unknown == "unk":
        return vocab
    if unknown == "extend":
        return vocab.extended(missing)
    kind = "character" if tokens == "char" else "token"
    shown = ", ".join(repr(token) for token in missing[:10]) + (" ..." if len(missing) > 10 else "")
    raise CorpusError(f"{name} has {len(missing):,} {kind}{'s' if len(missing) > 1 else ''} the model's vocab "
                      f"lacks: {shown}; pass --unknown unk to map them to <unk>, or --extend-vocab to add them")


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

CACHE_FOLDER = ".charlm-cache"
CACHE_KIND = "token-ids"
CACHE_NAME_CHARS = 100  # of the corpus name, in its cache entry's name


def default_cache_dir(path: str | os.PathLike) -> str:
    """`.charlm-cache/` beside the corpus."""
    return os.path.join(os.path.dirname(os.path.abspath(path)), CACHE_FOLDER)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TokenCache:
    """The token ids of one corpus under one set of tokenization settings, kept in a folder so that
    the next run on the same text skips reading and tokenizing it.

    The entry is `<folder>/<corpus name>.<key>.safetensors`, the key hashing the corpus's absolute
    path and the settings, so re-tokenizing an edited file replaces its entry instead of piling up
    another (the name part is cut to `CACHE_NAME_CHARS`, so a long corpus name still has an entry).
    The entry holds the ids (memory-mapped when loaded), the vocab, the corpus's size and SHA-256,
    and a SHA-256 of the ids and vocab themselves: it is used only when the file on disk has that
    size and hash, so an edited file is noticed (a hit costs one quick read to hash it), and only
    when the entry's own content hashes right and every id is inside the vocab, so a damaged or
    tampered entry is rebuilt (said on stderr) instead of trained on. A folder that cannot be
    written, or is full, costs the cache, never the run: one line on stderr says so. Entries are
    written atomically, so processes sharing a folder never read a part.

    A corpus of several files (a `FoundCorpus`) is keyed by the paths given and the --include /
    --exclude globs. Its entry holds the size of every candidate file, why those skipped were, and
    one SHA-256 of every candidate's absolute path, size, SHA-256 and skip: an added, removed or
    edited file replaces the entry (a hit costs a stat of each file and one read to hash it, as
    for one file; a file of another size is seen from the stat, before anything is read).
    """

    def __init__(self, folder: str | os.PathLike, corpus: str | os.PathLike | FoundCorpus,
                 settings: dict[str, Any]) -> None:
        self.found = corpus if isinstance(corpus, FoundCorpus) else None
        if self.found is not None:
            self.source = self.size = None
            roots = [os.path.abspath(root) for root in self.found.roots]
            keyed = {"sources": roots, "include": list(self.found.include), "exclude": list(self.found.exclude),
                     **settings}
            name = os.path.basename(roots[0]) + (f"+{len(roots) - 1}" if len(roots) > 1 else "")
        else:
            self.source = os.path.abspath(corpus)
            keyed = {"source": self.source, **settings}
            name = os.path.basename(self.source)
            self.size = os.path.getsize(self.source) if os.path.isfile(self.source) else None
        key = _digest(json.dumps(keyed, sort_keys=True).encode())[:16]
        self.path = os.path.join(os.fspath(folder), f"{name[:CACHE_NAME_CHARS]}.{key}.safetensors")

    def load(self) -> Corpus | None:
        """The cached corpus, or None when there is no sound entry for this very content."""
        from charlm.checkpoints import files as checkpoint  # the one home of safetensors

        try:
            meta = checkpoint.read_metadata(self.path)
            if meta.get("kind") != CACHE_KIND or not self._same_source(meta):
                return None
        except (CharlmError, OSError, KeyError, TypeError, ValueError):  # missing, stale or foreign
            return None
        try:
            tensors, meta = checkpoint.load(self.path, kind=CACHE_KIND)
            ids, vocab = tensors["ids"], Vocab.from_dict(meta["vocab"])
            if ids.dim() != 1 or ids.is_floating_point() or len(ids) == 0:
                raise ValueError("not a tensor of token ids")
            if meta["content_sha256"] != content_digest(ids, vocab):
                raise ValueError("its content does not match its checksum")
            if int(ids.min()) < 0 or int(ids.max()) >= len(vocab):
                raise ValueError("ids outside its vocab")
            if self.found is not None:
                self.found.restore(self.records)
            return Corpus(ids, vocab, meta["tokens"], meta["preprocess"], cached=True,
                          documents=len(self.found.files) if self.found is not None else 1,
                          sha256=meta["source"]["sha256"] if self.found is None else None)
        except (CharlmError, OSError, KeyError, TypeError, ValueError, RuntimeError) as error:
            print(f"charlm: note: the token cache {self.path} is damaged ({error}); reading the text again",
                  file=sys.stderr)
            return None

    def _same_source(self, meta: dict[str, Any]) -> bool:
        """Whether the entry was made from the very files to read now: the same sizes (nothing is
        read when one differs), then the same hashes."""
        if self.found is None:
            source = meta["source"]
            return source["size"] == self.size and source["sha256"] == file_digest(self.source)
        entry, candidates = meta["files"], self.found.candidates
        sizes = [file_size(candidate.path) for candidate in candidates]
        if entry["sizes"] != sizes:
            return False
        skipped = entry["skipped"]
        records = [(os.path.abspath(candidate.path), size, file_hash(candidate.path, size), skipped.get(str(index)))
                   for index, (candidate, size) in enumerate(zip(candidates, sizes))]
        if records_digest(records) != entry["digest"]:
            return False
        self.records = records
        return True

    def store(self, corpus: Corpus, sha256: str) -> None:
        """Keep `corpus`, read from the file whose bytes hash to `sha256` (or from the files its
        `FoundCorpus` records)."""
        from charlm.checkpoints import files as checkpoint

        if self.found is not None:  # sizes to tell a change before reading, a digest of every record
            records = self.found.records
            source = {"files": {"sizes": [size for _, size, _, _ in records], "digest": records_digest(records),
                                "skipped": {str(index): why for index, (*_, why) in enumerate(records) if why is not None}}}
        else:
            source = {"source": {"name": os.path.basename(self.source), "size": self.size, "sha256": sha256}}
        meta = {"kind": CACHE_KIND, **source, "vocab": corpus.vocab.to_dict(), "tokens": corpus.tokens,
                "preprocess": corpus.preprocess, "content_sha256": content_digest(corpus.ids, corpus.vocab)}
        try:
            checkpoint.save(self.path, {"ids": corpus.ids}, meta)
        except (OSError, CharlmError) as error:  # unwritable, full, or a vocab too big for a header
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            print(f"charlm: note: cannot write the token cache {self.path} ({reason}); "
                  "going on without it (choose another --cache-dir, or --no-cache)", file=sys.stderr)


def content_digest(ids: torch.Tensor, vocab: Vocab) -> str:
    """SHA-256 of token ids (their dtype, count and bytes, read in place through numpy, which
    safetensors needs anyway) and of the vocab they index."""
    hasher = hashlib.sha256(f"{ids.dtype}:{len(ids)}:".encode())
    hasher.update(vocab.to_json().encode())
    hasher.update(ids.contiguous().view(torch.uint8).numpy())
    return hasher.hexdigest()


# ---------------------------------------------------------------------------------------------
# Batches


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
    ids: torch.Tensor, batch_size: int, seq_len: int, max_positions: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every position of `ids` predicted exactly once, with no offset or shuffling: the ids are cut
    into at most `batch_size` equal rows of at least `seq_len` walked T at a time (carry the state
    between batches), then the few left over, which continue the last row, come as one (1, r)
    batch: keep the last row of the state for it. T is `seq_len`, or less where a batch would hold
    more than `max_positions` (rows x T) positions; how many steps a batch walks changes no result."""
    num_targets = len(ids) - 1
    rows = max(min(batch_size, num_targets // max(seq_len, 1)), 1)
    steps = max(seq_len, 1)
    if max_positions is not None:
        rows = min(rows, max(max_positions, 1))  # fewer rows (a slightly other loss): a vocab of millions
        steps = max(min(steps, max_positions // rows), 1)
    row_len = num_targets // rows
    inputs = ids[: rows * row_len].view(rows, row_len)
    targets = ids[1 : rows * row_len + 1].view(rows, row_len)
    for start in range(0, row_len, steps):
        yield inputs[:, start : start + steps].long(), targets[:, start : start + steps].long()
    if rows * row_len < num_targets:
        yield ids[None, rows * row_len : num_targets].long(), ids[None, rows * row_len + 1 :].long()


# The float32 logits of one evaluation batch: 32 rows x 256 steps of a 100k-word vocab would be
# 3.3 GB (and the loss takes as much again).
EVAL_LOGITS_BYTES = 256 << 20


def lm_eval_batches(
    ids: torch.Tensor, batch_size: int = 32, seq_len: int = 256, vocab_size: int | None = None
) -> Callable[[], Iterator]:
    """Validation batches of a language model, as a function the trainer calls at each evaluation:
    every position of `ids` once, in rows of at least 256 steps; with `vocab_size`, in batches
    whose logits stay within `EVAL_LOGITS_BYTES`."""
    most = EVAL_LOGITS_BYTES // (4 * vocab_size) if vocab_size else None
    return lambda: eval_batches(ids, batch_size, max(seq_len, 256), most)


# ---------------------------------------------------------------------------------------------
# Pairs

EncodedPair = tuple[list[int], list[int]]


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
