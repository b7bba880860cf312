"""`charlm eval --held-out` scores the part of a run's own corpus that the run held out, split as it
split it, for text models as for pair models; a corpus that is not the run's is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import charlm
from tests.conftest import TINY_MODEL, TINY_TEXT, run_cli


def test_a_text_models_held_out_part_is_scored_and_another_corpus_refused(runner, tiny_corpus):
    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "3", "--out", "m.safetensors")
    held = json.loads(run_cli(runner, "eval", "--checkpoint", "m.safetensors", tiny_corpus, "--held-out",
                              "--json").stdout)
    whole = json.loads(run_cli(runner, "eval", "--checkpoint", "m.safetensors", tiny_corpus, "--json").stdout)
    characters = len(Path(tiny_corpus).read_text(encoding="utf-8"))
    assert held["tokens"] == int(characters * 0.1) - 1 and whole["tokens"] == characters - 1  # the last 10 %
    assert charlm.load("m.safetensors").evaluate(tiny_corpus, held_out=True)["loss"] == held["loss"]
    Path("other.txt").write_text(TINY_TEXT[::-1], encoding="utf-8")
    refused = run_cli(runner, "eval", "--checkpoint", "m.safetensors", "other.txt", "--held-out", ok=False)
    assert refused.exit_code == 2 and "other.txt is not the corpus m.safetensors was trained on" in refused.stderr
    Path(tiny_corpus).write_text(TINY_TEXT.replace("e", "a"), encoding="utf-8")  # same name, edited: its SHA-256
    refused = run_cli(runner, "eval", "--checkpoint", "m.safetensors", tiny_corpus, "--held-out", ok=False)
    assert refused.exit_code == 2 and "as the checkpoint records it" in refused.stderr
    Path("m.resume.safetensors").unlink()  # the checkpoint alone knows its corpus
    refused = run_cli(runner, "eval", "--checkpoint", "m.safetensors", tiny_corpus, "--held-out", ok=False)
    assert refused.exit_code == 2 and "as the checkpoint records it" in refused.stderr


def test_a_folders_held_out_part_is_checked_by_its_files(runner, tmp_path):
    notes = Path("notes")
    notes.mkdir()
    for index in range(3):
        (notes / f"{index}.txt").write_text(TINY_TEXT[index * 300:] + TINY_TEXT[: index * 300], encoding="utf-8")
    run_cli(runner, "train", "notes", *TINY_MODEL, "--max-steps", "3", "--out", "n.safetensors")
    held = json.loads(run_cli(runner, "eval", "--checkpoint", "n.safetensors", "notes", "--held-out", "--json").stdout)
    assert 0 < held["tokens"] < sum(len(path.read_text()) for path in notes.iterdir()) // 5
    (notes / "1.txt").write_text("an edit\n" + (notes / "1.txt").read_text(), encoding="utf-8")
    refused = run_cli(runner, "eval", "--checkpoint", "n.safetensors", "notes", "--held-out", ok=False)
    assert refused.exit_code == 2 and "sizes and SHA-256" in refused.stderr


def test_a_pair_models_held_out_pairs_are_its_own_files(runner):
    Path("pairs.tsv").write_text("".join(f"{word}\t{word[::-1]}\n" for word in TINY_TEXT.split()[:40]),
                                 encoding="utf-8")
    run_cli(runner, "train", "pairs.tsv", "--hidden-size", "8", "--embedding-size", "4", "--epochs", "1", "--quiet",
            "--out", "p.safetensors")
    Path("others.tsv").write_text(Path("pairs.tsv").read_text(), encoding="utf-8")
    assert run_cli(runner, "eval", "--checkpoint", "p.safetensors", "pairs.tsv", "--held-out").exit_code == 0
    refused = run_cli(runner, "eval", "--checkpoint", "p.safetensors", "others.tsv", "--held-out", ok=False)
    assert refused.exit_code == 2 and "others.tsv is not the file p.safetensors was trained on" in refused.stderr
    Path("pairs.tsv").write_text("man\tnam\n" + Path("others.tsv").read_text(), encoding="utf-8")  # edited
    refused = run_cli(runner, "eval", "--checkpoint", "p.safetensors", "pairs.tsv", "--held-out", ok=False)
    assert refused.exit_code == 2 and "pairs.tsv is not the file p.safetensors was trained on" in refused.stderr


def test_a_long_evaluation_shows_progress_and_a_short_one_does_not(runner, tiny_corpus, monkeypatch):
    from charlm.evaluation import reports

    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "2")
    quick = run_cli(runner, "eval", "--checkpoint", "checkpoints/tiny.safetensors", tiny_corpus)
    assert "scoring" not in quick.stderr
    monkeypatch.setattr(reports, "PROGRESS_AFTER", 0)  # every evaluation is "long"
    monkeypatch.setattr(reports, "on_terminal", lambda: True)  # and stderr a terminal
    slow = run_cli(runner, "eval", "--checkpoint", "checkpoints/tiny.safetensors", tiny_corpus)
    assert "scoring" in slow.stderr and slow.stdout == quick.stdout
