"""Optimization: how a model is trained, as settings (`TrainConfig`), and the things those settings
make: the optimizer, the learning rate of each step, and the average of the weights that is
evaluated and kept (`WeightAverage`, with --ema).

Both are pure functions of the settings (and, for the rate, of the step and the steps planned), so
the trainer and the resume file's checks build the same optimizer, and a resumed run follows the
same curve. Nothing here knows about data, models' insides, files or the loop.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from charlm.presets import LM, RECORDED_WHEN_SET
from charlm.settings import TRAIN


@dataclass
class TrainConfig:
    """How a model is trained: the optimizer, its schedule, the batches, when to stop and to
    evaluate. Defaults are the language-model task's (`charlm.presets`)."""

    optimizer: str = LM["optimizer"]
    lr: float = LM["lr"]
    # --optimizer muon: the rate of Muon's updates where the schedule peaks (it scales both alike); None: --lr
    muon_lr: float | None = field(default=LM["muon_lr"], metadata=RECORDED_WHEN_SET)
    lr_schedule: str = LM["lr_schedule"]  # over --epochs, --lr-decay-steps or what --max-time allows; --max-steps only stops
    min_lr_ratio: float = LM["min_lr_ratio"]  # the cosine ends at lr * this
    # steps rising linearly to --lr before the schedule starts (recorded when set: an RNN's bytes stay as they were)
    warmup_steps: int = field(default=LM["warmup_steps"], metadata=RECORDED_WHEN_SET)
    # the steps the schedule runs over (nanoGPT's lr_decay_iters), fixed; None: --epochs' (or --max-time's fit)
    lr_decay_steps: int | None = field(default=LM["lr_decay_steps"], metadata=RECORDED_WHEN_SET)
    weight_decay: float = LM["weight_decay"]
    clip: float = LM["clip"]  # max global gradient norm; 0 turns clipping off
    epochs: int = LM["epochs"]
    max_steps: int | None = LM["max_steps"]
    max_time: float | None = LM["max_time"]  # seconds
    batch_size: int = LM["batch_size"]
    seq_len: int = LM["seq_len"]
    iterator: str = LM["iterator"]
    val_fraction: float = LM["val_fraction"]
    eval_every: int | None = LM["eval_every"]  # steps; None evaluates once per epoch
    seed: int = LM["seed"]
    device: str = LM["device"]
    precision: str = LM["precision"]  # auto: bf16 on CUDA with it, or where measured faster on a CPU
    keep: str = LM["keep"]  # the model checkpoint: the best by validation loss, or the last evaluated
    # evaluate (and keep) a moving average of the weights of this decay; 0: off
    ema: float = field(default=LM["ema"], metadata=RECORDED_WHEN_SET)
    # stop after this many evaluations without a better held-out loss; None: off
    early_stop: int | None = field(default=LM["early_stop"], metadata=RECORDED_WHEN_SET)

    def __post_init__(self) -> None:
        for item in fields(self):  # each by its row of `charlm.settings.TRAIN`; an error names the flag
            TRAIN[item.name].check(getattr(self, item.name))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of `config` over the model's parameters, or over the groups a model that has
    its own view of weight decay offers (`model.parameter_groups(weight_decay)`: the transformer
    decays its matrices only); every parameter is decayed by --weight-decay otherwise."""
    groups = model.parameter_groups(config.weight_decay)
    if config.optimizer == "muon":
        return MuonAdamW(model, groups, config.lr, config.weight_decay, config.muon_lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, weight_decay=config.weight_decay)
    optimizer_class = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return optimizer_class(groups, lr=config.lr, weight_decay=config.weight_decay)


class MuonAdamW(torch.optim.Optimizer):
    """--optimizer muon: torch's Muon for the model's hidden matrices (`model.hidden_matrices()`:
    the recurrent and input weights, attention and MLP matrices), AdamW for the rest (embeddings,
    the head, biases and gains), as one optimizer: one `param_groups` list (a group Muon steps has
    "muon": True) for the schedule to set each group's rate, and one `state` for the resume file.
    Muon's update is scaled to AdamW's size ("match_rms_adamw", Moonshot's), so both would take the
    AdamW learning rate and weight decay; given a rate of its own (`muon_lr`: --muon-lr, or by
    default the model's, measured), its groups hold "lr_scale", muon_lr / lr, which the
    schedule's rate is multiplied by (`set_rate`). Each group keeps the weight decay the model gave it."""

    def __init__(self, model: nn.Module, groups: Any, lr: float, weight_decay: float,
                 muon_lr: float | None = None) -> None:
        hidden = {id(parameter) for parameter in model.hidden_matrices()}
        groups = list(groups)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        split = {True: [], False: []}
        for group in groups:
            for is_hidden in (True, False):
                kept = [parameter for parameter in group["params"] if (id(parameter) in hidden) is is_hidden]
                if kept:
                    split[is_hidden].append({**group, "params": kept, "muon": is_hidden})
        if muon_lr is not None:
            split[True] = [{**group, "lr_scale": muon_lr / lr} for group in split[True]]
        self.muon = torch.optim.Muon(split[True], lr=muon_lr or lr, weight_decay=weight_decay,
                                     adjust_lr_fn="match_rms_adamw") \
            if split[True] else None
        self.adamw = torch.optim.AdamW(split[False], lr=lr, weight_decay=weight_decay) if split[False] else None
        inner = [optimizer for optimizer in (self.muon, self.adamw) if optimizer is not None]
        super().__init__([group for optimizer in inner for group in optimizer.param_groups], {})
        self._share()

    def _share(self) -> None:
        """Point the two optimizers at this one's groups (the same dicts) and state."""
        muon = [group for group in self.param_groups if group["muon"]]
        for optimizer, groups in ((self.muon, muon), (self.adamw, [g for g in self.param_groups if not g["muon"]])):
            if optimizer is not None:
                optimizer.param_groups, optimizer.state = groups, self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # new group dicts and state: share them again
        self._share()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None if closure is None else closure()
        for optimizer in (self.muon, self.adamw):
            if optimizer is not None:
                optimizer.step()
        return loss


def set_rate(optimizer: torch.optim.Optimizer, rate: float) -> None:
    """Set each group's learning rate to the schedule's `rate`, times the group's "lr_scale" where
    it has one (Muon's, given --muon-lr)."""
    for group in optimizer.param_groups:
        group["lr"] = rate * group.get("lr_scale", 1.0)


def scheduled(optimizer: torch.optim.Optimizer) -> float:
    """The schedule's rate the optimizer was last set to (`set_rate`): --lr's curve."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("lr_scale", 1.0)


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of a run planned for `total_steps`:
    --warmup-steps rising linearly to --lr (nanoGPT's lr x (step + 1) / (warmup + 1)), then constant,
    or a cosine from --lr down to --lr x --min-lr-ratio at the last planned step. A pure function of
    the step, so a resumed run follows the same curve."""
    warmup = config.warmup_steps
    if step < warmup:
        return config.lr * (step + 1) / (warmup + 1)
    if config.lr_schedule == "constant" or total_steps - warmup <= 1:
        return config.lr
    progress = min((step - warmup) / (total_steps - 1 - warmup), 1.0)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class WeightAverage:
    """An exponential moving average of a model's parameters, updated after every optimizer step:
    avg <- avg + (1 - d) (w - avg), with the decay d warmed up as min(decay, (1 + n) / (10 + n))
    after n updates, so the first steps' weights do not linger in it. Evaluation and the model
    checkpoint see the average (`applied`); training goes on with the weights themselves.

    Its state (`tensors`, "ema.<parameter>" and "ema.updates") goes into the resume file."""

    PREFIX = "ema."

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay, self.updates = decay, 0
        self.names = [name for name, _ in model.named_parameters()]
        self.average = [parameter.detach().clone() for parameter in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.average, [parameter.detach() for parameter in model.parameters()], 1 - decay)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The model holds the average inside the block, and its own weights again after it."""
        parameters = [parameter.data for parameter in model.parameters()]
        own = [parameter.clone() for parameter in parameters]
        torch._foreach_copy_(parameters, self.average)
        try:
            yield
        finally:
            torch._foreach_copy_(parameters, own)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**{self.PREFIX + name: value for name, value in zip(self.names, self.average)},
                self.PREFIX + "updates": torch.tensor(self.updates, dtype=torch.int64)}

    def load(self, tensors: dict[str, torch.Tensor], model: nn.Module) -> None:
        """Take the state `tensors` hold (checked: every parameter, its shape, finite), or with
        none of it start again from `model`'s weights as they are now (a run resumed with --ema
        new: the weights it resumes, not those it was built with)."""
        found = {name[len(self.PREFIX):]: tensor for name, tensor in tensors.items() if name.startswith(self.PREFIX)}
        if not found:
            self.average, self.updates = [parameter.detach().clone() for parameter in model.parameters()], 0
            return
        updates = found.pop("updates", None)
        if set(found) != set(self.names) or updates is None or updates.numel() != 1 or int(updates) < 0:
            raise ValueError(f"the weight average holds {sorted(found)[:3]}..., not this model's parameters")
        for index, name in enumerate(self.names):
            tensor = found[name]
            if tensor.shape != self.average[index].shape or not torch.isfinite(tensor).all():
                raise ValueError(f"the weight average of {name} is of shape {tuple(tensor.shape)} or not finite")
            self.average[index] = tensor.to(self.average[index].device, self.average[index].dtype)
        self.updates = int(updates)
