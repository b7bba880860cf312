"""The trainer: which model it keeps (with a toy model whose validation loss is known to rise after
the first epoch), and the learning-rate schedule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from charlm.checkpoints.files import read_metadata
from charlm.models.protocol import ModelDefaults
from charlm.training.optimization import TrainConfig, learning_rate
from charlm.training.trainer import Trainer
from tests.conftest import TINY_MODEL, TINY_TRANSFORMER, run_cli


class Toy(ModelDefaults, nn.Module):
    """One weight w, loss (w - target)^2: training pulls w to 1, the validation target is 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def batch_loss(self, batch, state=None):
        (target,) = batch
        return ((self.w - target) ** 2).sum(), target.numel(), None


class OnesBatches:
    carries_state = False

    def __len__(self) -> int:
        return 2

    def batches(self, epoch, start=0):
        for _ in range(start, len(self)):
            yield (torch.ones(1),)


@pytest.mark.parametrize(("keep", "saved_step"), [("best", 2), ("last", 6)])
def test_the_model_file_holds_the_best_or_the_last_model(tmp_path, keep, saved_step):
    config = TrainConfig(optimizer="sgd", lr=0.1, epochs=3, keep=keep, device="cpu", eval_every=2)
    out = tmp_path / "toy.safetensors"
    summary = Trainer(Toy(), OnesBatches(), lambda: [(torch.zeros(1),)], config, out, {"task": "toy"},
                      progress=False).run()
    assert summary["steps"] == 6 and summary["best_step"] == 2  # validation only got worse after epoch 1
    assert read_metadata(out)["training"]["steps"] == saved_step


def test_cosine_runs_from_lr_to_its_floor_over_the_planned_steps():
    config = TrainConfig(lr=0.01, lr_schedule="cosine", min_lr_ratio=0.1)
    assert learning_rate(config, 0, 101) == pytest.approx(0.01)
    assert learning_rate(config, 50, 101) == pytest.approx(0.01 * (0.1 + 0.9 * 0.5))
    assert learning_rate(config, 100, 101) == pytest.approx(0.001)
    assert learning_rate(config, 500, 101) == pytest.approx(0.001)  # past the plan: the floor
    rates = [learning_rate(config, step, 101) for step in range(101)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert learning_rate(TrainConfig(lr=0.01, lr_schedule="constant"), 77, 101) == 0.01


def test_metrics_record_the_scheduled_rate(runner, tiny_corpus):
    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--epochs", "2", "--eval-every", "3", "--lr", "0.01")
    records = [json.loads(line) for line in open("checkpoints/tiny.metrics.jsonl")]
    steps_per_epoch = records[-1]["step"] // 2
    for record in records:  # the rate of the last step taken before the evaluation
        expected = learning_rate(TrainConfig(lr=0.01), record["step"] - 1, 2 * steps_per_epoch)
        assert math.isclose(record["lr"], expected, rel_tol=1e-9)
    assert records[-1]["lr"] == pytest.approx(0.001)


class StepClock:
    """A clock the trainer reads, where each optimizer step costs `cost(step)` seconds."""

    def __init__(self, trainer_module, cost) -> None:
        self.now, self.cost, self.module = 0.0, cost, trainer_module
        step = trainer_module.Trainer._train_step

        def timed(trainer, batch):
            self.now += self.cost(trainer.run_state.step)
            return step(trainer, batch)

        self.timed = timed

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def step_clock(monkeypatch):
    """Make a step cost what a test says, on the trainer's clock."""
    from charlm.training import trainer

    def install(cost):
        clock = StepClock(trainer, cost)
        monkeypatch.setattr(trainer, "clock", clock)
        monkeypatch.setattr(trainer.Trainer, "_train_step", clock.timed)
        return clock

    return install


def lr_records(path="checkpoints/tiny.metrics.jsonl"):
    return [json.loads(line) for line in open(path)]


@pytest.mark.parametrize(("case", "last_step"), [("steady", 1000), ("slowed down by another job halfway", 533),
                                                  ("evaluations cost time", 841)])
def test_max_time_fits_the_schedule_to_the_budget(runner, tiny_corpus, step_clock, monkeypatch, case, last_step):
    """With --max-time the cosine ends at its floor when the time is up, not at the end of
    --epochs: on a machine that slows down halfway (the plan is fitted again as it goes), and with
    evaluations that take time (set aside from what the steps may use) too."""
    from charlm.training import trainer

    clock = step_clock(lambda step: 0.01 * (3 if case.startswith("slowed") and step >= 300 else 1))
    if case == "evaluations cost time":
        evaluate = trainer.evaluate

        def slow_evaluate(*args, **kwargs):
            clock.now += 0.2
            return evaluate(*args, **kwargs)

        monkeypatch.setattr(trainer, "evaluate", slow_evaluate)
    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--epochs", "1000", "--eval-every", "100", "--lr", "0.01",
            "--max-time", "10")
    records = lr_records()
    planned = read_metadata("checkpoints/tiny.resume.safetensors")["resume"]["planned_steps"]
    assert records[-1]["step"] == pytest.approx(last_step, abs=3)
    assert abs(planned - records[-1]["step"]) <= 12
    assert records[-1]["lr"] == pytest.approx(0.001, rel=0.05)  # the floor: lr x --min-lr-ratio
    rates = [record["lr"] for record in records]
    assert rates[0] > 0.009 and all(a >= b for a, b in zip(rates, rates[1:]))  # one descent, over the budget


