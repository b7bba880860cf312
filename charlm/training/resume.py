"""Run state: where a training run is and what it has summed, and the resume file that holds it with
the weights, the optimizer, the random generators and the carried model state.

A resume file is a checkpoint (`charlm.checkpoints.files`) of kind "resume" whose tensors are named

    model.<parameter>       the weights, as in every checkpoint
    optim.<i>.<key>         the optimizer's tensors for parameter i (its plain values, such as a
                            step count kept as a number, are in the metadata: "optimizer_scalars")
    rng.<generator>         this process's random states (rng.cpu, rng.cuda.<d>), and
    rng.rank<r>.<generator> those of the other processes of a torchrun
    carry.<name>            the state carried into the next batch, as the state's `tensors()` names
                            it (for the recurrent cells 0: h, 1: c), every process's rows joined
    ema.<parameter>         with --ema, the average of the weights (`recipe.WeightAverage`)
    train.running_loss      the loss summed on the device since the last host sync

and whose metadata's "resume" is a `RunState` plus "stop_evaluated" and "optimizer_scalars".

Reading one back checks it whole against the run that resumes it before a step is taken: the same
settings, a position inside the run, optimizer state this optimizer keeps in the right shapes, a
carried state shaped as the model's zeros, every number finite. What is wrong is a `CheckpointError`
("damaged resume state") in one line. This module knows nothing about the loop or the CLI.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from charlm.checkpoints import files as checkpoint

from charlm.checkpoints import loading
from charlm.text.corpus import corpus_changes
from charlm.errors import CharlmError, CheckpointError
from charlm.checkpoints.metadata import Metadata, read, write
from charlm.models.protocol import ModelDefaults
from charlm.training.optimization import TrainConfig, WeightAverage, make_optimizer

# The training flags that fix the order of the batches: a resume must keep them.
SAME_RUN_FLAGS = ("batch_size", "seq_len", "iterator", "seed", "optimizer", "val_fraction")


@dataclass
class RunState:
    """The position and history of a run: everything a resume restores besides the weights, the
    optimizer and the random states. `best_val_loss` is the loss the best model was kept by (the
    training loss when nothing is held out). The loss sums cover the steps since the last
    evaluation, flushed from the device every few steps (`running_count` steps are still there)."""

    step: int = 0
    epoch: int = 0
    batch_index: int = 0
    tokens: int = 0
    best_val_loss: float | None = None
    best_step: int = 0
    elapsed: float = 0.0
    loss_sum: float = 0.0
    loss_count: int = 0
    running_count: int = 0
    planned_steps: int | None = None  # the steps the LR schedule runs over, when --max-time fitted it

    @classmethod
    def from_metadata(cls, info: Any) -> RunState:
        """The state a resume file's metadata holds, checked to be numbers of the right kinds."""
        counts = ("step", "epoch", "batch_index", "tokens", "best_step", "loss_count", "running_count")
        values = {key: info.get(key, 0) if key == "running_count" else info[key] for key in counts}
        values.update({key: info[key] for key in ("elapsed", "loss_sum", "best_val_loss")})
        bad = [key for key in counts if type(values[key]) is not int or values[key] < 0]
        # JSON holds NaN, Infinity and 10**400 too: compared, never converted, so that none overflows.
        finite = lambda value: type(value) in (int, float) and -math.inf < value < math.inf  # noqa: E731
        bad += [key for key in ("elapsed", "loss_sum", "best_val_loss")
                if not (finite(values[key]) or (key == "best_val_loss" and values[key] is None))]
        values["planned_steps"] = info.get("planned_steps")
        if values["planned_steps"] is not None and (type(values["planned_steps"]) is not int
                                                    or values["planned_steps"] < 1):
            bad.append("planned_steps")
        if bad:
            raise ValueError(f"bad {', '.join(bad)}")
        return cls(**values)


