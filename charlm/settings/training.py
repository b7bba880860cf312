"""Training's settings: `charlm train`'s flags and `charlm.train`'s keywords, a row each, with those
that `stats`, `eval` and the other commands share. Standard library only.
"""

from __future__ import annotations

import os

from charlm import presets
from charlm.models import registry
from charlm.settings.rows import Setting, table

# `charlm train`'s flags and `charlm.train`'s keywords, in --help's order, with those that
# `stats`, `eval` and the other commands share. A default that differs by task or architecture is
# `charlm.presets`' (the row's default is then None, "the task's"), and so is a value both tasks
# start from that a config dataclass also reads (`presets.COMMON`); the help shows them from there.

MAX_THREADS = 1024  # torch takes up to 2**31 - 1, and would start them all on a first parallel op
MOST_MEMBERS = 64  # --ensemble: more members than this is a typo, not a model (each is a whole model)


# What the recipe may choose for a text (`charlm.presets.TIERS`): the help says so.
_RECIPE = {"epochs", *(name for _, _, tier in presets.TIERS for name in tier)}


def _text(name: str, value: object) -> str:
    """A text's default as the help says it: the value, or "the recipe's by the text's size"."""
    return f"{value} or the recipe's by the text's size" if name in _RECIPE else str(value)


def _per_task(name: str) -> str:
    """The defaults of the two tasks, as the help says them: "[default: 512 for text, 128 for pairs]"."""
    lm, pairs = presets.PRESETS["lm"][name], presets.PRESETS["translate"][name]
    shown = "torch's" if lm is None else _text(name, lm)
    return f"[default: {shown} for text, {pairs} for pairs]"


def _text_default(name: str) -> str:
    return f"[default: {_text(name, presets.PRESETS['lm'][name])}]"


def _architecture_defaults(architecture: str) -> str:
    """An architecture's defaults where they differ from text's, as flags: "--seq-len 64, ..."."""
    changed = {name: value for name, value in presets.ARCHITECTURE_DEFAULTS[architecture].items()
               if value != presets.LM.get(name)}
    return ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in changed.items())


def _model_names() -> tuple[str, ...]:
    """What --model takes: any language-model architecture registered now (text), or a cell (pairs)."""
    return tuple(dict.fromkeys((*registry.names("lm"), *presets.CELLS)))


_COMMON, _TRANSFORMER = presets.COMMON, presets.ARCHITECTURE_DEFAULTS["transformer"]

