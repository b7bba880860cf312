"""Settings -> a trained run: what `charlm train` and `charlm.train` share, so that a flag and a
keyword argument of the same name mean the same thing, with the same defaults and errors.

`launch` fills the settings a caller left out (the task's defaults, then the architecture's, under
those given), checks that they go together (which task reads a setting, what a model's config
takes: the rows of `charlm.settings.TRAIN` say) and trains. A setting is named as its row
(`cell` is `--model`), and errors name the flag (the Python API renames them). Showing the progress
and the final line is left to the caller; nothing here knows about click or notebooks.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charlm.models import registry
from charlm.errors import UsageError
from charlm.presets import CELLS, CHECKPOINT_DIR, LM, PAIRS, task_defaults
from charlm.settings import TRAIN, for_command

# Every setting of a run and its default, as `charlm train` has them: the rows of `charlm.settings.TRAIN`.
# None: the task's or the architecture's default, `charlm.presets`'.
DEFAULTS: dict[str, Any] = {row.name: row.default for row in for_command(TRAIN, "train")}
# What a model's config takes by field name (for pairs the cell is one too; for text "cell" names
# the architecture), and of those what a fine-tuned model (--init-from) may change: what leaves its
# weights as they are. What --init-from takes from its checkpoint is refused (`Setting.from_parent`).
MODEL_SETTINGS = tuple(row.name for row in TRAIN.values() if row.model_field)
REGULARISERS = tuple(row.name for row in TRAIN.values() if row.model_field and not row.from_parent)


def flag(name: str) -> str:
    """The `charlm train` flag of a setting: `--hidden-size` for hidden_size, `--model` for cell."""
    return TRAIN[name].option


def _flags(given: set[str], test: Callable[[Any], bool]) -> list[str]:
    """The flags of the settings `given` whose rows pass `test`, in --help's order."""
    return [row.option for row in TRAIN.values() if row.name in given and test(row)]


@dataclass
class Launched:
    """A finished run: where its checkpoint is, the trainer's summary, its settings, the run
    (`charlm.training.setup.LanguageModelRun` or `TranslationRun`: its held-out pairs), and whether this
    process showed it (not quiet, and the main one under torchrun)."""

    out: Path
    summary: dict[str, Any]
    train_config: Any
    run: Any
    shown: bool


def default_out(corpus: tuple[Path, ...]) -> Path:
    """checkpoints/<the first corpus path's stem>.safetensors."""
    return Path(CHECKPOINT_DIR) / f"{Path(os.path.abspath(corpus[0])).stem or 'corpus'}.safetensors"


def launch(corpus: tuple[Path, ...], options: dict[str, Any], given: set[str], say: Callable[[str], None]) -> Launched:
    """Train on `corpus` with `options` (every setting of `DEFAULTS`, by name; `given` names those the
    user set): fill in the defaults, check the settings, train, and return what came of it. The
    notes, and unless `quiet` the run's description, go to `say` as lines."""
    from charlm.runtime.device import cpu_threads
    from charlm.runtime.processes import distributed

    options = dict(options)
    out, resume, overwrite, quiet = (options.pop(name) for name in ("out", "resume", "overwrite", "quiet"))
    if "allow_changed_corpus" in given and not resume:
        raise UsageError("--allow-changed-corpus only applies with --resume")
    parent = _parent(options, given)
    task = _task_of(corpus, options["task"], options["encoding"], parent is not None)
    not_for = _flags(given, lambda row: row.only not in (None, task))
    if not_for:
        what = "pair corpora (--task translate)" if task == "lm" else "language models of text (--task lm)"
        raise UsageError(f"{', '.join(not_for)} only applies to {what}")
    architecture = parent.architecture if parent is not None else _architecture(task, options, given)
    # The task's defaults, then the architecture's; the caller's settings have the last word.
    defaults = {**task_defaults(task), **architecture.defaults}
    options.update({name: value for name, value in defaults.items() if name not in given})
    if "muon_lr" in given and options["optimizer"] != "muon":
        raise UsageError(f"--muon-lr only applies with --optimizer muon (this run's is {options['optimizer']})")
    options["cache_dir"] = _cache_dir(corpus[0], options["cache_dir"], options.pop("no_cache"))
    if options.pop("extend_vocab"):
        options["unknown"] = "extend"
    if parent is not None:  # the parent's model, with only what leaves its weights as they are changed
        options["model_settings"] = {name: options[name] for name in REGULARISERS if name in given}
        _check_fields(architecture, options["model_settings"], f"the model of {parent.path}")
    with distributed(options["device"]) as world, cpu_threads(options["threads"]):  # alone, or under torchrun
        return _train(task, architecture.name, corpus, out, resume, overwrite, quiet or not world.is_main, options,
                      world, say, parent, given)


