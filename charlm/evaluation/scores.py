"""Scores of translations against references: exact match, character error rate, corpus BLEU.

Each hypothesis comes with a list of references (a source may have several right translations,
as in fra-eng), and scores against the closest of them. BLEU is sacrebleu's, the standard
implementation, imported only when asked for and only here; it is an optional extra
(`pip install 'charlm[bleu]'`). The rest is standard library. Nothing here knows about models.
"""

from __future__ import annotations

from collections.abc import Sequence

from charlm.errors import MissingExtra


def edit_distance(first: str, second: str) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions of characters."""
    previous = list(range(len(second) + 1))  # distances from first[:i - 1] to every second[:j]
    for i, a in enumerate(first, start=1):
        current = [i]
        for j, b in enumerate(second, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b)))
        previous = current
    return previous[-1]


def exact_match(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """The fraction of hypotheses equal to one of their references."""
    return sum(hypothesis in refs for hypothesis, refs in zip(hypotheses, references)) / max(len(hypotheses), 1)


def character_error_rate(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Edits needed to turn every hypothesis into its closest reference, over the characters of
    those references (0 is perfect; it can exceed 1 when hypotheses are long)."""
    edits = characters = 0
    for hypothesis, refs in zip(hypotheses, references):
        distance, length = min((edit_distance(hypothesis, ref), -len(ref)) for ref in refs)
        edits, characters = edits + distance, characters - length
    return edits / max(characters, 1)


def are_sentences(references: Sequence[Sequence[str]]) -> bool:
    """Whether the references are sentences (some hold a space), where BLEU means something;
    over single words it does not: they have no word bigrams."""
    return any(" " in ref.strip() for refs in references for ref in refs)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """sacrebleu's corpus BLEU (0 to 100, its default 13a tokenization), with every reference."""
    try:
        import sacrebleu
    except ImportError:
        raise MissingExtra("BLEU needs sacrebleu: pip install 'charlm[bleu]'") from None
    depth = max(len(refs) for refs in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(depth)]
    return float(sacrebleu.corpus_bleu(list(hypotheses), streams).score)
