"""What charlm guarantees to a program that calls it: one test per row, named for the row (the
README's "What charlm guarantees" lists them). Every keyword of `charlm.train`, `charlm.stats`,
`charlm.load` and of a model's methods is checked by its row of `charlm.settings` (its type and
bounds), and every argument by its kind: a wrong one is a `charlm.CharlmError` that names it as the
program did, never a TypeError from deep inside, an allocator's error or a file the user never made.
A stream keeps what it has not handed on, not everything it made.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

import charlm
from charlm import trained as trained_module
from charlm.settings import GENERATE, STATS, TRAIN, TRANSLATE, for_command
from charlm.settings.rows import LARGEST_SIZE
from tests.conftest import TINY_KEYWORDS, TINY_TEXT
from tests.fixtures.make_checkpoints import FOLDER


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A language model and a pair model (copies of the test checkpoints: generation keeps its
    precision decision beside a checkpoint), a corpus, and the folder they are in."""
    folder = tmp_path_factory.mktemp("api")
    for name in ("lstm", "seq2seq"):
        shutil.copy(FOLDER / f"{name}.safetensors", folder / f"{name}.safetensors")
    (folder / "tiny.txt").write_text(TINY_TEXT, encoding="utf-8")
    return {"text": charlm.load(folder / "lstm.safetensors"), "pairs": charlm.load(folder / "seq2seq.safetensors"),
            "corpus": folder / "tiny.txt", "folder": folder}


def refused(call, says: str) -> charlm.CharlmError:
    """`call()` raises a `CharlmError` whose one line starts with `says` (a keyword, as a program names it)."""
    with pytest.raises(charlm.CharlmError) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message and message.startswith(says), message
    return raised.value


def wrong_values(row) -> list:
    """Values the row's type or bounds refuse: another type (bool is not a number here), NaN for a
    bounded float, past the largest size torch takes, past a high bound, outside the choices."""
    if row.choices is not None:
        return ["no such choice", 5]
    if row.kind is bool:
        return ["yes", 1]
    if row.kind is int:
        return ["16", True, 1.5, *([10**20] if row.is_size else []), *([int(row.high) + 1] if row.high is not None else []),
                *([int(row.low) - 1] if row.low is not None else [])]
    if row.kind is float:
        return ["1.0", float("nan"), *([row.low - 1] if row.low is not None else [])]
    if row.kind is str:
        return [5, b"bytes"]
    if row.kind is tuple:
        return [[5], 5]
    return [5, ["a"]]  # a path


@pytest.mark.parametrize(("call", "says"), [
    (lambda models: charlm.train(models["corpus"], hidden_size="16"), "hidden_size must be a whole number, got '16'"),
    (lambda models: charlm.train(models["corpus"], seed="x"), "seed must be a whole number, got 'x'"),
    (lambda models: charlm.train(models["corpus"], hidden_size=True), "hidden_size must be a whole number, got True"),
    (lambda models: charlm.train(models["corpus"], hidden_size=10**20),
     f"hidden_size is too large: {10**20} (at most {LARGEST_SIZE:,})"),
    (lambda models: models["text"].generate(length=5.5), "length must be a whole number, got 5.5"),
    (lambda models: models["text"].generate(num_samples=2.0), "num_samples must be a whole number, got 2.0"),
    (lambda models: models["text"].generate(seed="1"), "seed must be a whole number, got '1'"),
    (lambda models: models["text"].generate(length=10**30), f"length is too large: {10**30} (at most {LARGEST_SIZE:,})"),
    (lambda models: list(models["text"].stream(top_k=10**20)), "top_k is too large"),
    (lambda models: models["text"].generate(temperature=float("inf")), "temperature must be 0 (greedy) or a positive"),
    (lambda models: models["pairs"].translate("ab", beam=10**20), "beam is too large"),
    (lambda models: models["text"].evaluate("the time", held_out="yes"), "held_out must be true or false, got 'yes'"),
    (lambda models: models["text"].generate(temperature=-10**400), "temperature must be 0 (greedy) or a positive number"),
])
def test_every_keyword_refuses_a_wrong_type_or_value_naming_it(models, call, says):
    """The reported cases: a string, a bool or a float for a whole number, a size past what torch
    takes (2**63 - 1), each one line naming the keyword, before anything is read or run."""
    refused(lambda: call(models), says)


