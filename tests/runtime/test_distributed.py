"""Training under torchrun: 2 gloo processes with batch B/2 each must give what 1 process gives
with batch B, and a torchrun run must resume like any other, under torchrun or alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from charlm.errors import CharlmError
from charlm.runtime.processes import World
from tests.conftest import ROOT, TINY_KINDS, run_cli

# No dropout of any kind (the recipe gives a small text DropConnect and embedding dropout): the
# processes draw their own masks, so only a dropout-free run can match exactly.
RUN = ("--dropout", "0", "--eval-every", "3", "--seed", "7")
RECURRENT_RUN = (*RUN, "--weight-drop", "0", "--embedding-dropout", "0")


def torchrun(*args: str, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "charlm", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout}\n{result.stderr}"
    return result


def resume_file(path) -> dict[str, torch.Tensor]:
    from charlm.checkpoints.files import load

    return load(path)[0]


def metrics(path) -> list[dict]:
    keep = ("step", "epoch", "tokens", "train_loss", "val_loss")
    return [{key: record[key] for key in keep} for record in map(json.loads, open(path))]


def assert_same_run(ours: str, reference: str, carried: bool) -> None:
    """Weights, optimizer state and the carried hidden state (`carried`: the RNN's) equal; the metrics too."""
    mine, theirs = resume_file(f"{ours}.resume.safetensors"), resume_file(f"{reference}.resume.safetensors")
    compared = [name for name in theirs if name.startswith(("model.", "optim.", "carry."))]
    assert any(name.startswith("carry.") for name in compared) == carried  # the sequential iterator's state
    for name in compared:
        torch.testing.assert_close(mine[name], theirs[name], atol=1e-5, rtol=1e-4, msg=name)
    for a, b in zip(metrics(f"{ours}.metrics.jsonl"), metrics(f"{reference}.metrics.jsonl"), strict=True):
        assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", TINY_KINDS)
def test_two_processes_match_one_and_resume(runner, tiny_corpus, tmp_path, kind):
    args = (*TINY_KINDS[kind], *(RECURRENT_RUN if kind in ("rnn", "ensemble") else RUN))
    carried = kind != "transformer"  # the transformer carries nothing between its random windows
    # One process, batch 4, steps 1-6 (evaluating at 3 and 6); then 3 steps alone.
    run_cli(runner, "train", tiny_corpus, *args, "--max-steps", "6", "--out", "one6.safetensors", "--no-cache")
    run_cli(runner, "train", tiny_corpus, *args, "--max-steps", "3", "--out", "one3.safetensors", "--no-cache")

    # Two processes, 2 rows each: 3 steps, then resumed to 6.
    loud = [arg for arg in args if arg != "--quiet"]
    first = torchrun("train", tiny_corpus, *loud, "--max-steps", "3", "--out", "two.safetensors", cwd=tmp_path)
    assert len(list((tmp_path / ".charlm-cache").iterdir())) == 1  # rank 0 wrote it; rank 1 read it
    assert_same_run(tmp_path / "two", tmp_path / "one3", carried)
    saved = resume_file(tmp_path / "two.resume.safetensors")
    assert "rng.cpu" in saved and "rng.rank1.cpu" in saved  # each process's own generator
    if carried:  # (L, B, H): both processes' rows
        name = {"rnn": "carry.0", "ensemble": "carry.1.0", "mingru": "carry.h"}[kind]
        assert saved[name].shape == (1, 4, 12 if kind == "mingru" else 16)
    assert first.stdout == ""  # rank 0 alone talks, on stderr:
    assert first.stderr.count("on 2 processes") == 1 and first.stderr.count("saved two.safetensors: 3 steps") == 1

    for suffix in (".safetensors", ".resume.safetensors", ".metrics.jsonl"):  # the same run, resumed by one process
        shutil.copy(tmp_path / f"two{suffix}", tmp_path / f"solo{suffix}")

    torchrun("train", tiny_corpus, *args, "--max-steps", "6", "--out", "two.safetensors", "--resume", cwd=tmp_path)
    assert_same_run(tmp_path / "two", tmp_path / "one6", carried)
    run_cli(runner, "train", tiny_corpus, *args, "--max-steps", "6", "--out", "solo.safetensors", "--resume")
    assert_same_run(tmp_path / "solo", tmp_path / "one6", carried)


def test_each_process_takes_its_own_rows_of_the_batch():
    assert [World(rank, rank, 2).rows(6) for rank in range(2)] == [slice(0, 3), slice(3, 6)]
    assert World().rows(5) == slice(0, 5)
    with pytest.raises(CharlmError, match="multiple of 4"):
        World(0, 0, 4).rows(6)


def test_a_batch_size_that_does_not_split_fails_before_training(tiny_corpus):
    from charlm.data.batches import BatchIterator
    from charlm.training.sharing import RowShare

    batches = BatchIterator(torch.arange(500), batch_size=6, seq_len=5)
    with pytest.raises(CharlmError, match="--batch-size 6 does not split evenly over 4 processes"):
        RowShare(batches, World(1, 1, 4))
    share = RowShare(batches, World(1, 1, 2))
    whole, part = next(batches.batches(0)), next(share.batches(0))
    assert len(share) == len(batches) and share.carries_state
    assert all(torch.equal(p, w[3:]) for p, w in zip(part, whole))
