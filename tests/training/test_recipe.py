"""The recipe: the settings a user leaves out follow the text's size and --max-time, said in one line;
a setting the user gives is theirs; long held-out splits are scored in part as a run trains and whole
at its end; the score to beat (the text's character frequencies) is shown."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from charlm.data.batches import eval_batches
from charlm.data.ids import unigram_loss
from charlm.training import recipe
from tests.conftest import run_cli

OWN_TEXT = Path(__file__).resolve().parent.parent / "fixtures" / "own_text"  # notes in English, Russian, Chinese


@pytest.mark.parametrize("tokens", [3_000, 40_000, 99_999])
def test_a_small_text_gets_a_small_regularised_model_many_epochs_and_early_stopping(tokens):
    chosen = recipe.choose(tokens, None, set(), "lstm")
    assert chosen.settings["hidden_size"] < 512 and chosen.settings["dropout"] > 0.3
    assert chosen.settings["early_stop"] is not None and chosen.settings["epochs"] > 10
    assert chosen.line.startswith("a small text") and "--hidden-size 256" in chosen.line


def test_epochs_fall_as_the_text_grows_and_max_time_alone_plans_them():
    sizes = [1_000, 10_000, 100_000, 161_082, 1_000_000, 10_000_000, 10**9]
    epochs = [recipe.choose(size, None, set(), "lstm").settings["epochs"] for size in sizes]
    assert epochs == sorted(epochs, reverse=True) and epochs[0] == recipe.MAX_EPOCHS and epochs[-1] == 1
    assert epochs[3] == 10  # The Time Machine's training split: the epochs the presets had
    timed = recipe.choose(161_082, 60, set(), "lstm")
    assert timed.settings["epochs"] == recipe.UNTIL_TIME and "as many epochs as --max-time 60 allows" in timed.line


def test_what_the_user_set_is_theirs_and_is_not_named():
    chosen = recipe.choose(5_000, None, {"hidden_size", "dropout", "epochs"}, "lstm")
    assert not {"hidden_size", "dropout", "epochs"} & set(chosen.settings)
    assert "--hidden-size" not in chosen.line and "--weight-drop 0.3" in chosen.line
    everything = set(recipe.NAMES)
    assert recipe.choose(5_000, None, everything, "lstm") == recipe.Recipe({}, None)


def test_the_model_part_is_for_the_recurrent_cells_and_one_hot_input_drops_no_embedding():
    transformer = recipe.choose(5_000, None, set(), "transformer").settings
    assert not set(recipe.MODEL_PART) & set(transformer) and transformer["early_stop"] == 5
    assert "embedding_dropout" not in recipe.choose(5_000, None, set(), "gru", embedding_size=0).settings


def test_the_unigram_baseline_is_the_training_frequencies_scored_on_the_held_out_targets():
    train_ids, val_ids = torch.tensor([1, 1, 1, 2]), torch.tensor([0, 1, 2])  # targets 1 and 2
    probabilities = torch.tensor([1, 4, 2]) / 7  # add-one counts of ids 0, 1, 2
    expected = -(math.log(probabilities[1]) + math.log(probabilities[2])) / 2
    assert unigram_loss(train_ids, val_ids, 3) == pytest.approx(expected)


def test_a_part_of_the_held_out_split_is_the_start_of_every_row():
    ids = torch.arange(1001)
    whole = list(eval_batches(ids, 4, 10))
    part = list(eval_batches(ids, 4, 10, positions=80))
    assert sum(targets.numel() for _, targets in whole) == 1000
    assert sum(targets.numel() for _, targets in part) == 80  # 4 rows x 20 steps
    assert [inputs[:, 0].tolist() for inputs, _ in part][0] == [0, 250, 500, 750]  # every quarter of the split
    assert torch.equal(torch.cat([t for _, t in part], 1), torch.cat([t for _, t in whole], 1)[:, :20])


def stderr_lines(result) -> list[str]:
    return result.stderr.splitlines()


def test_a_folder_of_ones_own_notes_says_its_recipe_and_what_to_beat(runner, tmp_path):
    notes = shutil.copytree(OWN_TEXT, tmp_path / "notes")
    result = run_cli(runner, "train", notes, "--max-steps", "3", "--hidden-size", "32")
    (line,) = [line for line in stderr_lines(result) if line.startswith("recipe: ")]
    assert line.startswith("recipe: a small text (") and "--hidden-size" not in line and "--dropout 0.5" in line
    assert "2x32" in result.stderr  # the flag given
    final = stderr_lines(result)[-1] if "note:" not in stderr_lines(result)[-1] else stderr_lines(result)[-2]
    assert "(the text's character frequencies alone: ppl " in final
    quiet = run_cli(runner, "train", notes, "--max-steps", "1", "--quiet", "--out", "q.safetensors")
    assert "recipe:" not in quiet.output


def test_a_model_no_better_than_character_frequencies_is_told_so(runner, tmp_path):
    notes = shutil.copytree(OWN_TEXT, tmp_path / "notes")
    result = run_cli(runner, "train", notes, "--max-steps", "1", "--hidden-size", "8")
    assert "no better than its characters' frequencies" in result.stderr


def test_the_kept_model_is_scored_on_the_whole_held_out_split_when_evaluations_scored_a_part(runner, tiny_corpus,
                                                                                           monkeypatch):
    from charlm.training import setup

    monkeypatch.setattr(setup, "EVAL_POSITIONS", 16)  # the tiny text's 150 held-out tokens are "long"
    result = run_cli(runner, "train", tiny_corpus, "--hidden-size", "16", "--max-steps", "6", "--eval-every", "3")
    assert "scoring the kept model on all 150 held-out tokens" in result.stderr
    shown = float(result.stderr.split("on the whole held-out split val loss ")[1].split()[0])
    reference = json.loads(run_cli(runner, "eval", "--checkpoint", "checkpoints/tiny.safetensors", tiny_corpus,
                                   "--held-out", "--json").stdout)
    assert shown == pytest.approx(reference["loss"], abs=1e-4)
    records = [json.loads(line) for line in Path("checkpoints/tiny.metrics.jsonl").read_text().splitlines()]
    assert all(record["val_loss"] != pytest.approx(reference["loss"], abs=1e-6) for record in records)


@pytest.mark.slow  # trains for 30 s
def test_own_notes_in_three_languages_beat_their_character_frequencies_in_half_a_minute(runner, tmp_path):
    """The issue's case: a few kilobytes of one's own notes in several languages and files, with
    no flag but --max-time: the kept model's held-out perplexity is well below a unigram's."""
    notes = shutil.copytree(OWN_TEXT, tmp_path / "notes")
    result = run_cli(runner, "train", notes, "--max-time", "30")
    unigram = float(result.stderr.split("character frequencies alone: ppl ")[1].split(")")[0])
    kept = float(result.stderr.split("best val loss ")[1].split("(ppl ")[1].split(")")[0])
    assert kept < 0.7 * unigram, result.stderr


def test_dropout_follows_the_passes_a_run_makes_over_a_moderate_or_large_text():
    few, dropout = recipe.FEW_PASSES, recipe.FEW_PASSES_DROPOUT
    assert recipe.by_passes(few - 0.1) == {"dropout": dropout} and recipe.by_passes(few) == {}
    # without --max-time the passes are the epochs: the recipe's, or the user's
    assert "dropout" not in recipe.choose(161_082, None, set(), "lstm").settings  # 10 epochs: the presets' 0.3
    assert recipe.choose(400_000, None, set(), "gru").settings["dropout"] == dropout  # 4 epochs
    assert recipe.choose(1_000_000, None, set(), "lstm").settings["dropout"] == dropout  # 2: the large text's, as before
    assert "dropout" not in recipe.choose(400_000, None, {"epochs"}, "lstm", epochs=20).settings
    assert recipe.choose(161_082, None, {"epochs"}, "lstm", epochs=3).settings["dropout"] == dropout
    # with --max-time the run's first plan says how many the time allows
    timed = recipe.choose(161_082, 150, set(), "lstm")
    assert timed.by_passes and "dropout" not in timed.settings
    assert f"--dropout {dropout} if that is fewer than {few} passes over the text" in timed.line
    for not_by_passes in (recipe.choose(161_082, 150, {"dropout"}, "lstm"), recipe.choose(161_082, 150, set(), "transformer"),
                          recipe.choose(5_000, 150, set(), "lstm")):  # the user's; not a recurrent cell; the small text's own
        assert not not_by_passes.by_passes


def test_a_model_given_the_dropout_of_few_passes_drops_less_everywhere():
    from charlm.checkpoints.metadata import LanguageModelMetadata
    from charlm.models.recurrent import LanguageModel, ModelConfig
    from charlm.presets import record

    model = LanguageModel(ModelConfig(vocab_size=20, cell="lstm", num_layers=2, hidden_size=8, embedding_size=4,
                                      dropout=0.3))
    meta = LanguageModelMetadata(task="lm", model=record(model.config))
    assert recipe.apply_passes(model, meta, recipe.FEW_PASSES + 1) is None and model.rnn.dropout == 0.3
    line = recipe.apply_passes(model, meta, 3.2)
    assert line.startswith("the time allows 3.2 passes over the text") and "dropout 0.1" in line  # as the caller says it
    assert model.dropout.p == model.rnn.dropout == model.config.dropout == meta.model["dropout"] == 0.1
    assert recipe.apply_passes(model, meta, 3.2) is None  # said once


def test_a_timed_run_takes_the_dropout_of_its_passes_and_resumes_with_it(runner, tiny_corpus, monkeypatch):
    from charlm.checkpoints.files import read_metadata

    monkeypatch.setattr(recipe, "TIERS", ((math.inf, "a text of moderate size", {}),))  # the tiny text as a larger one
    monkeypatch.setattr(recipe, "FEW_PASSES", 10**9)  # and however many passes, few
    tiny = ("--hidden-size", "16", "--num-layers", "2", "--embedding-size", "8", "--batch-size", "4", "--seq-len", "8")
    result = run_cli(runner, "train", tiny_corpus, *tiny, "--max-time", "2")
    assert "fewer than 1000000000 passes over the text" in result.stderr  # the recipe line
    assert "note: the time allows" in result.stderr and "--dropout 0.1, the recipe's for them" in result.stderr
    for kind in ("tiny.safetensors", "tiny.resume.safetensors"):
        assert read_metadata(f"checkpoints/{kind}")["model"]["dropout"] == 0.1
    again = run_cli(runner, "train", tiny_corpus, *tiny, "--max-time", "3", "--resume")  # with what it changed
    assert "note: the time allows" not in again.stderr
    assert read_metadata("checkpoints/tiny.safetensors")["model"]["dropout"] == 0.1


def test_a_timed_run_is_told_its_passes_once_a_tenth_into_the_time():
    """Not at the first plan: its pace then is the warm-up's, and on a busy machine the threads' change's."""
    from charlm.runtime.processes import World
    from charlm.training.optimization import TrainConfig
    from charlm.training.resume import RunState
    from charlm.training.time_budget import PASSES_AFTER, TimeBudget

    now, told, state = [0.0], [], RunState()
    budget = TimeBudget(TrainConfig(max_time=100, epochs=10**6), state, World(), 10, 0.0, lambda: now[0],
                        on_plan=told.append)
    for second in range(1, 40):
        now[0], state.step = float(second), 10 * second  # 10 steps a second, 10 steps a pass
        budget.plan()
        assert bool(told) == (second >= PASSES_AFTER * 100)
    assert told == [pytest.approx(100, rel=0.02)]  # 100 s of 10 steps a second, once


