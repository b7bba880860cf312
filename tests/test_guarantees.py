"""What charlm guarantees: one test per row, named for the row (the README's "What charlm
guarantees" lists them).

Rows run the way a user meets them: through the CLI in this process (CliRunner), or as a real
`python -m charlm` process where a signal or a kill is involved. Models are tiny so that every row
is quick; every wait on another process is bounded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from charlm import checkpoint
from tests.conftest import TINY_MODEL, run_cli

TIMING_FIELDS = ("tokens_per_sec", "elapsed_s")


def train(runner, corpus, *extra, ok: bool = True):
    return run_cli(runner, "train", corpus, *TINY_MODEL, *extra, ok=ok)


def run_files(out: str | Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """A run's full training state (the resume checkpoint's tensors) and its metrics lines
    without the timing fields."""
    stem = str(out)[: -len(".safetensors")]
    tensors, _ = checkpoint.load(f"{stem}.resume.safetensors")
    lines = [json.loads(line) for line in open(f"{stem}.metrics.jsonl", encoding="utf-8")]
    return tensors, [{key: value for key, value in line.items() if key not in TIMING_FIELDS} for line in lines]


def assert_same_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], prefixes=("",)) -> None:
    names = sorted(name for name in first if name.startswith(prefixes))
    assert names == sorted(name for name in second if name.startswith(prefixes))
    different = [name for name in names if not torch.equal(first[name], second[name])]
    assert not different, f"not bit-identical: {different}"


# ---------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_checkpoint_bytes(runner, tiny_corpus):
    """Two runs in one process (so the global random state differs between them) with the same
    seed and flags write the same bytes; another seed writes other bytes."""
    flags = ("--max-steps", "6", "--dropout", "0.2", "--num-layers", "2", "--seed", "7")
    for out in ("a", "b"):
        train(runner, tiny_corpus, *flags, "--out", f"{out}/m.safetensors")
    train(runner, tiny_corpus, *flags, "--out", "c/m.safetensors", "--seed", "8")
    first = Path("a/m.safetensors").read_bytes()
    assert first == Path("b/m.safetensors").read_bytes()
    assert first != Path("c/m.safetensors").read_bytes()


def test_same_seed_same_generated_text(runner, tiny_corpus):
    train(runner, tiny_corpus, "--max-steps", "3")
    generate = ("generate", "--checkpoint", "checkpoints/tiny.safetensors", "--prefix", "the ", "--length", "40")
    first = run_cli(runner, *generate, "--seed", "3").stdout
    torch.rand(5)  # the global random state must not matter
    assert run_cli(runner, *generate, "--seed", "3").stdout == first
    assert run_cli(runner, *generate, "--seed", "4").stdout != first
    many = run_cli(runner, *generate, "--seed", "3", "--num-samples", "2").stdout
    assert many == run_cli(runner, *generate, "--seed", "3", "--num-samples", "2").stdout


def test_any_integer_is_a_seed(runner, tiny_corpus):
    for seed in ("-5", str(10**30)):
        train(runner, tiny_corpus, "--max-steps", "2", "--seed", seed)
        run_cli(runner, "generate", "--length", "5", "--seed", seed)


def test_eval_frequency_does_not_change_trajectory(runner, tiny_corpus):
    """Evaluating every 3 steps, every 7, or once per epoch leaves the same weights, optimizer
    state, random state and carried hidden state after 20 steps (dropout on: evaluation must not
    draw random numbers)."""
    flags = ("--max-steps", "20", "--dropout", "0.3", "--num-layers", "2", "--batch-size", "16")
    for out, every in (("a", ["--eval-every", "3"]), ("b", ["--eval-every", "7"]), ("c", [])):
        train(runner, tiny_corpus, *flags, *every, "--out", f"{out}/m.safetensors")
    (first, first_lines), *others = [run_files(f"{out}/m.safetensors") for out in "abc"]
    for tensors, lines in others:
        assert_same_tensors(first, tensors, prefixes=("model.", "optim.", "rng.", "carry."))
        assert lines[-1]["val_loss"] == first_lines[-1]["val_loss"]
    assert [len(lines) for _, lines in [(first, first_lines), *others]] == [7, 3, 2]


# ---------------------------------------------------------------------------------------------
# Faults during training


@pytest.mark.parametrize(("iterator", "optimizer"), [("sequential", "adamw"), ("sequential", "adam"), ("random", "sgd")])
def test_resume_is_bit_identical_to_an_uninterrupted_run(runner, tiny_corpus, iterator, optimizer):
    """30 steps at once, or 17 (a planned stop mid-epoch, between evaluations) then --resume to
    30: the same weights, optimizer state, random state, carried hidden state and loss sums, the
    same best model, and the same metrics lines but for timing. Dropout is on, and 13 batches make
    an epoch, so the run crosses epochs."""
    flags = ("--dropout", "0.3", "--num-layers", "2", "--batch-size", "16", "--eval-every", "5",
             "--iterator", iterator, "--optimizer", optimizer)
    train(runner, tiny_corpus, *flags, "--max-steps", "30", "--out", "once/m.safetensors")
    train(runner, tiny_corpus, *flags, "--max-steps", "17", "--out", "twice/m.safetensors")
    assert json.loads(Path("twice/m.metrics.jsonl").read_text().splitlines()[-1])["step"] == 17
    train(runner, tiny_corpus, *flags, "--max-steps", "30", "--out", "twice/m.safetensors", "--resume")
    (once, once_lines), (twice, twice_lines) = run_files("once/m.safetensors"), run_files("twice/m.safetensors")
    assert_same_tensors(once, twice)
    assert twice_lines == once_lines
    assert [line["step"] for line in once_lines] == [5, 10, 15, 20, 25, 30]
    assert Path("once/m.safetensors").read_bytes() == Path("twice/m.safetensors").read_bytes()