@dataclass
class Resumed:
    """What `read_resume` gives back, checked: the state to go on from."""

    run_state: RunState
    weights: dict[str, torch.Tensor]
    optimizer_state: dict[int, dict[str, Any]]
    rng_states: dict[str, torch.Tensor]  # this process's, as `runtime.set_rng_states` takes them
    carried: Any  # the model's state class, or None
    running_loss: torch.Tensor
    stop_evaluated: bool
    average: dict[str, torch.Tensor]  # the "ema." tensors, checked by `recipe.WeightAverage.load`


def write_resume(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, rngs_by_rank: Sequence[dict],
    carried: Any, running_loss: torch.Tensor, run_state: RunState, meta: Metadata, stop_evaluated: bool,
    average: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the resume file of a run (see the module docstring). `rngs_by_rank` are every
    process's random states in rank order, `carried` the joined state of every process's rows."""
    tensors = loading.model_tensors(model)
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in optimizer.state_dict()["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    for rank, rngs in enumerate(rngs_by_rank):
        tensors.update({name.replace("rng.", f"rng.rank{rank}." if rank else "rng.", 1): state
                        for name, state in rngs.items()})
    if carried is not None:
        tensors.update({f"carry.{name}": tensor for name, tensor in carried.tensors().items()})
    tensors["train.running_loss"] = running_loss
    tensors.update(average or {})
    resume = asdict(run_state)
    if resume["planned_steps"] is None:  # no plan without --max-time: the file is as it always was
        del resume["planned_steps"]
    resume.update(stop_evaluated=stop_evaluated, optimizer_scalars=scalars)
    checkpoint.save(path, tensors, write(replace(meta, resume=resume)))


def read_resume(
    path: str, meta: Metadata, train_config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
    batches_per_epoch: int, carries_state: bool, rank: int, device: torch.device,
) -> Resumed:
    """Read and check the resume file of the run described by `meta` and `train_config` (see the
    module docstring). `rank` is this process's place in a torchrun."""
    if not os.path.exists(path):
        raise CharlmError(f"nothing to resume: {path} does not exist; train without --resume first")
    tensors, saved = checkpoint.load(path, task=meta.task, kind="resume")
    _check_same_run(path, saved, meta, train_config)
    weights = loading.build_model(tensors, saved, path).state_dict()
    try:
        info = saved["resume"]
        run_state = RunState.from_metadata(info)
        if run_state.batch_index > batches_per_epoch:
            raise ValueError(f"batch_index {run_state.batch_index} is past the end of an epoch "
                             f"({batches_per_epoch} batches)")
        layouts = optimizer_layout(train_config)
        optimizer_state = _optimizer_state(tensors, info["optimizer_scalars"], run_state.step, optimizer, layouts,
                                           train_config.optimizer, device)
        carried = _carried_state(tensors, model, train_config.batch_size, device) if carries_state else None
        prefix = f"rng.rank{rank}." if rank else "rng."
        rngs = {name.replace(prefix, "rng.", 1): tensor for name, tensor in tensors.items()
                if name.startswith(prefix) and (rank or not name.startswith("rng.rank"))}
        running = tensors.get("train.running_loss", torch.zeros(())).to(device, torch.float32).reshape(())
        if not torch.isfinite(running):
            raise ValueError("train.running_loss is NaN or infinite")
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: damaged resume state ({error}); train without --resume") from None
    average = {name: tensor for name, tensor in tensors.items() if name.startswith(WeightAverage.PREFIX)}
    return Resumed(run_state, weights, optimizer_state, rngs, carried, running, info.get("stop_evaluated") is True,
                   average)


def _check_same_run(path: str, saved: dict[str, Any], meta: Metadata, train_config: TrainConfig) -> None:
    """A resume must use the same data, model and batches: everything in the run's metadata but
    the corpus's name and files (`check_corpus` compares those), and the training flags that fix
    the order of the batches."""
    flags = read(saved).train or {}
    changed = [key for key in SAME_RUN_FLAGS if key in flags and flags[key] != getattr(train_config, key)]
    run = write(meta)  # the run's fields as its files hold them, compared with the resume file's as read

    def shown(config: dict[str, Any], name: str) -> Any:
        return config[name] if name in config else "not set"

    for key in run:
        before, now = saved.get(key), run[key]
        if key in ("corpus", "corpus_files", "corpus_sha256") or before == now:
            continue
        if key == "model" and isinstance(before, dict):  # the model's config: name what differs in it
            changed += [f"{name} {shown(before, name)} then, {shown(now, name)} now"
                        for name in sorted(before.keys() | now.keys()) if before.get(name) != now.get(name)]
        else:
            changed.append(key)
    if changed:
        raise CharlmError(f"{path} was trained with different settings ({', '.join(changed)}); "
                          "resume with the same flags and corpus")


def recorded_corpus_file(checkpoint_path: str | os.PathLike) -> dict[str, Any] | None:
    """What the resume file beside a one-file run's checkpoint records of its file (name, size,
    SHA-256), or None where there is no such record."""
    from charlm.training.run_files import run_paths

    path = run_paths(checkpoint_path)["resume"]
    try:
        kept = read(checkpoint.read_metadata(path)).corpus_file if os.path.isfile(path) else None
    except CharlmError:
        return None
    return kept if isinstance(kept, dict) else None


def check_corpus(
    path: str | os.PathLike, meta: Metadata | dict[str, Any], allow_changed: bool = False
) -> str | None:
    """Compare the corpus a run resumes on (what `meta` records, see `charlm.training.setup.corpus_record`
    and `single_file_record`) with the one the resume file at `path` was trained on. A change is an
    error saying which files were added, removed or edited, or with `allow_changed` a note,
    returned. None when nothing changed or there is nothing to compare: no resume file
    (`read_resume` says so), or a one-file resume file written before charlm recorded its file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return None
    try:
        saved = read(checkpoint.read_metadata(path))
    except CharlmError:
        return None  # `read_resume` says what is wrong with it
    meta = read(meta)
    before, after = saved.corpus_files, meta.corpus_files
    if saved.damaged("corpus_files") or before is not None and not all(
            isinstance(file, dict) and isinstance(file.get("name"), str) for file in before):
        raise CheckpointError(f"{path}: damaged corpus record (corpus_files) in charlm metadata; train without --resume")
    if before is None and after is None:  # one file then and now
        was, now = saved.corpus_file, meta.corpus_file
        if not (isinstance(was, dict) and isinstance(now, dict)):
            return None
        changes = [] if (was.get("size"), was.get("sha256")) == (now["size"], now["sha256"]) else \
            [f"{now['name']} edited" if was.get("name") == now["name"] else f"it was trained on {was.get('name')}"]
    elif before is None:
        changes = [f"it was trained on one file, {saved.get('corpus')}, and now reads {len(after):,} files"]  # as read
    elif after is None:
        changes = [f"it was trained on {len(before):,} files, and now reads one, {meta.corpus}"]
    else:
        changes = corpus_changes(before, after)
    if not changes:
        return None
    said = f"the corpus changed since the run at {path} started: {'; '.join(changes)}"
    if not allow_changed:
        raise CharlmError(f"{said}; resume on the same files, or pass --allow-changed-corpus to go on with these")
    return said


def optimizer_layout(train_config: TrainConfig) -> dict[bool, dict[str, Any]]:
    """What the optimizer of `train_config` keeps for each parameter, learnt from one stepped on a
    probe, for the parameters Muon steps (True: --optimizer muon's hidden matrices) and the others
    (False): {key: "parameter" (a tensor of the parameter's shape), "scalar" (a 0-dim tensor, such
    as the step count) or the type of a plain value}."""
    probe = _Probe()
    # The rates are no part of the layout, and the user's (say --lr 1e38) could overflow the probe's step.
    optimizer = make_optimizer(probe, replace(train_config, lr=1.0, weight_decay=0.0))
    for parameter in probe.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    return {group.get("muon", False): {key: ("parameter" if value.shape == parameter.shape else "scalar")
                                       if torch.is_tensor(value) else type(value)
                                       for key, value in optimizer.state[parameter].items()}
            for group in optimizer.param_groups for parameter in group["params"]}


class _Probe(ModelDefaults, nn.Module):
    """A model of a matrix and a vector, for `optimizer_layout` to step an optimizer of the run's settings on."""

    def __init__(self) -> None:
        super().__init__()
        self.matrix, self.vector = nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(2))


def _optimizer_state(
    tensors: dict[str, torch.Tensor], scalars: Any, step: int, optimizer: torch.optim.Optimizer,
    layouts: dict[bool, dict[str, Any]], optimizer_name: str, device: torch.device,
) -> dict[int, dict[str, Any]]:
    """The optimizer state of a resume file ("optim.<index>.<key>" tensors and the JSON `scalars`),
    checked against what this optimizer keeps for each parameter: every key, of the right shape,
    finite, and no more steps than the run has taken. torch itself checks none of this until the
    first step, and then a wrong shape is a traceback and a NaN a diverged loss."""
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    kinds = [group.get("muon", False) for group in optimizer.param_groups for _ in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = tensor.to(device) if key != "step" else tensor
    for index, values in scalars.items():
        state.setdefault(int(index), {}).update(values)
    for index, values in state.items():  # a parameter with no state starts afresh, as at step 0
        if not 0 <= index < len(parameters):
            raise ValueError(f"optimizer state for parameter {index} of {len(parameters)}")
        layout = layouts[kinds[index]]
        missing = sorted(layout.keys() - values.keys())
        if missing:
            raise ValueError(f"optimizer state of parameter {index} lacks {', '.join(missing)}, which "
                             f"--optimizer {optimizer_name} keeps")
        for key, kind in layout.items():
            problem = _state_problem(key, values[key], kind, parameters[index].shape, step)
            if problem:
                raise ValueError(f"optimizer state {key} of parameter {index} {problem}")
        # What this optimizer does not keep is left out: another torch may have kept more (SGD
        # once stored momentum_buffer None), and torch would pass it through unchecked.
        state[index] = {key: values[key] for key in layout}
    return state


def _state_problem(key: str, value: Any, kind: Any, shape: torch.Size, step: int) -> str | None:
    """What is wrong with `value` as the optimizer state `key` of a parameter of `shape` (laid out
    as `optimizer_layout` says) after `step` steps, or None."""
    if not isinstance(kind, str):
        return None if type(value) is kind else f"is {value!r:.40}, not a {kind.__name__}"
    wanted = torch.Size() if kind == "scalar" else shape
    if not torch.is_tensor(value):
        return f"is a plain {type(value).__name__}, not a tensor of shape {tuple(wanted)}"
    if value.shape != wanted:
        return f"has shape {tuple(value.shape)}, not {tuple(wanted)}"
    if not torch.isfinite(value).all():
        return "is NaN or infinite"
    if key == "step" and not (float(value).is_integer() and 0 <= float(value) <= step):
        return f"counts {float(value):g} steps, where the run has taken {step}"
    return None


def _carried_state(tensors: dict[str, torch.Tensor], model: nn.Module, batch_size: int, device: torch.device) -> Any:
    """The state a resume file carries into the next batch ("carry.<name>"), checked against the
    zero state the model starts a batch of this run from: the same tensors and shapes, finite."""
    carried = {name[len("carry."):]: tensor for name, tensor in tensors.items() if name.startswith("carry.")}
    if not carried:
        return None
    expected = model.init_state(batch_size).tensors()
    if carried.keys() != expected.keys():
        raise ValueError(f"carried state tensors {sorted(carried)}, where this model carries {sorted(expected)}")
    for name, tensor in carried.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(f"carried state of shape {tuple(tensor.shape)}, where this model and --batch-size "
                             f"carry {tuple(expected[name].shape)}")
    if not all(torch.isfinite(tensor).all() for tensor in carried.values()):
        raise ValueError("the carried state is NaN or infinite")
    return model.state_class.from_tensors({name: tensor.to(device, expected[name].dtype)
                                           for name, tensor in carried.items()})

