"""Registry: the model architectures charlm can train, by task and name.

An entry says how to build its model and what it starts from; everything else reads it: the CLI's
choices (`--model` for text, `--model-type` for pairs), the run that builds a model from the
settings, the checkpoint loader that rebuilds it, and `info`. Adding an architecture is one module
and one `register(Architecture(...))` line:

    register(Architecture("lm", "mymodel", model="mypackage.mymodel:MyModel",
                          config="mypackage.mymodel:MyConfig", defaults={"iterator": "random"}))

What a model class must offer is the contract of `charlm.models.protocol` (`LanguageModelContract`,
`PairModelContract`): `Model(config)` with `config` a dataclass holding `vocab_size`; `.config`;
`batch_loss(batch, state) -> (loss_sum, count, state)` for the trainer; a language model's
`forward(ids, state) -> (logits, state)`, `step(ids, state)` and `init_state(batch_size)`, a pair
model's `encode(source)` and `decode_step(previous, state)`. The optional hooks (a fast `stepper`,
`parameter_groups`, `describe`, `fast_path_choices`, `state_class`) have their defaults in
`charlm.models.protocol.ModelDefaults`, which the model class inherits: `class MyModel(ModelDefaults, nn.Module)`.

A checkpoint names its architecture in its metadata ("architecture"). Language-model checkpoints
of the recurrent cells never did (format 1), and still do not, so that their bytes stay as they
were: for them the name is the model config's "cell".

Standard library only: model classes are imported when an entry is built, not when it is listed.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from charlm.errors import CharlmError
from charlm.presets import ARCHITECTURE_DEFAULTS, CELLS


@dataclass(frozen=True)
class Architecture:
    task: str  # "lm" or "translate"
    name: str  # what --model (text) or --model-type (pairs) says, and what checkpoints record
    model: str | type  # the nn.Module class, or "module:Class"
    config: str | type  # its config dataclass, or "module:Class"
    fixed: Mapping[str, Any] = field(default_factory=dict)  # config values the name sets (rnn: cell="rnn")
    defaults: Mapping[str, Any] = field(default_factory=dict)  # over the task's presets (`charlm.presets`)
    help: str = ""  # one line for --help
    named_in_metadata: bool = True  # False only for the recurrent language models (see the docstring)

    def classes(self) -> tuple[type, type]:
        """(model class, config class), imported now."""
        return _load(self.model), _load(self.config)


ARCHITECTURES: dict[tuple[str, str], Architecture] = {}


def register(architecture: Architecture) -> Architecture:
    """Add (or replace) an architecture; returns it."""
    ARCHITECTURES[architecture.task, architecture.name] = architecture
    return architecture


def names(task: str) -> tuple[str, ...]:
    return tuple(name for key_task, name in ARCHITECTURES if key_task == task)


def get(task: str, name: str) -> Architecture:
    try:
        return ARCHITECTURES[task, name]
    except KeyError:
        flag = "--model" if task == "lm" else "--model-type"
        raise CharlmError(f"unknown architecture {name!r}; {flag} takes one of {', '.join(names(task))}") from None


def name_of(meta: Mapping[str, Any]) -> str | None:
    """The architecture a checkpoint's metadata names (see the docstring), or None."""
    name = meta.get("architecture")
    if name is None and meta.get("task") == "lm":  # a recurrent model: its config's cell, checked by the config
        cell = meta["model"].get("cell") if isinstance(meta.get("model"), Mapping) else None
        name = cell if cell in CELLS else CELLS[0]
    return name if isinstance(name, str) else None


def metadata(architecture: Architecture) -> dict[str, str]:
    """What a checkpoint of `architecture` records of it."""
    return {"architecture": architecture.name} if architecture.named_in_metadata else {}


def _load(target: str | type) -> type:
    if not isinstance(target, str):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


for _cell in CELLS:
    register(Architecture("lm", _cell, "charlm.models.recurrent:LanguageModel", "charlm.models.recurrent:ModelConfig", fixed={"cell": _cell},
                          help=f"a recurrent language model of {_cell.upper()} cells", named_in_metadata=False))
register(Architecture("lm", "transformer", "charlm.models.transformer:Transformer", "charlm.models.transformer:TransformerConfig",
                      defaults=ARCHITECTURE_DEFAULTS["transformer"], help="a decoder-only causal transformer (nanoGPT's GPT)"))
for _cell in ("mingru", "minlstm"):
    register(Architecture("lm", _cell, "charlm.models.minrnn:MinRNN", "charlm.models.minrnn:MinRNNConfig", fixed={"cell": _cell},
                          defaults=ARCHITECTURE_DEFAULTS[_cell], help=f"{_cell}: a recurrent model that trains by a parallel scan"))
register(Architecture("translate", "seq2seq", "charlm.models.seq2seq:Seq2Seq", "charlm.models.seq2seq:Seq2SeqConfig",
                      help="an encoder-decoder, with Bahdanau attention unless --no-attention"))
register(Architecture("translate", "tagger", "charlm.models.seq2seq:Tagger", "charlm.models.seq2seq:TaggerConfig",
                      help="the lessons' tagger: one output per input character (lengths must match)"))