def test_a_timed_recurrent_run_trains_two_models_where_one_would_make_many_passes_in_many_steps(monkeypatch):
    from charlm import presets

    monkeypatch.setattr(recipe, "ENSEMBLE_STEPS", presets.ENSEMBLE_STEPS)  # the tests' conftest says one model
    many, steps, members = recipe.ENSEMBLE_PASSES, recipe.ENSEMBLE_STEPS, recipe.ENSEMBLE_MEMBERS
    assert recipe.by_pace(many, steps) == {"ensemble": members} == {"ensemble": 2}
    assert recipe.by_pace(many - 0.1, 10 * steps) == {} == recipe.by_pace(10 * many, steps - 1)  # both, or one model
    assert recipe.pace_line(many + 2, steps, 900).endswith(f"--ensemble {members}, the recipe's for {many:g} passes "
                                                           f"in {steps:,} steps or more")
    assert recipe.pace_line(many + 2, steps - 1, 900).endswith(f"fewer than {many:g} passes or {steps:,} steps: "
                                                               "one model")
    timed = recipe.choose(1_003_854, 900, set(), "lstm")
    assert timed.by_pace and "ensemble" not in timed.settings  # the setup measures the pace, then chooses
    assert f"--ensemble {members} if one model would make {many:g} passes in {steps:,} steps or more" in timed.line
    assert recipe.choose(1_003_854, 900, {"dropout", "batch_size"}, "gru").by_pace  # the line, even with nothing else
    for not_by_pace in (recipe.choose(1_003_854, None, set(), "lstm"),  # the epochs' time is not the user's to spend
                        recipe.choose(1_003_854, 900, {"ensemble"}, "lstm"),  # the user's
                        recipe.choose(1_003_854, math.inf, set(), "lstm"),  # a limit never reached: no time to share
                        recipe.choose(recipe.ENSEMBLE_TOKENS - 1, 900, set(), "lstm"),  # a small text's model: one
                        recipe.choose(1_003_854, 900, set(), "transformer"),
                        recipe.choose(1_003_854, 900, set(), "mingru")):
        assert not not_by_pace.by_pace and "--ensemble" not in (not_by_pace.line or "")