TRAIN = table(
    Setting("task", str, "auto", "lm: a language model of the text; translate: a model of source<TAB>target pairs; "
            "auto: translate when most lines hold a tab.", ("train",), choices=("auto", *presets.TASKS)),
    Setting("model_type", str, None, "Pairs: an encoder-decoder, or the lessons' tagger for pairs of equal lengths "
            f"[default: {presets.PAIRS['model_type']}].", ("train",), choices=lambda: registry.names("translate"),
            only="translate"),
    Setting("attention", bool, None, "Pairs: Bahdanau attention in the seq2seq decoder [default: on].", ("train",),
            switch=True, only="translate"),
    Setting("skip_bad_lines", bool, False, "Pairs: leave out malformed lines instead of stopping.", ("train", "eval"),
            only="translate"),
    Setting("cell", str, None, "Text: the recurrent cell, a causal transformer or a minGRU or minLSTM (trained by a "
            f"parallel scan), which have their own defaults: transformer {_architecture_defaults('transformer')}; "
            f"mingru and minlstm {_architecture_defaults('mingru')}. Pairs: the cell. {_per_task('cell')}",
            ("train",), choices=_model_names,
            flag="--model", keyword="model", from_parent=True),
    Setting("from_scratch", bool, _COMMON["from_scratch"], "Use the from-scratch cells (explicit equations) instead of "
            "torch's.", ("train",), model_field=True, from_parent=True),
    Setting("tokens", str, _COMMON["tokens"], "Text: tokenize into characters or whitespace-separated words.",
            ("train", "stats"), choices=presets.TOKEN_KINDS, only="lm", from_parent=True),
    Setting("preprocess", str, _COMMON["preprocess"], "Text: none, the text as it is; d2l, letters only, lower case "
            "(the d2l book's).", ("train", "stats"), choices=presets.PREPROCESS_MODES, only="lm", from_parent=True),
    Setting("encoding", str, _COMMON["encoding"], "Text encoding of the input file.", ("train", "stats", "eval")),
    Setting("include", tuple, (), "Of a folder, read only the files this glob matches (by their path inside it or "
            "their name; repeatable). A file named on the command line is always read.", ("train", "stats", "eval"),
            metavar="GLOB", only="lm"),
    Setting("exclude", tuple, (), "Of a folder, leave out the files and folders this glob matches (repeatable).",
            ("train", "stats", "eval"), metavar="GLOB", only="lm"),
    Setting("min_freq", int, _COMMON["min_freq"], "Rarer tokens become <unk>.", ("train",), low=1, from_parent=True),
    Setting("max_vocab", int, _COMMON["max_vocab"], "Keep at most this many tokens (the rest become <unk>).",
            ("train",), low=1, from_parent=True),
    Setting("cache_dir", os.PathLike, None, "Keep the token ids here, so the next run on the same text starts at "
            "once [default: .charlm-cache/ beside the text].", ("train",), path="folder", only="lm"),
    Setting("no_cache", bool, False, "Neither read nor write the token cache.", ("train",), only="lm"),
    Setting("embedding_size", int, None, f"0 feeds one-hot vectors (not for seq2seq). {_per_task('embedding_size')}",
            ("train",), low=0, model_field=True, from_parent=True),
    Setting("hidden_size", int, None, _per_task("hidden_size"), ("train",), low=1, model_field=True,
            from_parent=True),
    Setting("num_layers", int, None, _per_task("num_layers"), ("train",), low=1, model_field=True, from_parent=True),
    Setting("num_heads", int, None, "Transformer: attention heads; they split --embedding-size, the model's width "
            f"[default: {_TRANSFORMER['num_heads']}].", ("train",), low=1, model_field=True, from_parent=True),
    Setting("ensemble", int, 1, "Text: train this many models of --model side by side, each from its own initial "
            "weights and learning on its own, and predict with the mean of their next-token distributions (what the "
            "evaluations score). On a small text the mean is better than any one of them, for as many times the "
            f"steps' time. Left out, a --max-time run of a recurrent --model on a text of "
            f"{presets.ENSEMBLE_TOKENS:,} training tokens or more takes the recipe's: "
            f"{presets.ENSEMBLE_MEMBERS} where one model would make {presets.ENSEMBLE_PASSES:g} passes over the text "
            f"in {presets.ENSEMBLE_STEPS:,} steps or more in the time, at the pace a few of its steps take here.",
            ("train",), low=1, high=MOST_MEMBERS, only="lm", from_parent=True, metavar="N"),
    Setting("dropout", float, None, _per_task("dropout"), ("train",), low=0, high=1, high_open=True, model_field=True),
    Setting("weight_drop", float, None, "Text: DropConnect on the recurrent weights W_hh, one mask per batch "
            f"(AWD-LSTM). {_text_default('weight_drop')}", ("train",), low=0, high=1, high_open=True, model_field=True),
    Setting("locked_dropout", bool, None, "Text: --dropout with one mask per sequence for every step (variational), "
            f"on the embedding, between the layers and before the head. {_text_default('locked_dropout')}",
            ("train",), switch=True, model_field=True),
    Setting("embedding_dropout", float, None, "Text: drop whole tokens' embeddings, one mask per batch. "
            f"{_text_default('embedding_dropout')}", ("train",), low=0, high=1, high_open=True, model_field=True),
    Setting("ema", float, _COMMON["ema"], "Evaluate and keep an exponential moving average of the weights with this "
            "decay (e.g. 0.999); 0 keeps the weights themselves.", ("train",), low=0, high=1, high_open=True,
            rule="a decay in [0, 1)"),
    Setting("seq_len", int, _COMMON["seq_len"], "Text: steps of backpropagation through time; for the transformer, "
            "its context.", ("train",), low=1, only="lm"),
    Setting("batch_size", int, _COMMON["batch_size"], "Rows per step, over all processes under torchrun (for a small text, the recipe's: "
            "see its line on stderr).", ("train",),
            low=1),
    Setting("iterator", str, _COMMON["iterator"], "Text: sequential carries the hidden state between batches; random "
            "samples independent windows.", ("train",), choices=presets.ITERATORS, only="lm"),
    Setting("optimizer", str, _COMMON["optimizer"], "muon: Muon's orthogonalised updates for the hidden "
            "matrices (at --muon-lr), AdamW for the embeddings, head, biases and gains (at --lr).", ("train",),
            choices=presets.OPTIMIZERS),
    Setting("lr", float, None, f"Learning rate. {_per_task('lr')}", ("train",), low=0, low_open=True, finite=True,
            rule="a positive number"),
    Setting("muon_lr", float, None, "With --optimizer muon: the learning rate of Muon's updates of the "
            "hidden matrices, which the schedule scales as it does --lr. [default: "
            f"{_COMMON['muon_lr']:g}; {_TRANSFORMER['muon_lr']:g} for the transformer and the min-RNNs]", ("train",), low=0,
            low_open=True, finite=True, rule="a positive number"),
    Setting("lr_schedule", str, None, "cosine: from --lr down to --lr x --min-lr-ratio over --epochs. "
            f"{_per_task('lr_schedule')}", ("train",), choices=presets.SCHEDULES),
    Setting("min_lr_ratio", float, _COMMON["min_lr_ratio"], "", ("train",), low=0, high=1),
    Setting("warmup_steps", int, _COMMON["warmup_steps"], "Steps rising linearly to --lr before the schedule (the "
            f"transformer's default: {_TRANSFORMER['warmup_steps']}).", ("train",), low=0, rule="0 or more"),
    Setting("lr_decay_steps", int, _COMMON["lr_decay_steps"], "The steps the schedule runs over, fixed (nanoGPT's "
            "lr_decay_iters); by default --epochs', or with --max-time the steps it allows. --max-steps only stops, "
            "so a stopped run resumes on its curve.", ("train",), low=1),
    # Finite, so that a bad value is refused at once: an infinite weight decay surfaces steps later as a NaN
    # loss blamed on --lr, and an infinite clip is no clip, which 0 says. --max-time inf stays: only compared
    # with the clock, it is a limit never reached.
    Setting("weight_decay", float, _COMMON["weight_decay"], "", ("train",), low=0, finite=True,
            rule="finite, 0 or more"),
    Setting("clip", float, _COMMON["clip"], "Clip the global gradient norm to this (0: off).", ("train",), low=0,
            finite=True, rule="0 (off) or a finite number"),
    Setting("epochs", int, None, _per_task("epochs"), ("train",), low=1),
    Setting("max_steps", int, _COMMON["max_steps"], "Stop after this many optimizer steps.", ("train",), low=1),
    Setting("early_stop", int, _COMMON["early_stop"], "Stop once the held-out loss has not improved for this many "
            "evaluations (the model kept is the best's): a small text over-fits long before its epochs end (for one, "
            "the recipe sets 5).",
            ("train",), low=1, metavar="EVALUATIONS"),
    Setting("max_time", float, _COMMON["max_time"], "Stop after this many seconds.", ("train",), low=0, low_open=True,
            rule="positive"),
    Setting("val_fraction", float, _COMMON["val_fraction"], "Held out for validation: the last part of a text (of "
            "several files, the last part of each of 20 equal stretches of their text); a seeded random part of the "
            "pairs.", ("train",), low=0, high=1, high_open=True),
    Setting("eval_every", int, _COMMON["eval_every"], "Evaluate every N steps [default: about 20 times a run].", ("train",),
            low=1),
    Setting("seed", int, _COMMON["seed"], "", ("train",)),
    Setting("device", str, _COMMON["device"], "Where to run: auto picks cuda, then mps, then cpu.",
            ("train", "eval", "generate", "translate", "serve"), choices=presets.DEVICES),
    Setting("threads", int, None, f"CPU threads for torch (small models are faster on one). {_per_task('threads')}",
            ("train",), low=1, high=MAX_THREADS),
    Setting("precision", str, _COMMON["precision"], "auto: bf16 autocast on a CUDA GPU that supports it, or on a CPU "
            "with bf16 matrix instructions where a step measures faster with the same loss (kept in the cache "
            "folder), else fp32.", ("train",), choices=presets.PRECISIONS),
    Setting("out", os.PathLike, None, "Checkpoint path, .safetensors added if it lacks it "
            "[default: checkpoints/<corpus stem>.safetensors].",
            ("train",), path="file"),
    Setting("keep", str, None, "The model to save at --out: the best by validation loss, or the last (pairs such as "
            f"antonyms cannot generalise, so their model must learn them all). {_per_task('keep')}", ("train",),
            choices=presets.KEEPS),
    Setting("resume", bool, False, "Continue the run saved at --out from where it stopped.", ("train",)),
    Setting("allow_changed_corpus", bool, False, "With --resume: go on although files of the corpus were added, "
            "removed or edited since the run started (its vocab must stay the same).", ("train",), only="lm"),
    Setting("init_from", os.PathLike, None, "Fine-tune: start from this language model's weights, architecture, "
            "vocab and text settings, with a fresh optimizer and schedule.", ("train",), metavar="CHECKPOINT",
            only="lm"),
    Setting("unknown", str, "error", "With --init-from: characters of the text that the model's vocab lacks stop "
            "with an error naming them, or become <unk>.", ("train",), choices=("error", "unk"), only="lm"),
    Setting("extend_vocab", bool, False, "With --init-from: add the characters the model's vocab lacks, as new rows "
            "of the embedding (columns of a one-hot input's weights) and of the output layer; the old ones stay as "
            "they are.", ("train",), only="lm"),
    Setting("held_out", bool, False, "Score only the part of FILE its run held out (the same split; FILE must be the "
            "run's own corpus: another is refused).", ("eval",)),
    Setting("overwrite", bool, False, "Replace a run already saved at --out.", ("train",)),
    Setting("quiet", bool, False, "No progress bar or evaluation lines.", ("train",)),
)

# `charlm stats`' own; it takes --tokens, --preprocess, --encoding, --include and --exclude above.
STATS = table(
    Setting("top", int, 10, "How many of the most frequent tokens.", ("stats",), low=0),
)