def test_every_row_of_every_function_refuses_what_it_does_not_take(models):
    """Each row a function takes refuses each wrong value (`wrong_values`) in one line that starts
    with its keyword: every keyword of `train`, `stats`, `generate`, `stream`, `evaluate` (both
    models') and `translate`, by the rows of `charlm.settings`, the one place of their types and bounds."""
    text, pairs, corpus = models["text"], models["pairs"], models["corpus"]
    calls = {
        "train": (for_command(TRAIN, "train"), lambda **given: charlm.train(corpus, **given)),
        "stats": (for_command({**TRAIN, **STATS}, "stats"), lambda **given: charlm.stats(corpus, **given)),
        "generate": (for_command(GENERATE, "generate"), text.generate),
        "stream": ([row for row in for_command(GENERATE, "generate") if row.name not in ("num_samples", "logprobs")],
                   lambda **given: list(text.stream(**given))),
        "translate": (for_command(TRANSLATE, "translate"), lambda **given: pairs.translate("ab", **given)),
        "pairs.evaluate": ([TRANSLATE[name] for name in ("beam", "length_penalty", "max_length")]
                           + [TRAIN[name] for name in ("held_out", "skip_bad_lines", "encoding")],
                           lambda **given: pairs.evaluate(corpus, **given)),
        "text.evaluate": ([TRAIN[name] for name in ("encoding", "include", "exclude", "held_out")],
                          lambda **given: text.evaluate(corpus, **given)),
    }
    checked = 0
    for rows, call in calls.values():
        for row in rows:
            for value in wrong_values(row):
                refused(lambda: call(**{row.argument: value}), row.argument)
                checked += 1
    assert checked > 300


def test_a_number_of_any_type_is_taken_as_the_number_it_is(models):
    """numpy's numbers (what a notebook's arrays and ranges give) are whole numbers and reals like
    Python's: the same text, the same run, and a checkpoint whose metadata holds plain numbers."""
    import numpy as np

    text = models["text"]
    given = {"length": np.int64(40), "temperature": np.float32(0.5), "top_p": np.float64(0.9), "seed": np.int32(3)}
    assert text.generate("the ", **given, precision="fp32") == \
        text.generate("the ", length=40, temperature=0.5, top_p=0.9, seed=3, precision="fp32")
    run = charlm.train(models["corpus"], **{**TINY_KEYWORDS, "hidden_size": np.int64(16)}, max_steps=np.int16(2),
                       lr=np.float32(0.01), out=models["folder"] / "numpy.safetensors")
    settings = charlm.load(run.checkpoint).info()
    assert settings["model"]["hidden_size"] == 16 and type(settings["model"]["hidden_size"]) is int


@pytest.mark.parametrize(("call", "says"), [
    (lambda models: charlm.train(5), "corpus must be a path or a list of paths"),
    (lambda models: charlm.train([]), "corpus must be a path or a list of paths"),
    (lambda models: charlm.train(""), "corpus must be a path or a list of paths (none empty), got ''"),
    (lambda models: charlm.train([models["corpus"], None]), "corpus must be a path"),
    (lambda models: charlm.stats(None), "corpus must be a path"),
    (lambda models: charlm.load(5), "path must be a path, got 5"),
    (lambda models: charlm.load(models["corpus"], device="tpu"), "device must be one of auto, cpu, cuda, mps"),
    (lambda models: models["text"].evaluate(5), "text_or_path must be a text, a path or a list of paths, got 5"),
    (lambda models: models["text"].evaluate(None), "text_or_path must be"),
    (lambda models: models["text"].inspect(b"the"), "text must be a text (a str)"),
    (lambda models: models["text"].inspect("the", top_k=0), "top_k must be a whole number of 1 or more, got 0"),
    (lambda models: models["pairs"].translate(5), "texts must be a text or a list of texts, got 5"),
    (lambda models: models["pairs"].translate(["ab", 5]), "texts must be a text or a list of texts"),
    (lambda models: models["pairs"].attention(["ab"]), "text must be a text (a str)"),
    (lambda models: models["pairs"].attention("ab", output=5), "output must be a text (a str), got 5"),
    (lambda models: models["pairs"].evaluate(5), "pairs_path must be a path, got 5"),
])
def test_every_argument_of_the_wrong_kind_is_named(models, call, says):
    """Arguments that are not settings are checked by their kind too: a number, None, an empty
    list or an empty string (which `Path` reads as the working folder: a run on every file under
    it) where a path goes, a non-text where a text goes."""
    refused(lambda: call(models), says)


