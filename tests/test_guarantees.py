"""What charlm guarantees: one test per row, named for the row (the README's "What charlm
guarantees" lists them).

Rows run the way a user meets them: through the CLI in this process (CliRunner), or as a real
`python -m charlm` process where a signal or a kill is involved. Models are tiny so that every row
is quick; every wait on another process is bounded.
"""

from __future__ import annotations

import json
from pathlib import Path

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
