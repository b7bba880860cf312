"""Pair corpora: files of `source<TAB>target` lines, for models that map one string to another.

    pairs, skipped = read_pairs("corpora/wordpairs.tsv")     # [Pair("man", "women", line=1), ...]
    train, held_out = split_pairs(pairs, 0.1, seed=0)          # the lessons' pairs always train
    source_vocab, target_vocab = pair_vocabs(pairs)            # <unk>, <pad>, <bos>, <eos>, chars

A pair file is UTF-8 text (read through `charlm.text.tokens.read_chunks`, so its decoding errors are the
same), one pair per line; blank lines are ignored. A line with no tab, more than one tab or an
empty side is malformed: reading stops with one error naming the lines, unless asked to skip them.

Standard library only, like `charlm.text.tokens`: turning pairs into padded tensors is `charlm.data.ids`'s
job, and nothing here knows about models or batches.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from charlm.errors import CorpusError
from charlm.text.tokens import Vocab, read_chunks

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)
# Vocab puts <unk> at 0 and the reserved tokens after it in the order given, so every pair vocab
# has these ids; the models rely on them (and `charlm.checkpoints.files` checks them on load).
UNK_INDEX, PAD_INDEX, BOS_INDEX, EOS_INDEX = 0, 1, 2, 3
# The classic lessons' pairs. Nothing can generalise to them from other words, so a held-out
# split never takes them: their results must hold after `charlm train corpora/wordpairs.tsv`.
LESSON_PAIRS = frozenset({
    ("hello", "ohlol"), ("hihell", "ihello"), ("man", "women"), ("black", "white"), ("king", "queen"),
    ("girl", "boy"), ("up", "down"), ("high", "low"),
})
DETECT_LINES = 1000  # how many non-empty lines `looks_like_pairs` reads
MAX_SHOWN = 10  # malformed lines named in an error


class Pair(NamedTuple):
    source: str
    target: str
    line: int  # 1-based line number in its file, for error messages


def numbered_lines(chunks: Iterable[str]) -> Iterator[tuple[int, str]]:
    """(line number from 1, line without its "\\n") for a stream of text chunks."""
    partial, number = "", 0  # the unfinished last line of the previous chunk
    for chunk in chunks:
        lines = (partial + chunk).split("\n")
        partial = lines.pop()
        for line in lines:
            number += 1
            yield number, line
    if partial:
        yield number + 1, partial


def problem(line: str) -> str | None:
    """Why a non-blank line is not a `source<TAB>target` pair, or None when it is one."""
    tabs = line.count("\t")
    if tabs == 0:
        return "no tab"
    if tabs > 1:
        return f"{tabs} tabs"
    source, target = line.split("\t")
    if not source:
        return "empty source"
    if not target:
        return "empty target"
    return None


def read_pairs(
    path: str | os.PathLike, encoding: str = "utf-8", skip_bad_lines: bool = False
) -> tuple[list[Pair], list[int]]:
    """(pairs, numbers of the malformed lines skipped). Malformed lines are a `CorpusError` that
    names them, unless `skip_bad_lines`; a file with no pair at all is always one."""
    pairs, bad = [], []
    for number, line in numbered_lines(read_chunks(path, encoding)):
        if not line.strip():
            continue
        reason = problem(line)
        if reason is None:
            pairs.append(Pair(*line.split("\t"), line=number))
        else:
            bad.append((number, reason))
    if bad and not skip_bad_lines:
        shown = ", ".join(f"line {number} ({reason})" for number, reason in bad[:MAX_SHOWN])
        more = f" and {len(bad) - MAX_SHOWN} more" if len(bad) > MAX_SHOWN else ""
        raise CorpusError(
            f"{path}: {len(bad)} malformed line{'s' if len(bad) > 1 else ''}: {shown}{more}; every line must be "
            "source<TAB>target with neither side empty: fix them, or pass --skip-bad-lines to leave them out"
        )
    if not pairs:
        raise CorpusError(f"{path}: no source<TAB>target pairs in it; give a file with one pair per line")
    return pairs, [number for number, _ in bad]


def skipped_message(path: str | os.PathLike, skipped: list[int]) -> str | None:
    """The line that says which malformed lines of a pair file were left out (the first ten), or
    None if none were."""
    if not skipped:
        return None
    shown = ", ".join(map(str, skipped[:10])) + (" ..." if len(skipped) > 10 else "")
    return f"skipped {len(skipped)} malformed line{'s' if len(skipped) > 1 else ''} of {path}: {shown}"


def looks_like_pairs(path: str | os.PathLike, encoding: str = "utf-8") -> bool:
    """Whether a file is meant as a pair corpus: most of its first non-blank lines (up to
    `DETECT_LINES`) hold a tab. Lines with an empty side or too many tabs count, so that a pair
    file with many malformed lines is reported as such rather than trained on as plain text."""
    seen = with_tab = 0
    for _, line in numbered_lines(read_chunks(path, encoding)):
        if not line.strip():
            continue
        seen += 1
        with_tab += "\t" in line
        if seen == DETECT_LINES:
            break
    return with_tab > seen / 2


def check_aligned(pairs: Sequence[Pair], path: str | os.PathLike) -> None:
    """The tagger's requirement: every target as long as its source (a `CorpusError` otherwise)."""
    unequal = [pair for pair in pairs if len(pair.source) != len(pair.target)]
    if unequal:
        shown = ", ".join(f"line {pair.line} ({len(pair.source)} -> {len(pair.target)} characters)"
                          for pair in unequal[:MAX_SHOWN])
        raise CorpusError(
            f"{path}: the tagger needs a target as long as its source, but {len(unequal)} pair"
            f"{'s differ' if len(unequal) > 1 else ' differs'}: {shown}; use --model-type seq2seq for pairs of any lengths"
        )


def split_pairs(pairs: Sequence[Pair], val_fraction: float, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, held-out pairs), both in file order. About `val_fraction` of the pairs are
    held out, chosen by source string with a generator seeded by `seed`: all the pairs of one
    source (one English sentence with several French translations) fall on the same side, so a
    held-out source was never seen in training. `LESSON_PAIRS` always train."""
    wanted = int(len(pairs) * val_fraction)
    per_source = Counter(pair.source for pair in pairs)
    protected = {pair.source for pair in pairs if (pair.source, pair.target) in LESSON_PAIRS}
    candidates = [source for source in per_source if source not in protected]  # first-seen order
    random.Random(seed).shuffle(candidates)
    held_out: set[str] = set()
    count = 0
    for source in candidates:
        if count + per_source[source] > wanted:
            continue
        held_out.add(source)
        count += per_source[source]
    return ([pair for pair in pairs if pair.source not in held_out],
            [pair for pair in pairs if pair.source in held_out])


def pair_vocabs(
    pairs: Iterable[Pair], min_freq: int = 1, max_size: int | None = None
) -> tuple[Vocab, Vocab]:
    """(source vocab, target vocab) of characters, each with `SPECIALS` reserved after <unk>."""
    source_counts: Counter = Counter()
    target_counts: Counter = Counter()
    for pair in pairs:
        source_counts.update(pair.source)
        target_counts.update(pair.target)
    return (Vocab(source_counts, min_freq, SPECIALS, max_size), Vocab(target_counts, min_freq, SPECIALS, max_size))


def is_pair_vocab(vocab: Vocab) -> bool:
    """Whether `vocab` has the special tokens at the ids the pair models use."""
    return vocab.itos[: EOS_INDEX + 1] == ["<unk>", *SPECIALS]
