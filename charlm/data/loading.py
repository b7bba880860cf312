"""Loading a corpus as ids: the data settings (`DataConfig`) and `load_corpus`, which reads a text
or a folder's files once to count its tokens and once to encode them (or takes them from the
`TokenCache`), and builds or extends the vocab.

Reading files is `charlm.text`'s job; batches are `charlm.data.batches`'.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace

from charlm.data.cache import TokenCache, _digest
from charlm.data.ids import Corpus, _MoreThanCounted, count, encode_stream
from charlm.errors import CorpusError
from charlm.presets import COMMON
from charlm.runtime.device import cpu_threads
from charlm.text.corpus import FoundCorpus, changed_file, document_chunks, find_corpus, stamp
from charlm.text.tokens import Tokenizer, Vocab


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