def test_without_max_time_the_schedule_is_planned_over_epochs_and_no_plan_is_saved(runner, tiny_corpus):
    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--epochs", "2", "--max-steps", "5")
    assert "planned_steps" not in read_metadata("checkpoints/tiny.resume.safetensors")["resume"]


def test_a_resumed_max_time_run_follows_the_saved_plan(runner, tiny_corpus, step_clock):
    """Interrupted (here: --max-steps) and resumed, a --max-time run keeps the curve it planned."""
    step_clock(lambda step: 0.1)
    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--epochs", "1000", "--eval-every", "10", "--lr", "0.01",
            "--max-time", "10", "--max-steps", "40")
    planned = read_metadata("checkpoints/tiny.resume.safetensors")["resume"]["planned_steps"]
    assert 40 <= planned <= 40  # --max-steps caps the plan
    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--epochs", "1000", "--eval-every", "10", "--lr", "0.01",
            "--max-time", "10", "--max-steps", "60", "--resume")
    records = lr_records()
    expected = learning_rate(TrainConfig(lr=0.01), 39, 40)
    assert [r["lr"] for r in records if r["step"] == 40] == [pytest.approx(expected)]


def test_progress_in_a_log_file_is_plain_lines(tmp_path, tiny_corpus):
    """stderr that is not a terminal gets a line every so often, never carriage returns."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    log = tmp_path / "log.txt"
    with open(log, "w") as stderr:
        subprocess.run([sys.executable, "-c", "from charlm.training import progress; progress.LINE_SECONDS = 0; "
                        "from charlm.cli import main; main()", "train", str(tiny_corpus), *TINY_MODEL[:-1],
                        "--max-steps", "30", "--eval-every", "30", "--out", str(tmp_path / "m.safetensors")],
                       stderr=stderr, stdout=subprocess.DEVNULL, cwd=tmp_path, check=True, timeout=120,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    text = log.read_text()
    assert "\r" not in text
    assert [line.split()[1] for line in text.splitlines() if line.startswith("step ") and "/" in line.split()[1]][:3] \
        == ["10/30", "20/30", "30/30"]


def test_a_warmup_composes_with_max_time_and_still_ends_at_the_floor(runner, tiny_corpus, step_clock):
    """The transformer's warm-up rises to --lr over its steps, then the cosine fitted to --max-time
    ends at its floor when the time is up."""
    step_clock(lambda step: 0.01)
    run_cli(runner, "train", tiny_corpus, *TINY_TRANSFORMER, "--epochs", "1000", "--eval-every", "10",
            "--lr", "0.01", "--warmup-steps", "30", "--max-time", "3")
    records = lr_records()
    assert records[0]["lr"] == pytest.approx(0.01 * 10 / 31) and records[2]["lr"] == pytest.approx(0.01 * 30 / 31)
    assert records[-1]["step"] == pytest.approx(300, abs=3)
    assert records[-1]["lr"] == pytest.approx(0.001, rel=0.05)
    rates = [record["lr"] for record in records[3:]]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_lr_decay_steps_fixes_the_schedules_length_and_a_stopped_run_resumes_on_it(runner, tiny_corpus):
    """--lr-decay-steps N (nanoGPT's lr_decay_iters): the cosine reaches its floor at step N,
    whatever --epochs or --max-time say, and a run stopped by --max-steps resumes on that curve
    to the unbroken run's bytes."""
    flags = (*TINY_MODEL, "--epochs", "1000", "--eval-every", "5", "--lr", "0.01", "--lr-decay-steps", "20")
    rates = {}
    for out, timed in (("whole", ()), ("timed", ("--max-time", "1000"))):
        run_cli(runner, "train", tiny_corpus, *flags, "--max-steps", "25", *timed, "--out", f"{out}.safetensors")
        lines = Path(f"{out}.metrics.jsonl").read_text().splitlines()
        rates[out] = {record["step"]: record["lr"] for record in map(json.loads, lines)}
    records = rates["whole"]
    assert records[5] > records[10] > records[15] > records[20] == pytest.approx(0.001) == records[25]
    assert rates["timed"] == records  # --max-time only stops when the length is told
    run_cli(runner, "train", tiny_corpus, *flags, "--max-steps", "10", "--out", "part.safetensors")
    run_cli(runner, "train", tiny_corpus, *flags, "--max-steps", "25", "--out", "part.safetensors", "--resume")
    assert Path("part.safetensors").read_bytes() == Path("whole.safetensors").read_bytes()


def test_one_tokens_per_second_on_the_progress_lines_and_in_the_metrics(runner, tiny_corpus, step_clock, monkeypatch):
    """The progress lines (a log, not a terminal) and the metrics file say the same tokens/s for the
    same step: tokens so far over the run's time so far, also just after an evaluation that took time."""
    import re

    from charlm.training import progress, trainer

    clock = step_clock(lambda step: 0.01)
    evaluate = trainer.evaluate

    def slow_evaluate(*args, **kwargs):
        clock.now += 0.5
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", slow_evaluate)
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    result = run_cli(runner, "train", tiny_corpus, *TINY_MODEL[:-1], "--max-steps", "40", "--eval-every", "20")
    shown = {int(step): float(rate.replace(",", "")) for step, rate in
             re.findall(r"^step (\d+)/\d+ .* ([\d,]+) tok/s", result.stderr, re.MULTILINE)}
    recorded = {record["step"]: record["tokens_per_sec"] for record in lr_records()}
    assert {20, 40} <= set(shown) & set(recorded)
    for step in (20, 40):
        assert shown[step] == pytest.approx(recorded[step], abs=1)


def test_a_sample_as_it_trains_changes_nothing_it_trains(runner, tiny_corpus):
    """After each evaluation's line, a short sample of what the model writes now (seeded alike each
    time, one line); --quiet shows none. Showing it leaves the run as it was, byte for byte."""
    import json as json_module

    shown = run_cli(runner, "train", tiny_corpus, *TINY_MODEL[:-1], "--max-steps", "20", "--eval-every", "10",
                    "--out", "shown/m.safetensors")
    samples = [line for line in shown.stderr.splitlines() if line.startswith("  sample: ")]
    assert len(samples) == 2 and all(json_module.loads(line[len("  sample: "):]) for line in samples)
    quiet = run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "20", "--eval-every", "10",
                    "--out", "quiet/m.safetensors")
    assert "sample:" not in quiet.stderr
    assert open("shown/m.safetensors", "rb").read() == open("quiet/m.safetensors", "rb").read()
    assert lr_records("shown/m.metrics.jsonl")[-1]["train_loss"] == lr_records("quiet/m.metrics.jsonl")[-1]["train_loss"]


