"""The recipe: the settings a user left out, fitted to the text's size and to --max-time.

A few kilobytes of one's own notes and ten megabytes of books want different models: the first
is learnt by heart within a minute by the model that suits the second. So where the user has
not set them, the model's size, its regularisation, the batch size, the epochs and early
stopping follow the number of tokens the run trains on, by the tiers below (`charlm.presets.TIERS`,
measured on the texts of `scripts/bench_recipe.py`; the README has the table), and `--max-time` alone plans the
epochs that fill it. A recurrent model's dropout follows the passes the run makes over the text
(`by_passes`): known from the epochs, or with --max-time once the run's plan, a tenth into the
time, says how many the time allows (`Recipe.by_passes`: the trainer asks then). And a recurrent
model's --max-time run on a text of ENSEMBLE_TOKENS or more trains two models and predicts with
their mixture (--ensemble) where one model would make ENSEMBLE_PASSES passes in ENSEMBLE_STEPS
steps or more in the time (`by_pace`): the setup times one model's steps before it builds the
run's (`Recipe.by_pace`, `charlm.training.pace`).
A setting the user gave is theirs; the choice is said in one line that names the flags which
override it.

It knows the settings' names and the number of training tokens; nothing about models, data or
files. The model's part is for the recurrent cells, where it was measured; other architectures
(the transformer) keep their own defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from charlm.presets import (CELLS, ENSEMBLE_MEMBERS, ENSEMBLE_PASSES, ENSEMBLE_STEPS, ENSEMBLE_TOKENS, FEW_PASSES,
                            FEW_PASSES_DROPOUT, MAX_EPOCHS, MODEL_PART, PASS_TOKENS, TIERS, UNTIL_TIME)
from charlm.settings import TRAIN


@dataclass(frozen=True)
class Recipe:
    """The settings chosen (by name) and the line that says so; no line when none was chosen."""

    settings: dict[str, Any]
    line: str | None
    by_passes: bool = False  # the dropout is `by_passes`' once a --max-time run's plan says the passes
    by_pace: bool = False  # the models' count is `by_pace`'s for the passes one model's pace promises in the time


def by_passes(passes: float) -> dict[str, Any]:
    """What a recurrent model of a moderate or large text changes for a run of `passes` passes over
    it: under FEW_PASSES it has little to over-fit, and dropout only slows its learning."""
    return {"dropout": FEW_PASSES_DROPOUT} if passes < FEW_PASSES else {}


def by_pace(passes: float, steps: float) -> dict[str, Any]:
    """What a recurrent model's --max-time run changes where one model would make `passes` passes
    over the text in `steps` steps in the time: from ENSEMBLE_PASSES passes on it levels off before
    the time is up, and from ENSEMBLE_STEPS steps on, ENSEMBLE_MEMBERS models, each with its share of
    them, have the steps to learn, and predict better together."""
    return {"ensemble": ENSEMBLE_MEMBERS} if passes >= ENSEMBLE_PASSES and steps >= ENSEMBLE_STEPS else {}


def pace_line(passes: float, steps: float, max_time: float) -> str:
    """What `by_pace` chose for `passes` in `steps`, in a line worded with flags."""
    line = (f"one model would make {passes:.1f} passes over the text in {steps:,.0f} steps in --max-time {max_time:g} "
            "here")
    if by_pace(passes, steps):
        return (f"{line}: --ensemble {ENSEMBLE_MEMBERS}, the recipe's for {ENSEMBLE_PASSES:g} passes in "
                f"{ENSEMBLE_STEPS:,} steps or more")
    return f"{line}, fewer than {ENSEMBLE_PASSES:g} passes or {ENSEMBLE_STEPS:,} steps: one model"


# Where the pace is not measured (a GPU, torchrun's processes), said in a note worded with flags.
UNPACED = "one model: the recipe measures one model's pace, for --ensemble, only on a CPU in one process"

# every setting it may choose
NAMES = ("epochs", *sorted({name for _, _, tier in TIERS for name in tier} | {"dropout", "ensemble"}))


def choose(train_tokens: int, max_time: float | None, given: set[str] | frozenset[str], architecture: str,
           embedding_size: int | None = None, epochs: int | None = None) -> Recipe:
    """The settings not in `given` that a run on `train_tokens` tokens for `max_time` seconds (or
    None) takes, with `architecture` (a name of `charlm.models.registry`) and `embedding_size`
    (0: one-hot input, which has no embedding to drop); `epochs`: the user's, where given."""
    _, kind, tier = next(row for row in TIERS if train_tokens < row[0])
    chosen = {name: value for name, value in tier.items() if architecture in CELLS or name not in MODEL_PART}
    if embedding_size == 0:
        chosen.pop("embedding_dropout", None)
    if max_time is not None:
        chosen["epochs"] = UNTIL_TIME
    else:
        chosen["epochs"] = min(max(round(PASS_TOKENS / max(train_tokens, 1)), 1), MAX_EPOCHS)
    passes_rule = architecture in CELLS and "dropout" not in tier and "dropout" not in given
    timed = passes_rule and max_time is not None
    paced = (architecture in CELLS and train_tokens >= ENSEMBLE_TOKENS and max_time is not None
             and math.isfinite(max_time) and "ensemble" not in given)
    if passes_rule and not timed:
        chosen.update(by_passes(epochs if "epochs" in given and epochs is not None else chosen["epochs"]))
    chosen = {name: value for name, value in chosen.items() if name not in given}
    if not chosen and not timed and not paced:
        return Recipe({}, None)
    told = [f"{TRAIN[name].option} {value}" for name, value in chosen.items() if name != "epochs" or max_time is None]
    if max_time is not None and "epochs" in chosen:
        told.append(f"as many epochs as --max-time {max_time:g} allows")
    if timed:
        told.append(f"--dropout {FEW_PASSES_DROPOUT} if that is fewer than {FEW_PASSES} passes over the text")
    if paced:
        told.append(f"--ensemble {ENSEMBLE_MEMBERS} if one model would make {ENSEMBLE_PASSES:g} passes in "
                    f"{ENSEMBLE_STEPS:,} steps or more in that time")
    line = (f"{kind} ({train_tokens:,} training tokens): {', '.join(told)} "
            f"(a setting you give overrides its choice)")
    return Recipe(chosen, line, timed, paced)


def apply_passes(model: Any, meta: Any, passes: float) -> str | None:
    """Give a recurrent `model` in training, and its run's metadata `meta` (what its checkpoints
    record), the dropout `by_passes` says for `passes`; the note that says so, in the caller's
    terms, or None where nothing changes."""
    from charlm.settings.rows import in_callers_terms

    changes = by_passes(passes)
    if not changes or meta.model.get("dropout") == changes["dropout"]:
        return None
    model.set_dropout(changes["dropout"])
    meta.model.update(changes)
    return in_callers_terms(f"the time allows {passes:.1f} passes over the text, fewer than {FEW_PASSES}: "
                            f"--dropout {changes['dropout']}, the recipe's for them", TRAIN.values())