def _cache_dir(text: Path, cache_dir: Path | None, no_cache: bool) -> str | None:
    from charlm.data.cache import default_cache_dir

    return None if no_cache else str(cache_dir or default_cache_dir(text))


def _parent(options: dict[str, Any], given: set[str]) -> Any:
    """The model --init-from names (`charlm.training.setup.Parent`), or None; the flags that only apply with
    it, or would change the model it gives, are a usage error."""
    if options["init_from"] is None:
        alone = [flag(name) for name in ("unknown", "extend_vocab") if name in given]
        if alone:
            raise UsageError(f"{', '.join(alone)} only {'applies' if len(alone) == 1 else 'apply'} with --init-from")
        return None
    changing = _flags(given, lambda row: row.from_parent)
    if changing:
        raise UsageError(f"{', '.join(changing)} would change the model --init-from starts from (its architecture, "
                         "vocab and text settings are the checkpoint's); drop "
                         f"{'it' if len(changing) == 1 else 'them'}")
    if "unknown" in given and "extend_vocab" in given:
        raise UsageError("--unknown and --extend-vocab are two ways with new characters; choose one")
    if "task" in given and options["task"] == "translate":
        raise UsageError("--init-from fine-tunes a language model; it does not take --task translate")
    from charlm.training.setup import load_parent

    return load_parent(options["init_from"])


def _architecture(task: str, options: dict[str, Any], given: set[str]) -> registry.Architecture:
    """The architecture the settings name: for text --model, for pairs --model-type (--model is then
    the cell). Model settings given that its config has no field for are a usage error."""
    if task == "lm":
        architecture = registry.get("lm", options["cell"] or LM["cell"])
        named, settings = f"--model {architecture.name}", MODEL_SETTINGS
    else:
        if options["cell"] is not None and options["cell"] not in CELLS:
            raise UsageError(f"--model {options['cell']} is for text; for pairs --model takes a cell: "
                             f"{', '.join(CELLS)}")
        architecture = registry.get("translate", options["model_type"] or PAIRS["model_type"])
        named, settings = f"--model-type {architecture.name}", ("cell", *MODEL_SETTINGS)
    _check_fields(architecture, [name for name in settings if name in given], named)
    return architecture


def _check_fields(architecture: registry.Architecture, names: Any, named: str) -> None:
    """Model settings (`names`) that `architecture`'s config has no field for are a usage error."""
    _, config_class = architecture.classes()
    fields = {field.name for field in dataclasses.fields(config_class)}
    foreign = [flag(name) for name in names if name not in fields]
    if foreign:
        raise UsageError(f"{', '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to {named}")