@pytest.mark.parametrize(("cost", "timed"), [(0.3, 5), (0.001, 200)])  # a step of a large model; of a tiny one
def test_the_pace_is_the_mean_of_its_timed_steps_and_changes_nothing_of_the_run(monkeypatch, cost, timed):
    """The steps `pace.steps_in` promises are the time over the mean of the steps it timed: at
    least TIMED_STEPS over at least a share of the time (here 0.6 s of 60), at most MOST_STEPS,
    after WARM_UP_STEPS untimed (here 5 s each). The random state is as it was, and so are the
    weights where no optimizer was given; with one each step updates them."""
    from charlm.models.recurrent import LanguageModel, ModelConfig
    from charlm.runtime.measured import Decisions
    from charlm.training import pace

    assert (pace.WARM_UP_STEPS, pace.TIMED_STEPS, pace.MOST_STEPS, pace.PACE_SHARE) == (2, 5, 200, 0.01)
    monkeypatch.setattr(pace, "choose_training_setup", lambda *args: ("fp32", None, None))  # `measured`'s business
    model = LanguageModel(ModelConfig(vocab_size=20, cell="lstm", num_layers=1, hidden_size=8, embedding_size=4))
    model.eval()
    batch = (torch.randint(20, (4, 8)), torch.randint(20, (4, 8)))
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    now, calls, forward = [0.0], [0], model.batch_loss

    def batch_loss(*args):  # a step's forward pass takes the time of the step
        calls[0] += 1
        now[0] += 5.0 if calls[0] <= pace.WARM_UP_STEPS else cost
        return forward(*args)

    monkeypatch.setattr(model, "batch_loss", batch_loss)
    before = torch.get_rng_state()
    assert pace.steps_in(60, model, batch, {}, Decisions(None), "fp32", clock=lambda: now[0]) \
        == pytest.approx(60 / cost)
    assert calls[0] == pace.WARM_UP_STEPS + timed
    assert torch.equal(torch.get_rng_state(), before) and not model.training
    assert all(torch.equal(value, weights[name]) for name, value in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())
    pace.steps_in(60, model, batch, {}, Decisions(None), "fp32", torch.optim.SGD(model.parameters(), lr=0.1),
                  clock=lambda: now[0])
    assert not torch.equal(model.state_dict()["head.weight"], weights["head.weight"])


