"""The cores free: what other programs use is measured as the machine's busy time less this
process's own, and the threads a run uses follow it as it goes."""

from __future__ import annotations

import os

import pytest
import torch

from charlm.runtime import cores


@pytest.mark.parametrize(("others", "available", "threads"), [
    (None, 2, 2), (0.0, 2, 2), (0.3, 2, 2), (1.0, 2, 1), (1.3, 2, 1), (2.5, 2, 1), (3.0, 8, 5), (0.0, 1, 1),
])
def test_threads_are_the_cores_left_at_least_one(others, available, threads):
    assert cores.threads_for(others, available) == threads


def test_available_cores_are_the_affinity_within_a_cgroup_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    real_open = open
    quota = tmp_path / "cpu.max"

    def fake_open(path, *args, **kwargs):
        return real_open(quota if path == "/sys/fs/cgroup/cpu.max" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    for text, expected in (("max 100000\n", 4), ("150000 100000\n", 2), ("50000 100000\n", 1), ("junk", 4)):
        quota.write_text(text)
        assert cores.available_cores() == expected


def fake_machine(monkeypatch):
    """A machine whose busy seconds, this process's seconds and clock the test moves."""
    machine = {"busy": 100.0, "own": 10.0, "now": 0.0}
    monkeypatch.setattr(cores, "_machine_busy", lambda: machine["busy"])
    monkeypatch.setattr(cores, "_own_busy", lambda: machine["own"])
    return machine


def test_the_others_use_is_the_machines_busy_time_less_this_processes(monkeypatch):
    machine = fake_machine(monkeypatch)
    watch = cores.CpuWatch(clock=lambda: machine["now"])
    machine.update(busy=100.0 + 2 * 10, own=10.0 + 1.2 * 10, now=10.0)  # 2 cores busy, 1.2 of them ours
    assert watch.others() == pytest.approx(0.8)
    watch.start()
    machine.update(busy=120.0 + 1.0, own=22.0 + 1.0, now=20.0)  # only ours
    assert watch.others() == pytest.approx(0.0)


def test_the_others_use_is_unknown_where_the_machine_does_not_say(monkeypatch):
    monkeypatch.setattr(cores, "_machine_busy", lambda: None)
    assert cores.CpuWatch().others() is None


@pytest.fixture
def piloted(monkeypatch):
    """(a fake machine whose clock is the pilot's, a pilot on 2 cores starting at 2 threads); torch's
    threads are restored after."""
    machine = fake_machine(monkeypatch)
    monkeypatch.setattr(cores.time, "perf_counter", lambda: machine["now"])
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield machine, cores.ThreadPilot(min_step=0.02, available=2)
    torch.set_num_threads(previous)


def test_the_pilot_moves_the_threads_with_a_neighbour_and_leaves_small_models_alone(piloted):
    machine, pilot = piloted

    def window(step: int, others: float, ours: float = 1.0) -> None:
        seconds = cores.WINDOW_SECONDS
        machine.update(now=machine["now"] + seconds, own=machine["own"] + ours * seconds,
                       busy=machine["busy"] + (ours + others) * seconds)
        pilot.check(step)

    window(100, others=1.0)  # a neighbour keeps a core busy: one thread
    assert torch.get_num_threads() == 1
    window(200, others=0.0)  # it has stopped: both again
    assert torch.get_num_threads() == 2
    machine["now"] += 1.0
    pilot.check(210)  # within a window: no look
    assert torch.get_num_threads() == 2 and pilot.changes == [(100, 1), (200, 2)]
    window(100_000, others=1.0)  # steps of 0.05 ms: a tiny model keeps what it was given
    assert torch.get_num_threads() == 2


def test_a_run_looks_at_the_cores_as_it_trains_unless_threads_are_fixed(runner, tiny_corpus, monkeypatch):
    from tests.conftest import TINY_MODEL, run_cli

    looks: list[tuple[str, int]] = []

    class Recording:
        def __init__(self, min_step: float) -> None:
            looks.append(("made", min_step))

        def settle(self) -> None:
            looks.append(("settle", None))

        def check(self, step: int) -> None:
            looks.append(("check", step))

    monkeypatch.setattr(cores, "ThreadPilot", Recording)
    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "20", "--eval-every", "20")
    assert looks[:2] == [("made", 0.02), ("settle", None)]  # before training: what the set-up saw
    assert [step for kind, step in looks[2:]] == [10, 20]
    looks.clear()
    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "20", "--threads", "1", "--overwrite")
    assert looks == []


def test_settling_sets_the_threads_from_the_set_up_however_few_steps(piloted):
    machine, pilot = piloted
    machine.update(now=0.2, busy=machine["busy"] + 0.2 * 1.5, own=machine["own"] + 0.2 * 0.5)
    pilot.settle()  # 0.2 s: too short to say
    assert torch.get_num_threads() == 2
    machine.update(now=2.0, busy=machine["busy"] + 1.8 * 1.5, own=machine["own"] + 1.8 * 0.5)
    pilot.settle()  # a neighbour used a core while the text was read
    assert torch.get_num_threads() == 1


def test_free_cores_are_looked_at_again_after_a_window_and_shared_by_those_working(monkeypatch):
    machine = fake_machine(monkeypatch)
    free = cores.FreeCores(available=2, clock=lambda: machine["now"])
    assert free.count() == 2  # nothing seen yet: every core
    machine.update(now=1.0, busy=machine["busy"] + 1.0, own=machine["own"])  # a neighbour, but within the window
    assert free.count() == 2
    seconds = cores.WINDOW_SECONDS
    machine.update(now=1.0 + seconds, busy=machine["busy"] + 1.5 * seconds, own=machine["own"] + 0.5 * seconds)
    assert free.count() == 1  # it kept a core busy
    machine.update(now=1.0 + 2 * seconds, busy=machine["busy"] + 2 * seconds, own=machine["own"] + 2 * seconds)
    a, b = object(), object()
    assert free.share(a, True) == 2  # it stopped: both cores, for the one working
    assert free.share(b, True) == 1 and free.share(a, True) == 1  # two working: one each
    free.share(b, False)
    assert free.share(a, True) == 2
    kept = cores.FreeCores(available=8, clock=lambda: machine["now"], kept=1)
    assert kept.share(a, True) == 7 and kept.share(b, True) == 3  # one core left to the process's other work
    assert kept.share(b, True, keep=False) == 4  # a piece of work the rest waits for
    assert cores.FreeCores(available=1, kept=1).share(a, True) == 1  # at least one
