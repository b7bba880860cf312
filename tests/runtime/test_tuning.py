"""Measured choices: `--precision auto` on a CPU picks bf16 autocast only where it measures faster
and keeps the loss, remembers the decision, and measuring changes nothing of the run."""

from __future__ import annotations

import json
import time
import types
from pathlib import Path

import pytest
import torch

from charlm.checkpoints import files as checkpoint
from charlm.models.protocol import ModelDefaults
from charlm.runtime import measured as tuning
from tests.conftest import TINY_MODEL, run_cli


SPENT = [0.0]  # the seconds fake steps have taken, on the clock `charlm.runtime.measured` reads


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    """The measuring module's clock: the real one plus the seconds fake steps declare, so that a
    fake step takes the time the test gives it exactly, however busy the machine running it."""
    monkeypatch.setattr(tuning, "time", types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + SPENT[0]))


def fake_step(seconds: dict, losses: dict, model: torch.nn.Module | None = None):
    """A step_loss whose duration and loss per precision (and per `model.fast_path`, for a model
    with a choice of path: seconds keyed (False, path)) the test sets."""
    calls = []

    def step_loss(bf16: bool, backward: bool) -> torch.Tensor:
        key = (bf16, model.fast_path) if model is not None and not bf16 else bf16
        calls.append(key)
        SPENT[0] += seconds[key]
        return torch.tensor(losses[bf16])

    return step_loss, calls


class OnePath(ModelDefaults, torch.nn.Linear):
    """A model with no choice of path (`fast_path_choices()` is the default, none)."""

    def __init__(self) -> None:
        super().__init__(2, 2)


class TwoPaths(ModelDefaults, torch.nn.Linear):
    """A model with a choice of recurrent path, as `charlm.models.recurrent.LanguageModel` offers."""

    fast_path = None

    def __init__(self) -> None:
        super().__init__(2, 2)

    def fast_path_choices(self) -> tuple[bool, ...]:
        return (True, False)


@pytest.fixture
def capable(monkeypatch):
    monkeypatch.setattr(tuning, "bf16_capable", lambda: True)


def choose(step, model=None, key=None, folder=None, precision="auto"):
    return tuning.choose_cpu_setup(step, model or OnePath(), key or {}, tuning.Decisions(folder), precision)


def test_bf16_is_chosen_when_faster_with_the_same_loss_and_remembered(tmp_path, capable):
    step, calls = fake_step({False: 0.03, True: 0.01}, {False: 2.0, True: 2.001})
    setup, why = choose(step, key={"shape": 1}, folder=tmp_path)
    assert setup == tuning.Setup("bf16") and "30 ms in fp32, 10 ms in bf16" in why.replace("31 ms", "30 ms")
    calls_before = len(calls)
    again = choose(step, key={"shape": 1}, folder=tmp_path)
    assert again[0].precision == "bf16" and "as measured before" in again[1]
    assert calls[calls_before:] == [True, True]  # two steps of the way kept, timed: not contradicted
    assert json.loads((tmp_path / "tuning.json").read_text())  # kept beside the token cache


def test_ways_are_timed_in_turns_so_that_load_hits_them_alike(capable):
    step, calls = fake_step({False: 0.03, True: 0.01}, {False: 2.0, True: 2.0})
    choose(step)
    timed = [call for call in calls if call is not None]
    assert timed[:2 + 2 * tuning.REPEATS] == [False, True] * (1 + tuning.REPEATS)


def test_a_measurement_beside_other_work_is_used_but_not_kept(tmp_path, capable, monkeypatch):
    from charlm.runtime import cores

    monkeypatch.setattr(cores.CpuWatch, "others", lambda self: 1.3)  # another program kept 1.3 cores busy
    step, _ = fake_step({False: 0.03, True: 0.01}, {False: 2.0, True: 2.0})
    setup, why = choose(step, key={"shape": 1}, folder=tmp_path)
    assert setup.precision == "bf16" and why.endswith("measured beside other work (1.3 cores busy), so not kept")
    assert not (tmp_path / "tuning.json").exists()


