"""Watching the held-out loss as a run trains: over-fitting named when it starts, and the stop that
--early-stop asks for.

It reads the losses of each evaluation (the metrics file's records, so a resumed run watches its
whole history); it knows nothing about models, data or files.
"""

from __future__ import annotations

from typing import Any

RISING = 3  # evaluations in a row whose held-out loss rose while the training loss fell: over-fitting


class LossWatch:
    """The held-out and training losses of every evaluation so far (`records`: metrics lines), and
    --early-stop's patience (None: never stop)."""

    def __init__(self, records: list[dict[str, Any]], patience: int | None) -> None:
        self.losses = [(record.get("val_loss"), record.get("train_loss")) for record in records]
        self.patience = patience
        self.named = False

    def add(self, val_loss: float | None, train_loss: float | None, best_step: int | None) -> str | None:
        """Take an evaluation's losses. Returns a note to show the first time the held-out loss has
        risen RISING times in a row while the training loss fell, else None."""
        self.losses.append((val_loss, train_loss))
        recent = self.losses[-(RISING + 1):]
        if self.named or len(recent) <= RISING or any(loss is None for pair in recent for loss in pair):
            return None
        held, trained = [val for val, _ in recent], [train for _, train in recent]
        if not (all(later > earlier for earlier, later in zip(held, held[1:])) and trained[-1] < trained[0]):
            return None
        self.named = True
        return (f"note: the held-out loss has risen for {RISING} evaluations while the training loss fell: the model "
                f"is learning its training text by heart (over-fitting); the model kept is step {best_step}'s. "
                f"More text, more --dropout, a smaller --hidden-size or more models (--ensemble N: the mean of N "
                f"models' predictions, for N times the time a step) help; --early-stop {RISING} stops there")

    def exhausted(self) -> bool:
        """With a patience of N: whether N evaluations have passed since the best held-out loss."""
        held = [val for val, _ in self.losses if val is not None]
        if not self.patience or not held:
            return False
        return len(held) - 1 - held.index(min(held)) >= self.patience