def test_the_watch_names_over_fitting_once_and_counts_evaluations_since_the_best():
    from charlm.training.watch import LossWatch

    watch = LossWatch([{"val_loss": 3.0, "train_loss": 3.1}], patience=2)
    assert watch.add(2.0, 2.5, 20) is None and not watch.exhausted()
    assert watch.add(2.1, 2.2, 20) is None and not watch.exhausted()
    assert watch.add(2.2, 2.0, 20) is None and watch.exhausted()  # two evaluations since the best
    note = watch.add(2.3, 1.8, 20)  # the third rise in a row, the training loss falling
    assert note is not None and "over-fitting" in note and "step 20's" in note and "--early-stop 3" in note
    assert "--ensemble N" in note  # more members: a remedy as good for an ensemble as for one model
    assert watch.add(2.4, 1.7, 20) is None  # said once
    rising_train = LossWatch([], None)
    for val, train in [(2.0, 2.0), (2.1, 2.1), (2.2, 2.2), (2.3, 2.3)]:
        assert rising_train.add(val, train, 10) is None  # both rising: not over-fitting, and no patience
    assert not rising_train.exhausted()


def test_over_fitting_is_named_and_early_stop_stops_there(runner, tiny_corpus, monkeypatch):
    """A held-out loss that rises three evaluations in a row while the training loss falls is named
    on stderr, once; --early-stop N stops after N evaluations without a better one; the last line
    says which step the kept model is from."""
    from charlm.training import trainer

    held = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])
    monkeypatch.setattr(trainer, "evaluate", lambda *args, **kwargs: next(held))
    monkeypatch.setattr(trainer.LossWatch, "add", _falling_training_loss(trainer.LossWatch.add))
    ran = run_cli(runner, "train", tiny_corpus, *TINY_MODEL[:-1], "--max-steps", "60", "--eval-every", "10")
    assert ran.stderr.count("over-fitting") == 1 and "the model kept is step 20's" in ran.stderr
    assert ran.stderr.strip().splitlines()[-1].endswith("at step 20 (the text's character frequencies alone: ppl "
                                                        f"{math.exp(unigram_of(tiny_corpus)):.2f})")
    held = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])
    stopped = run_cli(runner, "train", tiny_corpus, *TINY_MODEL[:-1], "--max-steps", "60", "--eval-every", "10",
                      "--early-stop", "2", "--overwrite")
    assert "note: stopping early: no better held-out loss in 2 evaluations (--early-stop)" in stopped.stderr
    assert [record["step"] for record in lr_records()] == [10, 20, 30, 40]
    assert stopped.stderr.strip().splitlines()[-1].startswith("saved checkpoints/tiny.safetensors: 40 steps")


def unigram_of(path) -> float:
    from charlm.data.ids import unigram_loss
    from charlm.data.loading import load_corpus

    data = load_corpus(path)
    return unigram_loss(*data.split(0.1), len(data.vocab))


def _falling_training_loss(add):
    """`LossWatch.add` seeing a training loss that falls at each evaluation, whatever the tiny run's is."""
    losses = iter(range(100, 0, -1))

    def falling(self, val_loss, train_loss, best_step):
        return add(self, val_loss, float(next(losses)), best_step)

    return falling
