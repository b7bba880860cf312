"""The recipe: the settings a user left out, fitted to the text's size and to --max-time.

A few kilobytes of one's own notes and ten megabytes of books want different models: the first
is learnt by heart within a minute by the model that suits the second. So where the user has
not set them, the model's size, its regularisation, the batch size, the epochs and early
stopping follow the number of tokens the run trains on, by the tiers below (`charlm.presets.TIERS`,
measured on the texts of `scripts/bench_recipe.py`; the README has the table), and `--max-time` alone plans the
epochs that fill it. A setting the user gave is theirs; the choice is said in one line that
names the flags which override it.

It knows the settings' names and the number of training tokens; nothing about models, data or
files. The model's part is for the recurrent cells, where it was measured; other architectures
(the transformer) keep their own defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from charlm.presets import CELLS, MAX_EPOCHS, MODEL_PART, PASS_TOKENS, TIERS, UNTIL_TIME
from charlm.settings import TRAIN


@dataclass(frozen=True)
class Recipe:
    """The settings chosen (by name) and the line that says so; no line when none was chosen."""

    settings: dict[str, Any]
    line: str | None


NAMES = ("epochs", *sorted({name for _, _, tier in TIERS for name in tier}))  # every setting a recipe may choose


def choose(train_tokens: int, max_time: float | None, given: set[str] | frozenset[str], architecture: str,
           embedding_size: int | None = None) -> Recipe:
    """The settings not in `given` that a run on `train_tokens` tokens for `max_time` seconds (or
    None) takes, with `architecture` (a name of `charlm.models.registry`) and `embedding_size`
    (0: one-hot input, which has no embedding to drop)."""
    _, kind, tier = next(row for row in TIERS if train_tokens < row[0])
    chosen = {name: value for name, value in tier.items() if architecture in CELLS or name not in MODEL_PART}
    if embedding_size == 0:
        chosen.pop("embedding_dropout", None)
    if max_time is not None:
        chosen["epochs"] = UNTIL_TIME
    else:
        chosen["epochs"] = min(max(round(PASS_TOKENS / max(train_tokens, 1)), 1), MAX_EPOCHS)
    chosen = {name: value for name, value in chosen.items() if name not in given}
    if not chosen:
        return Recipe({}, None)
    told = [f"{TRAIN[name].option} {value}" for name, value in chosen.items() if name != "epochs" or max_time is None]
    if max_time is not None and "epochs" in chosen:
        told.append(f"as many epochs as --max-time {max_time:g} allows")
    line = (f"{kind} ({train_tokens:,} training tokens): {', '.join(told)} "
            f"(a setting you give overrides its choice)")
    return Recipe(chosen, line)
