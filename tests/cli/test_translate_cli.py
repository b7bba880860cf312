"""Pairs through the CLI: train, translate, eval and info on pair files, and the lessons' results."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from charlm.cli import cli
from tests.conftest import ROOT, TIMEMACHINE, run_cli

CORPORA = ROOT / "corpora"
# The lessons' aligned model: one-hot input, an RNN of 5, Adam at lr 0.1 for 15 epochs.
LESSON_TAGGER = ("--model-type", "tagger", "--model", "rnn", "--embedding-size", "0", "--hidden-size", "5",
                 "--optimizer", "adam", "--lr", "0.1", "--epochs", "15", "--seed", "1", "--quiet")
TINY_SEQ2SEQ = ("--hidden-size", "16", "--embedding-size", "8", "--batch-size", "4", "--quiet")
PAIRS_TEXT = "".join(f"{word}\t{word[::-1]}\n" for word in
                     ["abc", "bca", "cab", "aab", "bba", "cca", "ab", "ba", "ca", "abca", "bcab", "cabc"])


@pytest.fixture
def pairs_file(runner, tmp_path):
    path = tmp_path / "rev.tsv"
    path.write_text(PAIRS_TEXT, encoding="utf-8")
    return path


@pytest.mark.parametrize(("corpus", "source", "target"), [("hello.tsv", "hello", "ohlol"),
                                                          ("hihell.tsv", "hihell", "ihello")])
def test_the_lessons_tagger_learns_its_pair_in_15_epochs(runner, corpus, source, target):
    run_cli(runner, "train", CORPORA / corpus, *LESSON_TAGGER)
    stem = corpus.split(".")[0]
    assert run_cli(runner, "translate", "--checkpoint", f"checkpoints/{stem}.safetensors", source).stdout == target + "\n"
    meta = json.loads(run_cli(runner, "info", f"checkpoints/{stem}.safetensors", "--json").stdout)
    assert meta["task"] == "translate" and meta["architecture"] == "tagger" and meta["training"]["steps"] == 15
    assert meta["source_vocab"]["itos"][:4] == ["<unk>", "<pad>", "<bos>", "<eos>"]


def test_translate_and_eval_end_to_end(runner, pairs_file):
    run_cli(runner, "train", pairs_file, *TINY_SEQ2SEQ, "--epochs", "2")
    result = run_cli(runner, "translate", "abc", "ca")
    assert "using checkpoints/rev.safetensors" in result.stderr
    lines = result.stdout.split("\n")
    assert len(lines) == 3 and lines[2] == "" and all(set(line) <= set("abc") for line in lines)
    piped = runner.invoke(cli, ["translate"], input="abc\n\nca\n")
    assert piped.exit_code == 0 and piped.stdout == f"{lines[0]}\n\n{lines[1]}\n"
    beam = run_cli(runner, "translate", "--beam", "3", "--max-length", "4", "abc").stdout
    assert len(beam.strip()) <= 4
    report = json.loads(run_cli(runner, "eval", pairs_file, "--json").stdout)
    assert report["pairs"] == report["sources"] == 12 and 0 <= report["exact_match"] <= 1 and report["cer"] >= 0
    assert report["exact_match"] == pytest.approx(sum(
        run_cli(runner, "translate", line.split("\t")[0]).stdout.strip() == line.split("\t")[1]
        for line in PAIRS_TEXT.splitlines()) / 12)
    held_out = json.loads(run_cli(runner, "eval", pairs_file, "--held-out", "--json", "--beam", "2").stdout)
    assert held_out["pairs"] == 1  # 10 % of 12 pairs
    shown = run_cli(runner, "eval", pairs_file).stdout
    assert re.fullmatch(r"exact match [\d.]+ %  CER [\d.]+  \(12 pairs, 12 distinct sources\)\n", shown)
    info = run_cli(runner, "info", "checkpoints/rev.safetensors").stdout
    assert "seq2seq: " in info and "source vocab 7, target vocab 7" in info


def test_sentence_pairs_get_bleu_or_the_name_of_the_extra(runner, tmp_path, monkeypatch):
    pytest.importorskip("sacrebleu")
    path = tmp_path / "s.tsv"
    path.write_text("a b\tb a\nb c\tc b\na c\tc a\n", encoding="utf-8")
    run_cli(runner, "train", path, *TINY_SEQ2SEQ, "--max-steps", "2", "--val-fraction", "0")
    report = json.loads(run_cli(runner, "eval", path, "--json").stdout)
    assert 0 <= report["bleu"] <= 100
    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    result = run_cli(runner, "eval", path)
    assert "BLEU" not in result.stdout and "pip install 'charlm[bleu]'" in result.stderr


def test_pairs_keep_the_last_model_and_text_the_best(runner, pairs_file, tiny_corpus):
    keep = lambda path: json.loads(run_cli(runner, "info", path, "--json").stdout)["train"]["keep"]
    run_cli(runner, "train", pairs_file, *TINY_SEQ2SEQ, "--max-steps", "1")
    run_cli(runner, "train", tiny_corpus, "--hidden-size", "8", "--batch-size", "2", "--seq-len", "8",
            "--max-steps", "1", "--quiet")
    assert keep("checkpoints/rev.safetensors") == "last" and keep("checkpoints/tiny.safetensors") == "best"


def test_attention_plot(runner, pairs_file, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    run_cli(runner, "train", pairs_file, *TINY_SEQ2SEQ, "--max-steps", "2")
    result = run_cli(runner, "translate", "--attention-plot", "a.png", "abc")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "a.png" in result.stderr
    assert "one input" in run_cli(runner, "translate", "--attention-plot", "a.png", "ab", "ba", ok=False).stderr
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert "pip install 'charlm[plot]'" in run_cli(runner, "translate", "--attention-plot", "b.png", "ab", ok=False).stderr
    run_cli(runner, "train", pairs_file, *TINY_SEQ2SEQ, "--max-steps", "2", "--no-attention", "--out", "plain.safetensors")
    result = run_cli(runner, "translate", "--checkpoint", "plain.safetensors", "--attention-plot", "c.png", "ab", ok=False)
    assert "no attention" in result.stderr


def test_pairs_file_with_malformed_lines_reports_line_numbers(runner, tmp_path):
    text = "man\twomen\nno tab here\nking\tqueen\na\tb\tc\n\tempty source\nup\t\nhigh\tlow\n"
    (tmp_path / "bad.tsv").write_text(text, encoding="utf-8")
    result = run_cli(runner, "train", "bad.tsv", "--quiet", ok=False)
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = result.stderr.strip()
    assert "\n" not in error  # one line
    for part in ["4 malformed lines", "line 2 (no tab)", "line 4 (2 tabs)", "line 5 (empty source)",
                 "line 6 (empty target)", "--skip-bad-lines", "--task lm"]:
        assert part in error
    result = run_cli(runner, "train", "bad.tsv", "--skip-bad-lines", "--max-steps", "1", "--hidden-size", "8")
    assert "skipped 4 malformed lines of bad.tsv: 2, 4, 5, 6" in result.stderr
    assert "3 pairs to train on" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "rev.tsv", "--seq-len", "8"], "--seq-len only applies to language models"),
        (["train", TIMEMACHINE, "--attention"], "--attention only applies to pair corpora"),
        (["train", "rev.tsv", "--model-type", "tagger", "--attention"], "the tagger has none"),
        (["train", "unequal.tsv", "--model-type", "tagger"], "line 2 (2 -> 4 characters)"),
        (["train", "rev.tsv", "--embedding-size", "0"], "one-hot"),
        (["translate", "abc"], "charlm train corpora/wordpairs.tsv"),
        (["eval", "rev.tsv"], "charlm train corpora/wordpairs.tsv"),
        (["eval", "--checkpoint", "lm.safetensors", "rev.tsv", "--held-out"], "rev.tsv is not the corpus lm.safetensors was trained on"),  # text models have one too
    ],
)
def test_pair_user_errors_are_one_line_and_non_zero(runner, pairs_file, tiny_corpus, args, message):
    (pairs_file.parent / "unequal.tsv").write_text("ab\tcd\nup\tdown\n", encoding="utf-8")
    if "lm.safetensors" in args:
        run_cli(runner, "train", tiny_corpus, "--hidden-size", "8", "--batch-size", "2", "--seq-len", "8",
                "--max-steps", "1", "--out", "lm.safetensors", "--quiet")
    result = run_cli(runner, *args, ok=False)
    assert result.exit_code != 0 and message in result.stderr and "Traceback" not in result.output


def test_task_lm_trains_a_language_model_on_a_pair_file(runner, pairs_file):
    run_cli(runner, "train", pairs_file, "--task", "lm", "--hidden-size", "8", "--batch-size", "2", "--seq-len", "8",
            "--max-steps", "2", "--quiet")
    assert json.loads(run_cli(runner, "info", "checkpoints/rev.safetensors", "--json").stdout)["task"] == "lm"
    run_cli(runner, "generate", "--length", "3", "--seed", "0")


@pytest.mark.slow
def test_defaults_translate_all_six_seed_word_pairs(runner):
    result = run_cli(runner, "train", CORPORA / "wordpairs.tsv", "--quiet")
    assert result.stderr == ""
    words = run_cli(runner, "translate", "man", "black", "king", "girl", "up", "high").stdout.split()
    assert words == ["women", "white", "queen", "boy", "down", "low"]


@pytest.mark.slow
def test_binary_addition_script_adds_held_out_operands(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "binary_addition.py"), "--train", "500",
                             "--test", "500", "--out", str(tmp_path)], cwd=ROOT, check=True, capture_output=True,
                            text=True)
    figure = float(re.search(r"([\d.]+) % exact sums on 500 held-out", result.stdout).group(1))
    assert figure >= 99.0