def test_a_timed_run_takes_the_models_its_pace_says_and_resumes_with_them(runner, tiny_corpus, monkeypatch):
    """Two models where one would make many passes: the same run, byte for byte, as --ensemble 2
    gives; a resume keeps the count its run began with, whatever the pace says now; and one model
    where the passes are few, kept as well."""
    from charlm.checkpoints.files import read_metadata
    from safetensors.torch import load_file

    tiny = ("--hidden-size", "16", "--num-layers", "1", "--embedding-size", "8", "--batch-size", "4", "--seq-len", "8",
            "--max-time", "60", "--max-steps", "3")
    monkeypatch.setattr(recipe, "ENSEMBLE_TOKENS", 0)  # the tiny text as a larger one
    monkeypatch.setattr(recipe, "ENSEMBLE_STEPS", 0)
    monkeypatch.setattr(recipe, "ENSEMBLE_PASSES", 0.0)  # however few the passes, many
    result = run_cli(runner, "train", tiny_corpus, *tiny, "--out", "paced")
    assert "note: one model would make" in result.stderr and "here: --ensemble 2, the recipe's" in result.stderr
    assert "2 x lstm 1x16" in result.stderr
    assert read_metadata("paced.safetensors")["model"]["ensemble"] == 2
    run_cli(runner, "train", tiny_corpus, *tiny, "--ensemble", "2", "--out", "told")
    paced, told = load_file("paced.safetensors"), load_file("told.safetensors")
    assert paced.keys() == told.keys() and all(torch.equal(paced[name], told[name]) for name in told)

    monkeypatch.setattr(recipe, "ENSEMBLE_PASSES", math.inf)  # now one model would make few
    again = run_cli(runner, "train", tiny_corpus, *tiny[:-1], "5", "--out", "paced", "--resume")
    assert "note: one model would make" not in again.stderr and "--ensemble" not in again.stderr
    assert read_metadata("paced.safetensors")["model"]["ensemble"] == 2
    one = run_cli(runner, "train", tiny_corpus, *tiny, "--out", "one")
    assert "fewer than inf passes or 0 steps: one model" in one.stderr
    assert "ensemble" not in read_metadata("one.safetensors")["model"]
    monkeypatch.setattr(recipe, "ENSEMBLE_PASSES", 0.0)
    run_cli(runner, "train", tiny_corpus, *tiny[:-1], "5", "--out", "one", "--resume")
    assert "ensemble" not in read_metadata("one.safetensors")["model"]


