"""Shared fixtures: small corpora written per test, and a CLI runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

# The tests' models are tiny: a second thread per op only adds contention (on a shared 2-core
# machine, 2 threads made a tiny training run ~15x slower than 1).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
TIMEMACHINE = ROOT / "corpora" / "timemachine.txt"

TINY_TEXT = (
    "the time traveller for so it will be convenient to speak of him was expounding a recondite matter to us "
    "his grey eyes shone and twinkled and his usually pale face was flushed and animated\n"
) * 8


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """What other programs do on the machine running the tests is not the tests' business: the
    machine reads as unknown (every core free, nothing steered), and a --max-time run trains one
    model whatever pace its steps measure here (`charlm.training.recipe.by_pace`), unless a test
    says otherwise."""
    from charlm.runtime import cores
    from charlm.training import recipe

    monkeypatch.setattr(cores, "_machine_busy", lambda: None)
    monkeypatch.setattr(recipe, "ENSEMBLE_STEPS", float("inf"))


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CliRunner working in a fresh directory (so checkpoints/ is empty)."""
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def run_cli(runner: CliRunner, *args: str, ok: bool = True):
    from charlm.cli import cli

    result = runner.invoke(cli, [str(arg) for arg in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, f"charlm {' '.join(map(str, args))} failed:\n{result.output}"
    return result


TINY_MODEL = ("--hidden-size", "16", "--num-layers", "1", "--embedding-size", "8", "--batch-size", "4",
              "--seq-len", "8", "--quiet")
# TINY_MODEL as the Python API's keywords.
TINY_KEYWORDS = {"hidden_size": 16, "num_layers": 1, "embedding_size": 8, "batch_size": 4, "seq_len": 8, "quiet": True}


def train_tiny(folder: Path, steps: int) -> Path:
    """A tiny language model of TINY_TEXT trained for `steps` steps in `folder`; its checkpoint."""
    import charlm

    (folder / "tiny.txt").write_text(TINY_TEXT, encoding="utf-8")
    return charlm.train(folder / "tiny.txt", **TINY_KEYWORDS, max_steps=steps, out=folder / "tiny.safetensors").checkpoint


TINY_TRANSFORMER = ("--model", "transformer", "--num-layers", "1", "--num-heads", "2", "--embedding-size", "16",
                    "--batch-size", "4", "--seq-len", "8", "--quiet")
TINY_MINGRU = ("--model", "mingru", "--num-layers", "1", "--embedding-size", "8", "--hidden-size", "12",
               "--batch-size", "4", "--seq-len", "8", "--quiet")
# The guarantee rows that hold per kind of model run once for each (the README's transformer column):
# a recurrent model, the transformer, and a min-RNN (trained by a scan, carrying its own kind of state).
TINY_MODELS = {"rnn": TINY_MODEL, "transformer": TINY_TRANSFORMER, "mingru": TINY_MINGRU}
# An ensemble of two tiny recurrent models (--ensemble): the rows of a run's bytes and resume hold for it too.
TINY_ENSEMBLE = (*TINY_MODEL, "--ensemble", "2")
TINY_KINDS = {**TINY_MODELS, "ensemble": TINY_ENSEMBLE}


def assert_serve_writes_what_generate_writes(runner: CliRunner, checkpoint: str) -> None:
    """Three seeded samples through the server's batcher (rows of one request stepped as one batch,
    their states joined and split) are the text `charlm generate` writes for the same seed."""
    pytest.importorskip("starlette", reason="charlm[serve] is not installed")
    pytest.importorskip("httpx", reason="Starlette's test client needs httpx")
    from starlette.testclient import TestClient

    from charlm.serve.app import create_app
    from charlm.serve.catalog import load_catalog

    with TestClient(create_app(load_catalog([checkpoint]))) as client:
        body = {"prefix": "the ", "length": 30, "seed": 2, "num_samples": 3}
        answer = client.post("/v1/generate", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    expected = run_cli(runner, "generate", "--checkpoint", checkpoint, "--prefix", "the ", "--length", "30",
                       "--seed", "2", "--num-samples", "3").stdout
    assert "\n\n".join(answer.json()["samples"]) + "\n" == expected
