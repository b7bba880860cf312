"""A request's new text, sample by sample, as its tokens are drawn: the gap between two tokens
(a space between words), the stop texts (a sample ends before the first of them to appear, and
text that may be the start of one is held back until it is known not to be), each token's
log-probabilities when they were asked for, and why each sample ended: "stop" or "length".

`charlm generate`, `TextModel.generate` and the server's batcher all turn their tokens into text
here, so a stop ends a sample at the same character whichever door asked. Standard library only:
ids and numbers in, text out; it knows nothing about models or tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from charlm.text.tokens import Vocab

# A step's log-probabilities for each sample, when asked: (the chosen token's, [(id, log-probability)
# of the likeliest tokens, likeliest first]).
Scores = Sequence[tuple[float, Sequence[tuple[int, float]]]]


@dataclass(frozen=True)
class Token:
    """One new token as its sample's text shows it (`text`: after a space for words), with its
    log-probability under the model and the likeliest tokens' (`top`, text: log-probability,
    likeliest first, the chosen one's added where it is not among them) when they were asked for."""

    text: str
    logprob: float | None = None
    top: dict[str, float] | None = field(default=None, hash=False, compare=False)


@dataclass
class Sample:
    """One sample's new text so far (`text`, without the prefix), its `tokens` (the last one cut
    where a stop text starts inside it), the tokens drawn for it, and why it ended: None while it
    goes on, "stop" at a stop text, "length" after its last token."""

    text: str = ""
    tokens: list[Token] = field(default_factory=list)
    drawn: int = 0
    finish_reason: str | None = None
    held: list[Token] = field(default_factory=list, repr=False)  # drawn, not yet shown: they may start a stop text


class Continuation:
    """The new text of `num_samples` samples. `add(ids)` takes a step's ids, one per sample; the
    text each sample can show goes to `emit(sample, text, tokens)` at once; `finish()` shows what
    was held back and ends the samples still going. `done` once every sample has stopped. Each
    `Sample` keeps its text and tokens; with `keep` False neither (they go to `emit` only), so
    that what it holds stays bounded however long the samples run."""

    def __init__(self, vocab: Vocab, gap: str, num_samples: int, stop: Sequence[str] = (),
                 emit: Callable[[int, str, list[Token]], None] = lambda sample, text, tokens: None,
                 keep: bool = True) -> None:
        self.vocab, self.gap, self.stop, self.emit, self.keep = vocab, gap, tuple(stop), emit, keep
        self.longest_stop = max((len(text) for text in self.stop), default=0)
        self.samples = [Sample() for _ in range(num_samples)]
        self.going = num_samples

    @property
    def done(self) -> bool:
        return self.going == 0

    def add(self, ids: Sequence[int], scores: Scores | None = None) -> None:
        """One step: `ids[i]` is sample i's new token (ignored once it has stopped); `scores` its
        log-probabilities, when asked for."""
        for index, token in enumerate(self.vocab.decode(list(ids))):
            sample = self.samples[index]
            if sample.finish_reason is not None:
                continue
            gap = self.gap if sample.drawn else ""
            sample.drawn += 1
            if scores is None:
                made = Token(gap + token)
            else:
                chosen, top = scores[index]
                shown = {gap + self.vocab.itos[choice]: value for choice, value in top if value > float("-inf")}
                shown.setdefault(gap + token, chosen)
                made = Token(gap + token, chosen, shown)
            if self.stop:
                self._held_back(index, made)
            else:
                self._show(index, [made])

    def finish(self) -> None:
        """Show each sample's held-back text; the samples still going end for their length."""
        for index, sample in enumerate(self.samples):
            if sample.finish_reason is None:
                self._show(index, sample.held)
                sample.held, sample.finish_reason = [], "length"
        self.going = 0

    def _show(self, index: int, tokens: list[Token]) -> None:
        if tokens:
            sample = self.samples[index]
            text = "".join(token.text for token in tokens)
            if self.keep:
                sample.text += text
                sample.tokens += tokens
            self.emit(index, text, tokens)

    def _held_back(self, index: int, token: Token) -> None:
        """Show what cannot be the start of a stop text; end the sample at the first stop text."""
        sample = self.samples[index]
        held = [*sample.held, token]
        pending = "".join(token.text for token in held)  # no stop text starts before it: it was held
        starts = [at for at in (pending.find(text) for text in self.stop) if at >= 0]
        if starts:
            cut, kept, used = min(starts), [], 0
            for token in held:
                if used >= cut:
                    break
                kept.append(token if used + len(token.text) <= cut else replace(token, text=token.text[:cut - used]))
                used += len(token.text)
            sample.held, sample.finish_reason = [], "stop"
            self.going -= 1
            self._show(index, kept)
            return
        # The longest end of the pending text that a stop text starts with stays back, in whole tokens.
        back = next((size for size in range(min(len(pending), self.longest_stop - 1), 0, -1)
                     if any(text.startswith(pending[-size:]) for text in self.stop)), 0)
        shown, used = [], 0
        for token in held:
            if used + len(token.text) > len(pending) - back:
                break
            shown.append(token)
            used += len(token.text)
        sample.held = held[len(shown):]
        self._show(index, shown)
