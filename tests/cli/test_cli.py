"""The CLI end to end, through click's CliRunner, on tiny models and corpora. What bad input does
is in tests/guarantees/test_guarantees.py."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pytest
import torch

from charlm.models.recurrent import LanguageModel, ModelConfig
from tests.conftest import TIMEMACHINE, TINY_MODEL, run_cli


def train_tiny(runner, corpus, *extra):
    return run_cli(runner, "train", corpus, *TINY_MODEL, "--max-steps", "3", *extra)


def test_stats_gives_d2ls_numbers(runner):
    result = run_cli(runner, "stats", TIMEMACHINE, "--preprocess", "d2l", "--json")
    report = json.loads(result.stdout)
    assert report["tokens"] == 170_580 and report["vocab_size"] == 28
    assert report["most_frequent"][0] == [" ", 29_927]


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("scratch", [False, True], ids=["torch", "scratch"])
@pytest.mark.parametrize("embedding", ["8", "0"], ids=["embedding", "onehot"])
def test_every_variant_trains_through_the_cli(runner, tiny_corpus, cell, scratch, embedding):
    args = ["--model", cell, "--embedding-size", embedding, "--num-layers", "2", "--dropout", "0.1"]
    train_tiny(runner, tiny_corpus, *args, *(["--from-scratch"] if scratch else []))
    meta = json.loads(run_cli(runner, "info", "checkpoints/tiny.safetensors", "--json").stdout)
    assert meta["model"]["cell"] == cell and meta["model"]["from_scratch"] == scratch
    assert meta["model"]["embedding_size"] == int(embedding)
    assert meta["training"]["steps"] == 3
    lines = (runner_path := "checkpoints/tiny.metrics.jsonl") and open(runner_path).read().splitlines()
    record = json.loads(lines[-1])
    for key in ("step", "epoch", "tokens", "train_loss", "val_loss", "val_ppl", "tokens_per_sec", "elapsed_s"):
        assert key in record
    assert record["step"] == 3 and record["tokens"] == 3 * 4 * 8


def test_train_generate_eval_info_round_trip(runner, tiny_corpus):
    train_tiny(runner, tiny_corpus, "--out", "runs/t.safetensors", "--max-steps", "20", "--eval-every", "10")
    generate = ["generate", "--checkpoint", "runs/t.safetensors", "--prefix", "the ", "--length", "40", "--seed", "3"]
    first = run_cli(runner, *generate)  # the same again: tests/guarantees/test_guarantees.py
    assert first.stdout.startswith("the ") and len(first.stdout) == len("the ") + 40 + 1
    many = run_cli(runner, *generate, "--num-samples", "3")
    assert len([line for line in many.stdout.split("\n") if line.startswith("the ")]) == 3
    report = json.loads(run_cli(runner, "eval", "--checkpoint", "runs/t.safetensors", tiny_corpus, "--json").stdout)
    assert report["tokens"] == len(tiny_corpus.read_text()) - 1
    assert report["ppl"] == pytest.approx(2 ** report["bpc"], rel=1e-6)
    assert 1 < report["ppl"] < 28  # better than uniform over the vocab after 20 steps
    info = run_cli(runner, "info", "runs/t.safetensors").stdout
    assert "cell=lstm" in info and "20 steps" in info  # the default cell
    metrics = [json.loads(line) for line in open("runs/t.metrics.jsonl")]
    assert [m["step"] for m in metrics] == [10, 20]


def test_generate_without_checkpoint_uses_the_newest_and_says_so(runner, tiny_corpus):
    result = run_cli(runner, "generate", "--length", "5", ok=False)
    assert result.exit_code != 0 and "charlm train" in result.stderr
    train_tiny(runner, tiny_corpus)
    result = run_cli(runner, "generate", "--length", "5", "--seed", "0")
    assert "using checkpoints/tiny.safetensors" in result.stderr
    assert len(result.stdout) == 6  # only the text (and a newline) on stdout


@pytest.mark.parametrize("command", ["train", "generate", "eval", "stats", "info", "plot"])
def test_every_command_has_help_with_an_example(runner, command):
    result = run_cli(runner, command, "--help")
    assert "charlm " + command in result.stdout


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from charlm.cli import cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_second_run_reads_its_tokens_from_the_cache(runner, tiny_corpus):
    tiny = ["train", tiny_corpus, *[arg for arg in TINY_MODEL if arg != "--quiet"], "--max-steps", "1", "--overwrite"]
    first = run_cli(runner, *tiny)
    assert "(cached)" not in first.stderr
    assert len(list((tiny_corpus.parent / ".charlm-cache").iterdir())) == 1
    assert "tokens (cached)" in run_cli(runner, *tiny).stderr
    assert "(cached)" not in run_cli(runner, *tiny, "--no-cache").stderr
    run_cli(runner, *tiny, "--cache-dir", "elsewhere", "--tokens", "word", "--max-vocab", "5")
    assert len(list((tiny_corpus.parent / "elsewhere").iterdir())) == 1


def test_the_same_seed_gives_the_same_weights(runner, tiny_corpus):
    from charlm.checkpoints.files import load

    for name in ("a", "b"):
        train_tiny(runner, tiny_corpus, "--max-steps", "1", "--seed", "5", "--out", f"{name}.safetensors")
    first, second = load("a.safetensors")[0], load("b.safetensors")[0]
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


@dataclass
class ToyConfig:
    """A language model's config without `from_scratch`: the flag has nothing to set."""

    vocab_size: int
    cell: str = "gru"
    embedding_size: int = 8
    hidden_size: int = 16
    num_layers: int = 1
    dropout: float = 0.0


class ToyModel(LanguageModel):
    def __init__(self, config: ToyConfig) -> None:
        super().__init__(ModelConfig(**asdict(config)))


def test_an_architecture_registered_after_import_is_one_train_takes(runner, tiny_corpus, monkeypatch):
    """--model reads the registry when the command runs: an architecture registered in-process
    trains, its own defaults over the task's and under the command line's. A model flag its config
    has no field for, or a text architecture named for pairs, is one line naming both."""
    from charlm.models import registry

    monkeypatch.setitem(registry.ARCHITECTURES, ("lm", "toy"), registry.Architecture(
        "lm", "toy", ToyModel, ToyConfig, fixed={"cell": "gru"}, defaults={"hidden_size": 12}))
    toy = ("train", tiny_corpus, "--model", "toy", "--batch-size", "4", "--seq-len", "8", "--max-steps", "1", "--quiet")
    assert "[rnn|gru|lstm|transformer|mingru|minlstm|toy]" in run_cli(runner, "train", "--help").stdout
    for extra, hidden_size in (((), 12), (("--hidden-size", "10"), 10)):
        run_cli(runner, *toy, *extra, "--out", f"toy{hidden_size}.safetensors")
        meta = json.loads(run_cli(runner, "info", f"toy{hidden_size}.safetensors", "--json").stdout)
        assert meta["architecture"] == "toy" and meta["model"]["hidden_size"] == hidden_size
    result = run_cli(runner, *toy, "--from-scratch", ok=False)
    assert result.exit_code == 2
    assert result.stderr == "charlm: error: --from-scratch does not apply to --model toy (see charlm train --help)\n"
    pairs = tiny_corpus.with_name("pairs.tsv")
    pairs.write_text("ab\tba\ncd\tdc\n", encoding="utf-8")
    result = run_cli(runner, "train", pairs, "--model", "toy", ok=False)
    assert result.exit_code == 2 and "--model toy is for text; for pairs --model takes a cell" in result.stderr
