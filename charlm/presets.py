"""Presets: every choice charlm offers and the default values it starts from, in one place.

The settings table (`charlm.settings`, from which the CLI's flags and the API's keywords are made)
takes its choices and these defaults from here, and so do the config dataclasses (`ModelConfig`,
`TrainConfig`, `DataConfig`, the pair models' configs), so a default is written once: what differs
by task in `PRESETS`, what both tasks start from in `COMMON`, what an architecture changes of its
task's in `ARCHITECTURE_DEFAULTS` (its `defaults` in `charlm.models.registry`); the caller has the last word.

Standard library only; it knows nothing about what the settings do.
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from typing import Any

CHECKPOINT_DIR = "checkpoints"  # where a run's checkpoint goes, and where commands look for the newest

# The choices, by setting.
TASKS = ("lm", "translate")
CELLS = ("rnn", "gru", "lstm")
TOKEN_KINDS = ("char", "word")
PREPROCESS_MODES = ("none", "d2l")
ITERATORS = ("sequential", "random")
OPTIMIZERS = ("sgd", "adam", "adamw", "muon")
SCHEDULES = ("constant", "cosine")
KEEPS = ("best", "last")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")
UNKNOWN_POLICIES = ("error", "skip", "unk")

# The settings that differ between the tasks: a language model of a long text, or a model of
# short pairs. `threads` None leaves torch's own thread count.
PRESETS: dict[str, dict[str, Any]] = {
    "lm": {"cell": "lstm", "embedding_size": 64, "hidden_size": 512, "num_layers": 2, "dropout": 0.3,
           "weight_drop": 0.0, "locked_dropout": False, "embedding_dropout": 0.0,  # the regularisers, off
           "lr": 3e-3, "lr_schedule": "cosine", "epochs": 10, "keep": "best", "threads": None},
    "translate": {"cell": "gru", "embedding_size": 32, "hidden_size": 128, "num_layers": 1, "dropout": 0.0,
                  "lr": 5e-3, "lr_schedule": "constant", "epochs": 30, "keep": "last", "threads": 1,
                  "model_type": "seq2seq"},  # the architecture; for text the "cell" (--model) names it
}
# The settings both tasks share.
COMMON: dict[str, Any] = {
    "from_scratch": False, "tokens": "char", "preprocess": "none", "encoding": "utf-8", "min_freq": 1,
    "max_vocab": None, "seq_len": 35, "batch_size": 32, "iterator": "sequential", "optimizer": "adamw",
    "min_lr_ratio": 0.1, "warmup_steps": 0, "lr_decay_steps": None, "weight_decay": 0.0, "clip": 1.0, "max_steps": None, "max_time": None,
    "val_fraction": 0.1, "eval_every": None, "seed": 0, "device": "auto", "precision": "auto",
    "early_stop": None,  # stop after this many evaluations without a better held-out loss; None: off
    "ema": 0.0,  # evaluate and keep an exponential moving average of the weights (this decay); 0: the weights
    # --optimizer muon: the hidden matrices' rate at the schedule's peak (--lr is the rest's, AdamW's). The LSTM's,
    # measured at 60 s on The Time Machine: 1.520 at 2e-2, 1.631 at 3e-2 (AdamW at 3e-3: 1.522; README, "Muon ...")
    "muon_lr": 2e-2,
}
LM = {**COMMON, **PRESETS["lm"]}
PAIRS = {**COMMON, **PRESETS["translate"]}

# What an architecture changes of its task's defaults (`charlm.models.registry` entries refer to these).
# The transformer's: random windows (it carries no state between batches), AdamW with weight
# decay on its matrices (the model's `parameter_groups`), a short warm-up, then the cosine. Its
# sizes are nanoGPT's CPU recipe, which measured best of those tried on 2 shared cores at equal
# time (batch 12 over 32 and 64, context 64 over 128, dropout 0 over 0.1, also over 10 epochs of
# the Time Machine, where it does not over-fit): see the README's transformer section.
ARCHITECTURE_DEFAULTS: dict[str, dict[str, Any]] = {
    "transformer": {"embedding_size": 128, "num_layers": 4, "num_heads": 4, "seq_len": 64, "dropout": 0.0,
                    "batch_size": 12, "iterator": "random", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.1,
                    "warmup_steps": 100, "lr_schedule": "cosine",
                    "muon_lr": 1e-2},  # at 60 s: 1.645 / 1.735 on The Time Machine / tiny-shakespeare; 5e-3 1.634 / 1.792
}
# minGRU's and minLSTM's (`charlm.models.minrnn`): the size of the probe (3 layers of 192,
# context 128), sequential batches (they carry their state like the RNNs) and the transformer's
# optimizer settings without its weight decay. Not yet measured against other choices.
ARCHITECTURE_DEFAULTS["mingru"] = ARCHITECTURE_DEFAULTS["minlstm"] = {
    "embedding_size": 192, "hidden_size": 192, "num_layers": 3, "dropout": 0.0, "seq_len": 128, "batch_size": 32,
    "iterator": "sequential", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 100,
    "lr_schedule": "cosine", "muon_lr": 1e-2}  # Muon's: the transformer's


# The recipe (`charlm.training.recipe`): where the user does not set them, a text model's settings
# follow its number of training tokens, by tier: (fewer training tokens than this, what the text
# is called, the settings chosen for it, where they differ from the presets'). The moderate tier is the presets' own, measured on The Time Machine; the small one holds a
# model a quarter of the size, regularised for the many passes a small text gets, in smaller
# batches (more steps per pass) and stopping once the held-out loss has stopped improving.
TIERS: tuple[tuple[float, str, dict[str, Any]], ...] = (
    (100_000, "a small text", {"hidden_size": 256, "dropout": 0.5, "weight_drop": 0.3, "embedding_dropout": 0.1,
                               "batch_size": 16, "early_stop": 5}),
    (500_000, "a text of moderate size", {}),
    (math.inf, "a large text", {}),  # one pass or two in the time a run has: --dropout by FEW_PASSES
)
# The moderate and large texts' recurrent models take --dropout FEW_PASSES_DROPOUT in a run of fewer than
# FEW_PASSES passes over the text (a --max-time run once its plan, a tenth in, says so): little to over-fit, and dropout
# only slows the learning; the presets' (0.3) with more. Measured on the 2-core AMD EPYC, held-out loss:
# The Time Machine in 150 s, ~5 passes beside a busy core 1.420 against 1.471 and 9 passes quiet 1.435
# against 1.404; tiny-shakespeare in 900 s, 8 passes, 1.4351 against 1.4341 (README, "The recipe").
FEW_PASSES = 7
FEW_PASSES_DROPOUT = 0.1
# A recurrent model's --max-time run trains ENSEMBLE_MEMBERS models (--ensemble) where one model, at the pace its
# steps take before the run (`charlm.training.pace`), would make ENSEMBLE_PASSES passes over the text in
# ENSEMBLE_STEPS steps or more: by then one levels off, and the mixture of two, each with half the steps, is
# better; with fewer passes two half-trained models lose to one, and with fewer steps neither member has learnt
# enough. Measured on the 2-core AMD EPYC, held-out loss of one model against two in the same time (README,
# "Ensembles"): tiny-shakespeare in 300 s (2.9 passes) 1.4376 against 1.4725, 600 s (5.9) 1.4211 against 1.4088,
# 900 s (8.3) 1.4351 against 1.3894; The Time Machine (d2l) in 150 s (1,250 steps) 1.404 against 1.401, 300 s
# 1.399 against 1.381.
# A text under ENSEMBLE_TOKENS training tokens (the small tier's, with its small regularised model and early
# stopping) keeps one model: there two were as often worse as better, in the same 60 s 32.4 against 34.8 on 5 KB
# of notes, and 14.9 against 12.2 on 50 KB, which one model was still learning when the time was up (perplexity).
ENSEMBLE_TOKENS = TIERS[0][0]
ENSEMBLE_PASSES = 5.0
ENSEMBLE_STEPS = 1_500
ENSEMBLE_MEMBERS = 2
MODEL_PART = ("hidden_size", "num_layers", "dropout", "weight_drop", "embedding_dropout", "batch_size")
PASS_TOKENS = 1_600_000  # without --max-time, the epochs are about this many training tokens (10 of The Time Machine)
MAX_EPOCHS = 300
UNTIL_TIME = 1_000_000  # the epochs of a --max-time run: as many as the time allows


def task_defaults(task: str) -> dict[str, Any]:
    """Every default of `task`."""
    return dict(LM if task == "lm" else PAIRS)


# A config field that a checkpoint records only when it differs from its default: fields added after
# checkpoints were written, so that a run without them writes the bytes it did before they existed
# and resumes a run started before them. The loader fills a field left out with its default.
RECORDED_WHEN_SET = {"recorded": "when set"}


def record(config: Any) -> dict[str, Any]:
    """What a checkpoint records of a config (a model's, the training settings): `asdict(config)` but the fields marked
    RECORDED_WHEN_SET that hold their default."""
    record = asdict(config)
    for item in fields(config):
        if item.metadata.get("recorded") == "when set" and record[item.name] == item.default:
            del record[item.name]
    return record
