"""The cores a run can use now: those this process may run on (its CPU affinity, a cgroup's CPU
quota) less those other programs are using, measured over real work.

Two threads on two cores lose to one by 3x when another program keeps one of the cores busy:
each step waits for the thread that was descheduled. So where the user has not fixed the
threads, a run sets torch's to the cores free (`threads_for`), measured as the machine's busy
time less this process's own over the steps just done (`CpuWatch`), and looks again as it goes
(`ThreadPilot`): a neighbour that starts or stops moves it within a window.

Linux's /proc/stat says what the machine did; where it is absent the others' use is unknown and
every available core counts as free. Standard library and torch's thread setter only (imported
when threads are set, so the CLI can start a watch before torch is loaded); it knows nothing
about models or runs.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable

WINDOW_SECONDS = 5.0  # the pilot looks again after this much work
QUIET = 0.25  # cores: others using less than this on average leave the machine quiet
MIN_SETTLE_SECONDS = 0.5  # a window shorter than this says too little to set threads by


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity, within a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as file:
            quota, period = file.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(math.ceil(int(quota) / int(period)), 1))
    except (OSError, ValueError):
        pass
    return max(cores, 1)


def _machine_busy() -> float | None:
    """Seconds of CPU time the whole machine has spent working (not idle or waiting for I/O), or
    None where /proc/stat is not there."""
    try:
        with open("/proc/stat", encoding="ascii") as file:
            fields = file.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(value) for value in fields[1:9])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _own_busy() -> float:
    """Seconds of CPU time this process (all its threads) has used."""
    times = os.times()
    return times.user + times.system


class CpuWatch:
    """How many cores other programs used on average since `start()` (the last call to it)."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock or time.perf_counter
        self.start()

    def start(self) -> None:
        self.began = (self.clock(), _machine_busy(), _own_busy())

    def seconds(self) -> float:
        return self.clock() - self.began[0]

    def others(self) -> float | None:
        """Cores used by other processes since `start()`, on average; None if unknown."""
        began, machine, own = self.began
        now_machine = _machine_busy()
        wall = self.clock() - began
        if machine is None or now_machine is None or wall <= 0:
            return None
        return max((now_machine - machine) - (_own_busy() - own), 0.0) / wall


def threads_for(others: float | None, available: int | None = None) -> int:
    """The threads to run on `available` cores while others use `others` of them: the cores
    left, rounded, at least one."""
    available = available or available_cores()
    if others is None:
        return available
    return min(max(round(available - others), 1), available)


def steer(others: float | None, available: int | None = None) -> int | None:
    """Set torch's threads to `threads_for` the cores free, where what the others use is known
    (`others`); returns the new count where it changed, else None."""
    import torch

    if others is None:
        return None
    threads = threads_for(others, available)
    if threads == torch.get_num_threads():
        return None
    torch.set_num_threads(threads)
    return threads


def use_free_cores(watch: CpuWatch) -> int:
    """Set torch's threads to the cores free over what `watch` has seen (the start of a command:
    its imports and loading), where that is known; returns the threads torch now has."""
    import torch

    steer(watch.others())
    return torch.get_num_threads()


class ThreadPilot:
    """Keeps torch's thread count at the cores free while a run works: `check(step)` between steps
    looks, once a window of WINDOW_SECONDS has passed, at what the others used during it and sets
    the threads for the next window. A model whose steps take under `min_step` seconds is left
    as it is (its threads mostly wait for each other: the caller chose for it), and so is every
    run where nothing says what the others use. `changes` lists (step, threads) as they went."""

    def __init__(self, min_step: float, available: int | None = None) -> None:
        self.min_step, self.available = min_step, available or available_cores()
        self.watch, self.step = CpuWatch(), 0
        self.changes: list[tuple[int, int]] = []

    def settle(self) -> None:
        """Set the threads from what the others used since the last look, however few steps
        there were: before training (the window is the run's set-up: reading the text, building
        the model) and before the final scoring of a run too short for a look."""
        if self.watch.seconds() >= MIN_SETTLE_SECONDS:
            steer(self.watch.others(), self.available)

    def check(self, step: int) -> None:
        seconds = self.watch.seconds()
        if seconds < WINDOW_SECONDS or step <= self.step:
            return
        others, per_step = self.watch.others(), seconds / (step - self.step)
        self.watch.start()
        self.step = step
        if per_step >= self.min_step and (threads := steer(others, self.available)) is not None:
            self.changes.append((step, threads))


class FreeCores:
    """The cores other programs leave free, for work that comes in short pieces at no fixed pace (a
    server's generation steps): `count()` gives the count found at the last look, and looks again
    once WINDOW_SECONDS have passed since it. One is shared by a process's parts that take turns
    or run at once (a server's batchers: `share()` divides the cores among those working now).
    Thread-safe. `kept`: cores left to the process's other work (a server's requests and streams)."""

    def __init__(self, available: int | None = None, clock: Callable[[], float] | None = None, kept: int = 0) -> None:
        self.available, self.kept = available or available_cores(), kept
        self.watch, self.free = CpuWatch(clock), self.available
        self.working: set[int] = set()
        self.lock = threading.Lock()

    def count(self) -> int:
        with self.lock:
            if self.watch.seconds() >= WINDOW_SECONDS:
                self.free = threads_for(self.watch.others(), self.available)
                self.watch.start()
            return self.free

    def share(self, worker: object, working: bool, keep: bool = True) -> int:
        """The threads `worker` may use while it works (`working`) beside the others that say they
        do: the cores free, less those kept (unless not to `keep` them), over their number; at least one."""
        with self.lock:
            (self.working.add if working else self.working.discard)(id(worker))
            sharing = max(len(self.working), 1)
        return max((self.count() - (self.kept if keep else 0)) // sharing, 1)