@pytest.mark.parametrize(("call", "keyword"), [
    (lambda models: charlm.train(models["corpus"], hiden_size=8), "hiden_size"),
    (lambda models: charlm.stats(models["corpus"], lr=0.1), "lr"),
    (lambda models: models["text"].generate(bogus=1), "bogus"),
    (lambda models: models["text"].stream(num_samples=2), "num_samples"),
    (lambda models: models["text"].stream(logprobs=3), "logprobs"),
    (lambda models: models["text"].evaluate("the time", beam=3), "beam"),
    (lambda models: models["text"].inspect("the", temperature=2), "temperature"),
    (lambda models: models["pairs"].translate("ab", temperature=2), "temperature"),
    (lambda models: models["pairs"].evaluate(models["corpus"], include="*.txt"), "include"),
    (lambda models: charlm.load(models["corpus"], precision="bf16"), "precision"),
])
def test_an_unknown_keyword_is_a_charlm_error_and_a_type_error(models, call, keyword):
    """A keyword a function does not take names it and what the function takes, as a
    `CharlmError` that is also Python's `TypeError` (what `except TypeError` expects of a call)."""
    error = refused(lambda: call(models), "")
    assert isinstance(error, TypeError) and f"'{keyword}'" in str(error) and "(it takes " in str(error)


def test_a_size_too_big_to_allocate_is_one_charlm_error_saying_out_of_memory(models):
    """`generate(length=10**12)` asks for 8 TB: one line saying so in keywords, as `charlm generate`
    says it in flags, never the allocator's RuntimeError; the same for samples and for training."""
    text = models["text"]
    for call in (lambda: text.generate(length=10**12), lambda: text.generate(num_samples=10**12, length=5)):
        error = refused(call, "out of memory (")
        assert str(error).endswith("bytes asked for); use smaller sizes: length, num_samples")
    error = refused(lambda: charlm.train(models["corpus"], **{**TINY_KEYWORDS, "embedding_size": 10**14},
                                         max_steps=1, out=models["folder"] / "big.safetensors"), "out of memory (")
    assert str(error).endswith("; use smaller sizes: hidden_size, embedding_size, batch_size")


@pytest.mark.parametrize("text", ["", "a", " ", "\ufeff"])
def test_evaluate_and_inspect_never_name_a_file_the_user_never_made(models, text):
    """A text given to `evaluate` or `inspect` is read through a temporary file; a text with
    nothing to score (empty, one token, only a byte-order mark) is named as the text, never as
    that file."""
    for call in (models["text"].evaluate, models["text"].inspect):
        with pytest.raises(charlm.CharlmError) as raised:
            call(text)
        message = str(raised.value)
        assert "text.txt" not in message and "/tmp" not in message and os.sep + "tmp" not in message, message
        assert message.startswith(("text_or_path is an empty text", "text is an empty text", "the text")), message


def _peak_bytes(run, length: int) -> int:
    """The most memory Python held while `run(length)` ran (tracemalloc's peak, all threads)."""
    tracemalloc.start()
    try:
        run(length)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("door", ["stream", "charlm generate"])
def test_a_stream_keeps_what_it_needs_not_everything_it_made(models, monkeypatch, door):
    """`model.stream(...)` and `charlm generate` hand each piece on and keep nothing of it: 20,000
    tokens take the memory of 2,000 (they took ~200 bytes more per token that Python holds alone,
    ~800 with torch's: 80 GB for --length 10**8)."""
    from charlm.cli import cli

    path = str(models["folder"] / "lstm.safetensors")

    def stream(length: int) -> None:
        for _ in models["text"].stream("the ", length=length, seed=0, precision="fp32"):
            pass

    def command(length: int) -> None:
        threads = torch.get_num_threads()  # the command sets them for the free cores
        with open(os.devnull, "w", encoding="utf-8") as sink, monkeypatch.context() as patch:
            patch.setattr(sys, "stdout", sink)
            cli.main(["generate", "--checkpoint", path, "--prefix", "the ", "--length", str(length), "--seed", "0",
                      "--precision", "fp32"], prog_name="charlm", standalone_mode=False)
        torch.set_num_threads(threads)

    run = stream if door == "stream" else command
    run(100)  # what a first run loads once
    short, long = _peak_bytes(run, 2_000), _peak_bytes(run, 20_000)
    assert long - short < 18_000 * 4, (short, long)  # under 4 bytes a token more


def test_a_stream_whose_reader_lags_holds_sampling_back(models, monkeypatch):
    """The pieces a stream makes ahead of its reader are bounded: sampling waits for a reader that
    lags (a slow consumer, a paused notebook cell) instead of queueing the whole text."""
    made = []

    def sample(self, request, on_text):  # a sampler far faster than any model: 100,000 pieces at once
        for index in range(100_000):
            on_text(str(index))
            made.append(index)
        return 0

    monkeypatch.setattr(trained_module.TextModel, "sample", sample)
    pieces = models["text"].stream("the ", length=10)
    assert next(pieces) == "0"
    time.sleep(0.5)  # the sampler runs on while the reader does not read
    assert len(made) <= trained_module.STREAM_AHEAD + 2, len(made)
    assert [int(piece) for piece in pieces] == list(range(1, 100_000 - 1))  # in order; the last, generate's
    assert len(made) == 100_000                                                 # closing line break, held back