def test_a_run_whose_threads_follow_the_cores_measures_again_on_the_cores_free(capable, monkeypatch):
    """Two threads beside a busy core measure every way slow and at random; the run would take one
    thread a window later anyway, so the choice is measured again on one, and the run keeps it."""
    from charlm.runtime import cores

    monkeypatch.setattr(cores.CpuWatch, "others", lambda self: 1.0)  # a neighbour keeps one core busy
    monkeypatch.setattr(cores, "available_cores", lambda: 2)
    previous = torch.get_num_threads()
    try:
        for follow, rounds, threads in ((False, 1, 2), (True, 2, 1)):
            torch.set_num_threads(2)
            step, calls = fake_step({False: 0.03, True: 0.01}, {False: 2.0, True: 2.0})
            tuning.choose_cpu_setup(step, OnePath(), {}, tuning.Decisions(None), "auto", follow)
            measured = 2 * (1 + tuning.REPEATS) + 2  # every way timed, then both losses
            assert len(calls) == rounds * measured and torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(previous)


def test_a_kept_decision_that_a_step_now_contradicts_is_measured_again(tmp_path, capable):
    slow, _ = fake_step({False: 0.09, True: 0.085}, {False: 2.0, True: 2.0})  # measured under load: fp32 kept
    assert choose(slow, key={"shape": 1}, folder=tmp_path)[0].precision == "fp32"
    quiet, calls = fake_step({False: 0.03, True: 0.01}, {False: 2.0, True: 2.0})  # a minute later, quiet
    setup, why = choose(quiet, key={"shape": 1}, folder=tmp_path)
    assert setup.precision == "bf16" and "as measured before" not in why and len(calls) > 2
    kept = json.loads((tmp_path / "tuning.json").read_text())
    assert [value["precision"] for value in kept.values()] == ["bf16"]


@pytest.mark.parametrize(("seconds", "losses"), [({False: 0.03, True: 0.03}, {False: 2.0, True: 2.0}),
                                                 ({False: 0.03, True: 0.01}, {False: 2.0, True: 2.2})],
                         ids=["not faster", "loss does not hold"])
def test_fp32_stays_unless_bf16_is_faster_and_keeps_the_loss(tmp_path, capable, seconds, losses):
    step, _ = fake_step(seconds, losses)
    assert choose(step, folder=tmp_path)[0].precision == "fp32"


def test_no_bf16_instructions_or_a_tiny_step_means_fp32_unmeasured(tmp_path, monkeypatch):
    step, calls = fake_step({False: 0.0, True: 0.0}, {False: 2.0, True: 2.0})
    monkeypatch.setattr(tuning, "bf16_capable", lambda: False)
    assert choose(step, folder=tmp_path) == (tuning.Setup("fp32"), None)
    assert calls == []
    monkeypatch.setattr(tuning, "bf16_capable", lambda: True)
    assert choose(step, folder=tmp_path) == (tuning.Setup("fp32"), None)
    assert True not in calls  # a step far under MIN_STEP_SECONDS: bf16 never tried


@pytest.mark.parametrize("faster", [True, False], ids=["kernels faster", "torch faster"])
@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_the_faster_recurrent_path_is_taken_for_fp32_and_remembered(tmp_path, capable, faster, precision):
    """A recurrent model trains its layers through charlm's kernels or torch's module, whichever a
    step measures faster here; bf16 (slower in this case) keeps torch's module, as autocast needs."""
    model = TwoPaths()
    slow, quick = 0.06, 0.03
    seconds = {(False, faster): quick, (False, not faster): slow, (False, None): 0.0, True: 0.05}  # None: the loss
    step, calls = fake_step(seconds, {False: 2.0, True: 2.0}, model)
    setup, why = choose(step, model, folder=tmp_path, precision=precision)
    assert setup == tuning.Setup("fp32", faster)
    assert ("charlm's kernels" if faster else "torch's module") in why
    assert model.fast_path is None  # the caller sets it; measuring leaves the model as it was
    assert (True in calls) == (precision == "auto")  # told fp32, bf16 is never measured
    calls_before = len(calls)
    assert choose(step, model, folder=tmp_path, precision="fp32")[0] == tuning.Setup("fp32", faster)
    assert calls[calls_before:] == [(False, faster)] * 2  # the kept way, timed: not contradicted


def test_told_bf16_measures_nothing(tmp_path, capable):
    model = TwoPaths()
    step, calls = fake_step({(False, True): 0.03, (False, False): 0.03, True: 0.03}, {False: 2.0, True: 2.0}, model)
    assert choose(step, model, folder=tmp_path, precision="bf16") == (tuning.Setup("bf16"), None)
    assert calls == []