def _train(task: str, architecture: str, corpus: tuple[Path, ...], out: Path | None, resume: bool, overwrite: bool,
           quiet: bool, options: dict[str, Any], world: Any, say: Callable[[str], None],
           parent: Any = None, given: set[str] = frozenset()) -> Launched:
    from charlm.data.loading import DataConfig
    from charlm.text.pairs import skipped_message
    from charlm.training.optimization import TrainConfig
    from charlm.training.setup import language_model_run, translation_run
    from charlm.training.trainer import Trainer

    out = out or default_out(corpus)
    if resume and task == "lm" and parent is None:  # the run goes on as it began, with what the recipe chose then
        given = given | _as_recorded(out, options, given)
    train_config = TrainConfig(**{key: options[key] for key in TrainConfig.__dataclass_fields__})
    from charlm.training.run_files import check_creatable, run_paths

    if world.is_main:  # before reading the corpus, which can take minutes; the trainer checks again
        check_creatable(out)
    out = Path(run_paths(out)["model"])  # --out runs/x is runs/x.safetensors
    data_config = DataConfig(**{key: options[key] for key in DataConfig.__dataclass_fields__ if key in options})
    pilot = None
    if options["threads"] is None and train_config.device != "cuda":  # threads at the cores free, as it trains
        from charlm.runtime.cores import ThreadPilot
        from charlm.runtime.measured import MIN_STEP_SECONDS

        pilot = ThreadPilot(MIN_STEP_SECONDS)  # its first window: reading the text and building the model
    inputs: list[Any] = [corpus[0]]
    if task == "lm":
        from charlm.text.corpus import find_corpus

        found = find_corpus(corpus, options["encoding"], options["include"], options["exclude"])
        if parent is not None:
            run = language_model_run(found, data_config, train_config, model_settings=options["model_settings"],
                                     world=world, parent=parent)
        else:
            run = language_model_run(found, data_config, train_config, architecture, options, world,
                                     given=frozenset(given))
        inputs = [file.path for file in found.files] + ([parent.path] if parent is not None else [])
    else:
        run = translation_run(corpus[0], data_config, train_config, architecture, options,
                              detected=options["task"] == "auto")
    train_config = run.train_config or train_config
    if resume:
        from charlm.training.resume import check_corpus

        changed = check_corpus(run_paths(out)["resume"], {**run.meta, **run.resume_meta}, options["allow_changed_corpus"])
        if changed:
            run.notes.append(f"{changed}; going on, as --allow-changed-corpus says")
    from charlm.settings.rows import in_callers_terms  # lines worded with flags; a program's caller reads its keywords

    if run.recipe and not quiet:
        say(f"recipe: {in_callers_terms(run.recipe, TRAIN.values())}")
    if world.is_main:
        for note in run.notes:  # the corpus's files, the batch size fitted, what the recipe chose by the pace measured
            say(f"note: {in_callers_terms(note, TRAIN.values())}")
    if not quiet:
        if line := skipped_message(corpus[0], run.skipped):
            say(line)
        say(f"{run.description}{f' on {world.size} processes' if world.size > 1 else ''} -> {out}")
    if pilot is not None:
        pilot.settle()  # what the others used while the text was read and the model built
    summary = Trainer(run.model, run.train_batches, run.val_batches, train_config, out, run.meta,
                      not quiet, world, inputs=inputs, tuning_dir=data_config.cache_dir,
                      resume_meta=run.resume_meta, sample=run.sample, pilot=pilot,
                      by_passes=run.by_passes).run(resume, overwrite)
    if getattr(run, "report", None) is not None and world.is_main and summary.get("best_val_loss") is not None:
        if pilot is not None:
            pilot.settle()
        summary.update(_report(out, run, options["device"], quiet, say))
    if getattr(run, "unigram_loss", None) is not None:
        summary["unigram_loss"] = run.unigram_loss
    return Launched(out, summary, train_config, run, not quiet)


def _report(out: Path, run: Any, device: str, quiet: bool, say: Callable[[str], None]) -> dict[str, Any]:
    """The kept model's loss on the whole held-out split, where the evaluations as it trained
    scored a part of it (`charlm.training.setup.EVAL_POSITIONS`)."""
    from charlm.checkpoints.loading import load_model
    from charlm.evaluation.reports import evaluate
    from charlm.runtime.device import pick_device
    from charlm.training.setup import EVAL_POSITIONS

    if not quiet:
        say(f"scoring the kept model on all {run.held_out_tokens:,} held-out tokens (the evaluations as it trained "
            f"scored about {EVAL_POSITIONS:,} of them)")
    model, _, _ = load_model(out, "lm", pick_device(device))
    return {"held_out_loss": evaluate(model, run.report(), shown=None if quiet else run.held_out_tokens - 1)}


def _as_recorded(out: Path, options: dict[str, Any], given: set[str]) -> set[str]:
    """The settings a recipe may choose and the user did not give, as the run at `out` recorded
    them in its resume file, put in `options`; returns their names (none without such a file:
    the trainer says so)."""
    from charlm.checkpoints.files import read_metadata
    from charlm.checkpoints.metadata import read
    from charlm.training import recipe
    from charlm.training.optimization import TrainConfig
    from charlm.training.run_files import run_paths

    path = run_paths(out)["resume"]
    if not os.path.exists(path):
        return set()
    saved = read(read_metadata(path))
    recorded = {**(saved.model or {}), **(saved.train or {})}
    taken = set(recipe.NAMES) - given
    for name in taken:  # one recorded only when set holds its default
        field = TrainConfig.__dataclass_fields__.get(name)
        options[name] = recorded.get(name, field.default if field is not None else LM.get(name))
    return taken


def _task_of(corpus: tuple[Path, ...], task: str, encoding: str, fine_tuning: bool = False) -> str:
    """The task asked for, or with "auto" the one the file's shape says: text for several paths,
    a folder, or a language model to fine-tune."""
    from charlm.text.pairs import looks_like_pairs

    several = len(corpus) > 1 or os.path.isdir(corpus[0])
    if several and task == "translate":
        raise UsageError("pairs are read from one file; give one source<TAB>target file for --task translate")
    if task != "auto":
        return task
    if several or fine_tuning:
        return "lm"
    return "translate" if looks_like_pairs(corpus[0], encoding) else "lm"