def test_the_steps_a_paced_run_counts_stop_at_max_steps_and_its_epochs(runner, tiny_corpus, monkeypatch):
    """What ends the run first counts: --max-steps, or the --epochs given, where they come before the time."""
    monkeypatch.setattr(recipe, "ENSEMBLE_TOKENS", 0)  # the tiny text as a larger one
    monkeypatch.setattr(recipe, "ENSEMBLE_STEPS", 10)
    tiny = ("--hidden-size", "16", "--num-layers", "1", "--embedding-size", "8", "--batch-size", "4", "--seq-len", "8",
            "--max-time", "600")
    capped = run_cli(runner, "train", tiny_corpus, *tiny, "--max-steps", "3", "--out", "steps")
    assert "passes over the text in 3 steps in --max-time 600 here, fewer than 5 passes or 10 steps: one model" \
        in capped.stderr
    one_epoch = run_cli(runner, "train", tiny_corpus, *tiny, "--epochs", "1", "--out", "epoch")
    assert "one model would make 1.0 passes over the text in " in one_epoch.stderr


def test_where_the_pace_is_not_measured_a_timed_run_trains_one_model_and_says_so(tiny_corpus, monkeypatch):
    """On a GPU (or under torchrun) the recipe does not time a model: one model, said in a note."""
    from charlm.data.loading import DataConfig
    from charlm.runtime.processes import World
    from charlm.training.optimization import TrainConfig
    from charlm.training.setup import language_model_run

    monkeypatch.setattr(recipe, "ENSEMBLE_TOKENS", 0)
    monkeypatch.setattr(recipe, "ENSEMBLE_STEPS", 0)  # however few the steps, many
    monkeypatch.setattr(World, "device", lambda self, name="auto": torch.device("cuda"))  # no model is moved to it
    run = language_model_run(tiny_corpus, DataConfig(), TrainConfig(max_time=60, batch_size=4, seq_len=8), "lstm",
                             {"hidden_size": 16, "num_layers": 1, "embedding_size": 8}, given={"hidden_size"})
    assert recipe.UNPACED in run.notes and "ensemble" not in run.meta.model