@pytest.mark.skipif(not tuning.bf16_capable(), reason="this CPU has no bf16 matrix instructions")
def test_measuring_changes_nothing_of_the_run(runner, tiny_corpus, monkeypatch):
    """A run whose precision was measured (the tiny model made worth measuring) writes the very
    bytes of a run told that precision: the measurement's forward and backward passes touch
    neither the random state nor the weights."""
    monkeypatch.setattr(tuning, "MIN_STEP_SECONDS", 0.0)
    monkeypatch.setattr(tuning, "SPEEDUP", 0.0)  # bf16 whatever the timing, if the loss holds
    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--dropout", "0.3", "--num-layers", "2", "--max-steps", "6",
            "--out", "auto.safetensors")
    decided = next(iter(json.loads((tiny_corpus.parent / ".charlm-cache" / "tuning.json").read_text()).values()))
    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--dropout", "0.3", "--num-layers", "2", "--max-steps", "6",
            "--precision", decided["precision"], "--out", "told.safetensors")
    auto, told = checkpoint.load("auto.safetensors"), checkpoint.load("told.safetensors")
    assert auto[1]["training"] == told[1]["training"]
    assert all(torch.equal(auto[0][name], told[0][name]) for name in told[0])


@pytest.mark.skipif(not tuning.bf16_capable(), reason="this CPU has no bf16 matrix instructions")
def test_bf16_training_follows_fp32_within_a_tolerance(runner, tiny_corpus):
    """The loss curve holds: 20 steps in bf16 autocast end within 2 % of fp32's losses (the
    recurrent state and the loss stay fp32)."""
    for precision in ("fp32", "bf16"):
        run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "20", "--eval-every", "10",
                "--precision", precision, "--out", f"{precision}.safetensors")
    lines = {precision: [json.loads(line) for line in Path(f"{precision}.metrics.jsonl").read_text().splitlines()]
             for precision in ("fp32", "bf16")}
    for fp32, bf16 in zip(lines["fp32"], lines["bf16"]):
        assert bf16["train_loss"] == pytest.approx(fp32["train_loss"], rel=0.02)
        assert bf16["val_loss"] == pytest.approx(fp32["val_loss"], rel=0.02)


@pytest.mark.parametrize("kind", ["fifo", "folder", "not json", "a list", "huge"])
def test_a_decisions_file_that_is_not_one_is_measured_again(tmp_path, capable, kind):
    """What lies where tuning.json goes is read only if it is a small regular file of JSON; a FIFO
    is never opened (it would block), and the rest cost a measurement, never the run."""
    import os

    path = tmp_path / "tuning.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.write_text({"not json": "{", "a list": "[1, 2]", "huge": " " * (2 << 20) + "{}"}[kind])
    step, calls = fake_step({False: 0.03, True: 0.01}, {False: 2.0, True: 2.0})
    assert choose(step, folder=tmp_path)[0].precision == "bf16"
    assert True in calls


@pytest.mark.parametrize("fast_path", [True, False, None])
def test_the_chosen_path_runs_the_layers_in_training_and_evaluation_keeps_the_rule(monkeypatch, fast_path):
    """`fast_path` True trains through charlm's kernels, False through torch's module, with the
    same loss; evaluation (no autograd) keeps the kernels' own rule whatever was chosen."""
    from charlm.models import kernels, recurrent_layers
    from charlm.models.recurrent import LanguageModel, ModelConfig

    calls = []
    monkeypatch.setattr(kernels._Layer, "apply", lambda *args, apply=kernels._Layer.apply: calls.append(1) or apply(*args))
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=7, cell="lstm", hidden_size=8, embedding_size=4, dropout=0.0))
    model.fast_path = fast_path
    ids = torch.randint(0, 7, (3, 5))
    loss = model.batch_loss((ids, ids))[0]
    rule = recurrent_layers.supports(model.rnn, model.embed(ids)) and recurrent_layers._is_faster(model.rnn, model.embed(ids), None)
    assert bool(calls) == (rule if fast_path is None else fast_path)
    model.fast_path = None
    torch.testing.assert_close(loss, model.batch_loss((ids, ids))[0])
    calls.clear()
    with torch.no_grad():
        model.fast_path = fast_path
        model(ids)
    assert not calls  # the rule, without autograd over several steps: torch's fused loop
