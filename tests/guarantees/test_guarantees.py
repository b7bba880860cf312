"""What charlm guarantees: one test per row, named for the row (the README's "What charlm
guarantees" lists them).

Rows run the way a user meets them: through the CLI in this process (CliRunner), or as a real
`python -m charlm` process where a signal or a kill is involved (marked slow: starting one costs
seconds of imports). Models are tiny so that every row is quick; every wait on another process is
bounded.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch

from charlm.checkpoints import files as checkpoint

from charlm.checkpoints import loading
from charlm.errors import CorpusError
from charlm.text.tokens import preprocess_chunks, read_chunks
from tests.conftest import ROOT, TINY_KINDS, TINY_MODEL, TINY_MODELS, run_cli

TIMING_FIELDS = ("tokens_per_sec", "elapsed_s")


def train(runner, corpus, *extra, kind: str = "rnn"):
    """A tiny run of a model of `kind` ("rnn": the recurrent model, "transformer", "ensemble")."""
    return run_cli(runner, "train", corpus, *TINY_KINDS[kind], *extra)


def fails(runner, *args, message: str):
    """The command fails the way every bad input must: a non-zero exit and one line on stderr
    that says what is wrong, no traceback."""
    result = run_cli(runner, *args, ok=False)
    assert result.exit_code != 0, f"charlm {' '.join(map(str, args))} succeeded"
    lines = result.stderr.strip().splitlines()  # a "note:" may come before
    assert lines[-1].startswith("charlm: error: "), result.output
    assert not any("error" in line.lower() for line in lines[:-1]), result.output
    assert message in lines[-1], lines[-1]
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def model_file(runner, tiny_corpus) -> Path:
    """A language-model checkpoint, trained for 2 steps in the runner's directory."""
    train(runner, tiny_corpus, "--max-steps", "2")
    return Path("checkpoints/tiny.safetensors")


def rewrite(path: Path, **changes) -> None:
    """Write `path` again with its metadata changed (what anyone can do to a checkpoint)."""
    tensors, meta = checkpoint.load(path)
    checkpoint.save(path, tensors, {**meta, **changes})


LOADING_COMMANDS = [("generate", "--checkpoint", "{}"), ("eval", "--checkpoint", "{}", "tiny.txt"), ("info", "{}")]


def each_loading_command(path) -> list[list[str]]:
    return [[part.format(path) for part in command] for command in LOADING_COMMANDS]


def start(*args: str | Path) -> subprocess.Popen:
    """A real `python -m charlm ...` (or `python -c CODE ...` when args start with "-c") in the
    current directory, importing this checkout's charlm."""
    command = [sys.executable, *(["-m", "charlm"] if args[0] != "-c" else []), *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 60) -> None:
    """Poll `condition` until it holds; fail if `process` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the process ended early: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out after {timeout} s")
        time.sleep(0.005)


def finish(process: subprocess.Popen, timeout: float = 60) -> str:
    """Wait for `process` to end (killing it past `timeout`); its stderr."""
    try:
        return process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def has_saved(out: str) -> Callable[[], bool]:
    """True once the run at `out` has saved its resume state: it holds its lock and is training."""
    return lambda: Path(out[: -len(".safetensors")] + ".resume.safetensors").exists()


def run_files(out: str | Path) -> tuple[dict[str, torch.Tensor], dict, list[dict]]:
    """A run's full training state (the resume checkpoint's tensors and position, which holds the
    loss sums), and its metrics lines, all without timing."""
    stem = str(out)[: -len(".safetensors")]
    tensors, meta = checkpoint.load(f"{stem}.resume.safetensors")
    position = {key: value for key, value in meta["resume"].items() if key != "elapsed"}
    lines = [json.loads(line) for line in open(f"{stem}.metrics.jsonl", encoding="utf-8")]
    return tensors, position, [{key: value for key, value in line.items() if key not in TIMING_FIELDS} for line in lines]


def assert_same_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], prefixes=("",)) -> None:
    names = sorted(name for name in first if name.startswith(prefixes))
    assert names == sorted(name for name in second if name.startswith(prefixes))
    different = [name for name in names if not torch.equal(first[name], second[name])]
    assert not different, f"not bit-identical: {different}"


def assert_same_run(first: str, second: str) -> None:
    """Two runs' training states, positions and metrics (but for timing) are bit-identical."""
    (first_tensors, first_position, first_lines), (second_tensors, second_position, second_lines) = map(
        run_files, (first, second))
    assert_same_tensors(first_tensors, second_tensors)
    assert first_position == second_position
    assert first_lines == second_lines


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# ---------------------------------------------------------------------------------------------
# Bad input: one line on stderr, a non-zero exit, never a traceback


@pytest.mark.parametrize(("command", "message"), [
    (["train", "missing.txt"], "missing.txt: no such file"),
    (["stats", "missing.txt"], "missing.txt: no such file"),
    (["eval", "--checkpoint", "{model}", "missing.txt"], "missing.txt: no such file"),
    (["eval", "--checkpoint", "missing.safetensors", "tiny.txt"], "missing.safetensors: no such checkpoint"),
    (["generate", "--checkpoint", "missing.safetensors"], "missing.safetensors: no such checkpoint"),
    (["info", "missing.safetensors"], "missing.safetensors: no such checkpoint"),
])
def test_missing_path(runner, model_file, command, message):
    fails(runner, *[part.format(model=model_file) for part in command], message=message)


@pytest.mark.parametrize(("command", "message"), [
    (["train", "folder"], "folder: no text file in it (skipped: folder/image.png: looks like a binary file"),
    (["stats", "folder"], "folder: no text file in it (skipped: folder/image.png: looks like a binary file"),
    (["eval", "--checkpoint", "{model}", "folder"], "folder: no text file in it (skipped: folder/image.png"),
    (["generate", "--checkpoint", "folder"], "folder: is a directory"),
    (["info", "folder"], "folder: is a directory"),
    (["train", "tiny.txt", "--out", "folder"], "is a directory"),
])
def test_a_directory(runner, model_file, command, message):
    """A folder is a corpus (tests/guarantees/test_guarantees_corpora.py): one with no text file in it (here
    a binary file and a hidden one) is one line naming what it skipped. A folder is never a
    checkpoint, nor an --out."""
    os.mkdir("folder")
    Path("folder/image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    Path("folder/.hidden.txt").write_text("text, but hidden", encoding="utf-8")
    fails(runner, *[part.format(model=model_file) for part in command], message=message)


def test_empty_corpus(runner, model_file):
    Path("empty.txt").write_bytes(b"")
    Path("punctuation.txt").write_text("... !!! 123\n", encoding="utf-8")
    for command in (["train", "empty.txt"], ["stats", "empty.txt"], ["eval", "--checkpoint", model_file, "empty.txt"]):
        fails(runner, *command, message="empty.txt: the file is empty")
    fails(runner, "train", "punctuation.txt", "--preprocess", "d2l", message="no tokens left after preprocessing")


def test_binary_file(runner, model_file):
    Path("image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    for command in (["train", "image.png"], ["stats", "image.png"], ["eval", "--checkpoint", model_file, "image.png"]):
        fails(runner, *command, message="looks like a binary file (NUL byte at offset 8)")


def test_not_utf8_names_the_byte_offset(runner):
    Path("latin.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    fails(runner, "train", "latin.txt", message="not valid utf-8 at byte offset 3; convert it to UTF-8 or pass --encoding")
    assert json.loads(run_cli(runner, "stats", "latin.txt", "--encoding", "latin-1", "--json").stdout)["tokens"] == 12
    fails(runner, "stats", "latin.txt", "--encoding", "klingon", message="unknown encoding 'klingon'")
    fails(runner, "stats", "latin.txt", "--encoding", "base64", message="'base64' is not a text encoding")
    # The offset is the file's, wherever the chunks are cut and with a byte-order mark before it.
    for data, offset in [(b"ab\xe2\x82X", 2), (b"\xef\xbb\xbfab\xff", 5), ("é".encode() * 5 + b"\xc3", 10)]:
        Path("bad.txt").write_bytes(data)
        for chunk_bytes in (1, 2, 3, 4, 1 << 20):
            with pytest.raises(CorpusError, match=f"byte offset {offset};"):
                "".join(read_chunks("bad.txt", chunk_bytes=chunk_bytes))


@pytest.mark.parametrize(("command", "message"), [
    (["train", "tiny.txt", "--hidden-size", "-4"], "Invalid value for '--hidden-size': -4 is not in the range x>=1"),
    (["train", "tiny.txt", "--batch-size", "0"], "'--batch-size'"),
    (["train", "tiny.txt", "--val-fraction", "1.5"], "'--val-fraction'"),
    (["train", "tiny.txt", "--dropout", "nan"], "dropout must be in [0, 1), got nan"),
    (["train", "tiny.txt", "--lr", "nan"], "--lr must be a positive number"),
    (["train", "tiny.txt", "--max-vocab", "1"], "the vocab would hold only <unk>"),
    (["train", "tiny.txt", "--min-freq", "100000"], "the vocab would hold only <unk>"),
    (["train", "tiny.txt", "--model", "gpt2"], "'--model'"),
    (["train", "tiny.txt", "--embedding-size", str(10**14)], "out of memory"),
    (["train"], "Missing argument 'CORPUS...'"),
    (["generate", "--checkpoint", "{model}", "--top-p", "0"], "'--top-p'"),
    (["generate", "--checkpoint", "{model}", "--temperature", "inf"], "--temperature must be 0 (greedy) or a positive number"),
    (["generate", "--checkpoint", "{model}", "--length", "-1"], "'--length'"),
    # Several samples are printed whole, so kept: too long to keep is said at once (one sample streams).
    (["generate", "--checkpoint", "{model}", "--length", str(10**14), "--num-samples", "2"], "out of memory"),
    (["generate", "--checkpoint", "{model}", "--num-samples", str(10**14)], "out of memory"),
    (["generate", "--checkpoint", "{model}", "--bogus"], "No such option '--bogus'. (see charlm generate --help)"),
    (["eval", "--checkpoint", "{model}", "tiny.txt", "--device", "tpu"], "'--device'"),
    (["stats", "tiny.txt", "--top", "-1"], "'--top'"),
])
def test_bad_flag_values(runner, model_file, command, message):
    fails(runner, *[part.format(model=model_file) for part in command], message=message)


def test_extreme_but_valid_flag_values_work(runner, tiny_corpus, model_file):
    for cell in ("lstm", "gru --from-scratch"):  # bf16 autocast on the CPU: torch's layers, not the fast path
        train(runner, tiny_corpus, "--precision", "bf16", "--model", *cell.split(), "--max-steps", "2", "--out", "bf16.safetensors", "--overwrite")
    generate = ("generate", "--checkpoint", model_file, "--prefix", "the ", "--length", "30")
    greedy = run_cli(runner, *generate, "--greedy").stdout
    assert run_cli(runner, *generate, "--temperature", "1e-45", "--seed", "1").stdout == greedy
    assert run_cli(runner, *generate, "--temperature", "1e300", "--top-k", str(10**9)).stdout.startswith("the ")
    assert run_cli(runner, *generate, "--length", "0").stdout == "the \n"


@pytest.mark.parametrize(("content", "message"), [
    (b"hello world, not a checkpoint", "not a safetensors file"),
    (b"\x00" * 4, "too short"),
    (struct.pack("<Q", 10**15) + b"{}", "bad header size"),  # claims a petabyte of header: never allocated
])
def test_checkpoint_that_is_not_safetensors(runner, tiny_corpus, content, message):
    Path("bad.safetensors").write_bytes(content)
    for command in each_loading_command("bad.safetensors"):
        fails(runner, *command, message=message)


def test_safetensors_file_that_is_not_charlms(runner, tiny_corpus):
    safetensors.torch.save_file({"w": torch.zeros(2)}, "other.safetensors", metadata={"format": "pt"})
    for command in each_loading_command("other.safetensors"):
        fails(runner, *command, message="not a charlm checkpoint")


def test_truncated_checkpoint(runner, model_file):
    data = model_file.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 20):
        model_file.write_bytes(data[:cut])
        for command in each_loading_command(model_file):
            fails(runner, *command, message="truncated")


def test_checkpoint_from_a_newer_format_version(runner, model_file):
    rewrite(model_file, format_version=checkpoint.FORMAT_VERSION + 1)
    for command in each_loading_command(model_file):
        fails(runner, *command, message="upgrade charlm")


def test_checkpoint_of_the_wrong_task(runner, tiny_corpus, model_file):
    """`generate` needs a language model and `translate` a translation model; `eval` takes either
    (it scores text with one and pairs with the other), `info` reads any."""
    fails(runner, "translate", "--checkpoint", model_file, "the",
          message="is a language-model checkpoint; this command needs a translation checkpoint")
    rewrite(model_file, task="translate")
    fails(runner, "generate", "--checkpoint", model_file,
          message="is a translation checkpoint; this command needs a language-model checkpoint")
    assert "translate" in run_cli(runner, "info", model_file).stdout
    train(runner, tiny_corpus, "--max-steps", "1", "--out", "r/m.safetensors")
    rewrite(Path("r/m.resume.safetensors"), task="translate")
    fails(runner, "train", tiny_corpus, *TINY_MODEL, "--out", "r/m.safetensors", "--resume",
          message="is a translation checkpoint")


@pytest.mark.parametrize(("field", "value"), [("step", "x"), ("epoch", -1), ("optimizer_scalars", "x"), ("loss_sum", None)])
def test_damaged_resume_state_is_refused(runner, tiny_corpus, field, value):
    train(runner, tiny_corpus, "--max-steps", "2", "--out", "r/m.safetensors")
    tensors, meta = checkpoint.load("r/m.resume.safetensors")
    checkpoint.save("r/m.resume.safetensors", tensors, {**meta, "resume": {**meta["resume"], field: value}})
    fails(runner, "train", tiny_corpus, *TINY_MODEL, "--out", "r/m.safetensors", "--resume",
          message="damaged resume state")


def test_prefix_with_characters_outside_the_vocab(runner, model_file):
    generate = ("generate", "--checkpoint", model_file, "--length", "3")
    fails(runner, *generate, "--prefix", "the Zoë", message="the prefix has 2 characters the model never saw: 'Z', 'ë'")
    assert run_cli(runner, *generate, "--prefix", "the Zoë", "--unknown", "skip").stdout.startswith("the o")
    assert run_cli(runner, *generate, "--prefix", "the Zoë", "--unknown", "unk").stdout.startswith("the <unk>o")
    all_skipped = run_cli(runner, *generate, "--prefix", "ZZ", "--unknown", "skip")
    assert len(all_skipped.stdout) == 3 + 1  # as with no prefix, and said so
    assert "every character of the prefix was unknown and skipped" in all_skipped.stderr


# ---------------------------------------------------------------------------------------------
# Awkward text is text


def test_utf8_bom_and_crlf_are_read_as_text(runner, tiny_corpus):
    """A file saved by Notepad (byte-order mark, CRLF) is the same corpus as its plain twin."""
    Path("windows.txt").write_bytes(b"\xef\xbb\xbf" + tiny_corpus.read_bytes().replace(b"\n", b"\r\n"))
    plain = run_cli(runner, "stats", tiny_corpus, "--json").stdout
    assert run_cli(runner, "stats", "windows.txt", "--json").stdout == plain
    train(runner, "windows.txt", "--max-steps", "2")
    itos = json.loads(run_cli(runner, "info", "checkpoints/windows.safetensors", "--json").stdout)["vocab"]["itos"]
    assert "\n" in itos and "\r" not in itos and "\ufeff" not in itos


def test_single_enormous_line_is_read_in_bounded_memory(runner):
    """An 8 MiB file without a line break (two 4 MiB chunks) is counted right in both
    preprocessing modes, and reading it never holds the line: with 64 KiB chunks a 2 MiB line
    costs well under 1 MiB of Python memory, d2l preprocessing included."""
    words = "It was the Time-Traveller, 1895! "
    Path("line.txt").write_text(words * (8 * 2**20 // len(words)), encoding="utf-8")
    repeats = 8 * 2**20 // len(words)
    for preprocess, per_repeat in (("none", len(words)), ("d2l", len("it was the time traveller "))):
        report = json.loads(run_cli(runner, "stats", "line.txt", "--preprocess", preprocess, "--json").stdout)
        assert report["tokens"] == repeats * per_repeat - (preprocess == "d2l")  # d2l strips the last space
    Path("line.txt").write_text(words * (2 * 2**20 // len(words)), encoding="utf-8")
    tracemalloc.start()
    try:
        for _ in preprocess_chunks(read_chunks("line.txt", chunk_bytes=1 << 16), "d2l"):
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_corpus_shorter_than_one_batch_shrinks_the_batch(runner):
    """A short text still trains, on fewer rows, and says so; one too short for a single row of
    --seq-len says what to lower."""
    Path("short.txt").write_text("the time machine, by h g wells. " * 10, encoding="utf-8")  # 288 train tokens
    result = run_cli(runner, "train", "short.txt", *TINY_MODEL, "--batch-size", "64", "--max-steps", "2")
    assert "note: the training split has 288 tokens, too few for batches of 64 x 8: using --batch-size 35" \
        in result.stderr
    assert json.loads(run_cli(runner, "info", "checkpoints/short.safetensors", "--json").stdout)["train"]["batch_size"] == 35
    fails(runner, "train", "short.txt", *TINY_MODEL, "--seq-len", "200", message="lower --seq-len to 144 or less")
    Path("two.txt").write_text("ab", encoding="utf-8")
    fails(runner, "train", "two.txt", "--val-fraction", "0.5", message="has 1 tokens, too few for one row of --seq-len "
          "35 (that needs 70); use a longer corpus")


# ---------------------------------------------------------------------------------------------
# A checkpoint is never executed, its metadata is only data


class CreatesAFile:
    """Unpickling this creates the file `marker`: the proof that a loader ran a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["pickle-0", "pickle-2", "pickle-5", "torch.save", "torch.save-legacy"])
def test_pickle_checkpoint_is_refused_without_being_executed(runner, tiny_corpus, tmp_path, kind):
    marker = tmp_path / "executed"
    payload = {"model": CreatesAFile(marker)}
    for name in ("evil.pt", "evil.safetensors"):  # by content, whatever the name
        path = Path(name)
        if kind.startswith("pickle"):
            path.write_bytes(pickle.dumps(payload, protocol=int(kind[-1])))
        else:
            torch.save(payload, path, _use_new_zipfile_serialization=kind == "torch.save")
        for command in each_loading_command(path):
            fails(runner, *command, message="" if kind == "pickle-0" and name == "evil.safetensors" else "pickle")
    os.replace("evil.safetensors", "run.resume.safetensors")
    fails(runner, "train", tiny_corpus, *TINY_MODEL, "--out", "run.safetensors", "--resume",
          message="" if kind == "pickle-0" else "pickle")
    assert not marker.exists()


@pytest.mark.parametrize("low_bytes", [b"\x80", b"PK"])
def test_a_header_length_that_looks_like_a_pickle_still_loads(runner, model_file, low_bytes):
    """A header length is 8 little-endian bytes: 1 in 256 checkpoints has one starting with
    b"\x80", a pickle's first byte. Padding the metadata makes one on purpose."""
    tensors, meta = checkpoint.load(model_file)
    checkpoint.save(model_file, tensors, {**meta, "note": ""})
    header_size = struct.unpack("<Q", model_file.read_bytes()[:8])[0]
    unpadded = len(model_file.read_bytes()[8 : 8 + header_size].rstrip(b" "))  # safetensors pads to 8
    modulus, target = 1 << (8 * len(low_bytes)), int.from_bytes(low_bytes, "little")
    checkpoint.save(model_file, tensors, {**meta, "note": "x" * ((target - unpadded) % modulus)})
    assert model_file.read_bytes().startswith(low_bytes)
    run_cli(runner, "generate", "--checkpoint", model_file, "--length", "5")
    run_cli(runner, "info", model_file)


def test_hostile_metadata_cannot_allocate_or_write_outside_the_given_paths(runner, tiny_corpus, model_file, tmp_path):
    """Metadata is parsed as data: wrong types, a config claiming 10,000 layers (each would be a
    module, even on the meta device) or 10**12 units, JSON nested past Python's recursion limit,
    NaN weights, path-like strings. Every command refuses in one line or, where the metadata does
    not matter, works; and no command writes a file, anywhere."""
    tensors, meta = checkpoint.load(model_file)
    escape = str(tmp_path.parent / f"{tmp_path.name}-escaped")
    variants = {
        "vocab is a list": ({"vocab": []}, "damaged vocab"),
        "model is a list": ({"model": []}, "damaged model config"),
        "10,000 layers": ({"model": {**meta["model"], "num_layers": 10**4}}, "more layers than the file has weights"),
        "10**12 units": ({"model": {**meta["model"], "hidden_size": 10**12}}, "damaged model config"),
        "tokens is a path": ({"tokens": f"../{escape}"}, "damaged vocab or text settings"),
        "paths and junk": ({"corpus": escape, "out": escape, "training": "x", "train": [escape]}, None),
    }
    for name, (changes, message) in variants.items():
        checkpoint.save("hostile.safetensors", tensors, {**meta, **changes})
        before = files_under(tmp_path)
        for command in each_loading_command("hostile.safetensors"):
            if message is None or command[0] == "info":
                run_cli(runner, *command)  # info shows any metadata
            else:
                fails(runner, *command, message=message)
        assert files_under(tmp_path) == before, name
    checkpoint.save("hostile.safetensors", {**tensors, "model.head.bias": tensors["model.head.bias"] * torch.nan}, meta)
    fails(runner, "generate", "--checkpoint", "hostile.safetensors", message="NaN or infinite weights")
    nested = {"__metadata__": {"charlm": "[" * 100_000 + "]" * 100_000}}
    safetensors.torch.save_file({"w": torch.zeros(1)}, "hostile.safetensors", metadata=nested["__metadata__"])
    for command in each_loading_command("hostile.safetensors"):
        fails(runner, *command, message="damaged charlm metadata")
    assert not Path(escape).exists()


# ---------------------------------------------------------------------------------------------
# A run is never lost


SIGNAL_RUN = (*TINY_MODEL, "--dropout", "0.3", "--num-layers", "2", "--batch-size", "16", "--eval-every", "5",
              "--epochs", "1000")


@pytest.mark.slow  # a real process: seconds to import torch
@pytest.mark.parametrize(("number", "kind"), [(signal.SIGTERM, "rnn"), (signal.SIGINT, "rnn"),
                                              (signal.SIGINT, "transformer")],
                         ids=["SIGTERM", "SIGINT", "SIGINT-transformer"])
def test_sigterm_writes_a_resumable_checkpoint_and_exits_nonzero(runner, tiny_corpus, number, kind):
    """The signal lands at some step s of a running `charlm train`: the step finishes, the resume
    state is saved, the exit is non-zero with one line saying how to resume; and resuming to s + 7
    gives what an unbroken run of s + 7 steps gives, bit for bit."""
    run = (*TINY_MODELS[kind], *SIGNAL_RUN[len(TINY_MODEL):])
    process = start("train", tiny_corpus, *run, "--out", "run/m.safetensors")
    wait_for(has_saved("run/m.safetensors"), process)
    process.send_signal(number)
    stderr = finish(process)
    assert process.returncode == 130
    stopped = checkpoint.load("run/m.resume.safetensors")[1]["resume"]["step"]
    name = signal.Signals(number).name
    assert stderr.strip() == (f"charlm: error: stopped by {name} at step {stopped}; the run is saved in "
                              "run/m.resume.safetensors: run the same command with --resume to continue")
    steps = str(stopped + 7)
    run_cli(runner, "train", tiny_corpus, *run, "--out", "run/m.safetensors", "--resume", "--max-steps", steps)
    run_cli(runner, "train", tiny_corpus, *run, "--out", "once/m.safetensors", "--max-steps", steps)
    assert_same_run("run/m.safetensors", "once/m.safetensors")


@pytest.mark.parametrize(("kind", "iterator", "optimizer"), [
    ("rnn", "sequential", "adamw"), ("rnn", "sequential", "adam"), ("rnn", "random", "sgd"),
    ("rnn", "sequential", "muon"), ("transformer", "random", "adamw"), ("transformer", "random", "muon"),
    ("ensemble", "sequential", "adamw"),
])
def test_resume_is_bit_identical_to_an_uninterrupted_run(runner, tiny_corpus, kind, iterator, optimizer):
    """30 steps at once, or in three runs stopped by --max-steps at 10 (an epoch's end) and 17
    (mid-epoch), both between evaluations, each continued with --resume: the same weights,
    optimizer state, random state, carried hidden state, position and loss sums, the same best
    model, and the same metrics lines but for timing. Dropout is on; 10 batches make an epoch.
    The transformer's run is in its warm-up (--warmup-steps 12) when it stops at 10."""
    flags = ("--dropout", "0.3", "--num-layers", "2", "--batch-size", "16", "--eval-every", "4",
             "--iterator", iterator, "--optimizer", optimizer, *(["--warmup-steps", "12"] if kind == "transformer" else []))
    train(runner, tiny_corpus, *flags, "--max-steps", "30", "--out", "once/m.safetensors", kind=kind)
    for steps, resume in (("10", []), ("17", ["--resume"]), ("30", ["--resume"])):
        train(runner, tiny_corpus, *flags, "--max-steps", steps, "--out", "thrice/m.safetensors", *resume, kind=kind)
        assert json.loads(Path("thrice/m.metrics.jsonl").read_text().splitlines()[-1])["step"] == int(steps)
    assert_same_run("once/m.safetensors", "thrice/m.safetensors")
    assert [line["step"] for line in run_files("once/m.safetensors")[2]] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert Path("once/m.safetensors").read_bytes() == Path("thrice/m.safetensors").read_bytes()


WRITER = """
import sys, torch
from charlm.checkpoints import files as checkpoint
for version in range(1, 10**6):
    checkpoint.save("m.safetensors", {"w": torch.full((1 << 23,), float(version))}, {"task": "lm", "version": version})
"""


@pytest.mark.slow  # a real process: seconds to import torch
def test_kill_9_during_checkpoint_write_keeps_the_previous_checkpoint(runner):
    """A process saving 32 MiB checkpoints over and over is SIGKILLed while a write is under way
    (its temporary file is there): the checkpoint loads whole, as the last complete version; the
    half-written temporary is never taken for a checkpoint, and the next save removes it."""
    process = start("-c", WRITER)
    temporaries = lambda: list(Path().glob(".m.safetensors.*.tmp"))  # noqa: E731
    wait_for(lambda: Path("m.safetensors").exists() and bool(temporaries()), process)
    process.kill()
    finish(process)
    assert process.returncode == -signal.SIGKILL
    assert temporaries(), "the kill did not land in a write"
    tensors, meta = checkpoint.load("m.safetensors")
    assert meta["version"] >= 1 and torch.equal(tensors["w"], torch.full((1 << 23,), float(meta["version"])))
    assert loading.latest(".", "lm") == "./m.safetensors"
    checkpoint.save("m.safetensors", {"w": torch.zeros(1)}, {"task": "lm"})
    assert not temporaries()


@pytest.mark.slow  # a real process: seconds to import torch
def test_kill_9_during_training_can_be_resumed(runner, tiny_corpus):
    """kill -9 leaves a lock file whose lock the OS has dropped, maybe a metrics line cut short:
    neither stops `--resume`, which goes on from the last saved state."""
    process = start("train", tiny_corpus, *SIGNAL_RUN, "--out", "run/m.safetensors")
    wait_for(has_saved("run/m.safetensors"), process)
    process.kill()
    finish(process)
    assert Path("run/m.lock").exists()  # the file stays; the OS has dropped its lock
    with open("run/m.metrics.jsonl", "a", encoding="utf-8") as file:
        file.write('{"step": 99999, "epoch"')  # what a kill in the middle of a line leaves
    saved = checkpoint.load("run/m.resume.safetensors")[1]["resume"]["step"]
    train(runner, tiny_corpus, *SIGNAL_RUN, "--out", "run/m.safetensors", "--resume", "--max-steps", str(saved + 5))
    steps = [json.loads(line)["step"] for line in open("run/m.metrics.jsonl", encoding="utf-8")]
    assert steps == list(range(5, saved + 1, 5)) + [saved + 5]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(runner, tiny_corpus):
    """A learning rate of 1e38 sends the weights to infinity: training stops at the next check
    with advice, writing nothing; the kept state resumes at a sane rate."""
    flags = (*TINY_MODEL, "--eval-every", "5", "--lr-schedule", "constant", "--out", "run/m.safetensors")
    train(runner, tiny_corpus, *flags, "--max-steps", "10")
    good = files_under(Path("run"))
    fails(runner, "train", tiny_corpus, *flags, "--max-steps", "40", "--resume", "--lr", "1e38",
          message="the training loss became NaN or infinite near step 15; the best model so far (step 10) is kept "
                  "in run/m.safetensors and the training state of step 10 in run/m.resume.safetensors; try a lower "
                  "--lr (now 1e+38) or a smaller --clip (now 1.0), with --resume to go on from there")
    assert files_under(Path("run")) == good
    train(runner, tiny_corpus, *flags, "--max-steps", "15", "--resume", "--lr", "1e-3")
    assert json.loads(Path("run/m.metrics.jsonl").read_text().splitlines()[-1])["lr"] == 1e-3


@pytest.mark.slow  # a real process: seconds to import torch
def test_second_trainer_on_same_out_refuses(runner, tiny_corpus):
    """While one `charlm train` runs, a second to the same --out refuses, fresh or --resume, and
    touches none of the first one's files; the first goes on undisturbed."""
    process = start("train", tiny_corpus, *SIGNAL_RUN, "--out", "run/m.safetensors")
    wait_for(has_saved("run/m.safetensors"), process)
    metrics = Path("run/m.metrics.jsonl")
    try:
        first_line = metrics.read_text().splitlines()[0]
        for extra in ([], ["--resume"]):
            fails(runner, "train", tiny_corpus, *SIGNAL_RUN, "--out", "run/m.safetensors", *extra,
                  message="another charlm process is training to run/m.safetensors; wait for it, or choose another --out")
        lines = metrics.read_text().splitlines()
        assert lines[0] == first_line  # a fresh run would have deleted the metrics first
        wait_for(lambda: len(metrics.read_text().splitlines()) > len(lines), process)
    finally:
        process.send_signal(signal.SIGTERM)
        finish(process)
    assert process.returncode == 130


# ---------------------------------------------------------------------------------------------
# Same seed, same result


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_same_seed_same_checkpoint_bytes(runner, tiny_corpus, kind):
    """Two runs in one process (so the global random state differs between them) with the same
    seed and flags write the same bytes; another seed writes other bytes."""
    flags = ("--max-steps", "6", "--dropout", "0.2", "--num-layers", "2", "--seed", "7")
    for out in ("a", "b"):
        train(runner, tiny_corpus, *flags, "--out", f"{out}/m.safetensors", kind=kind)
    train(runner, tiny_corpus, *flags, "--out", "c/m.safetensors", "--seed", "8", kind=kind)
    first = Path("a/m.safetensors").read_bytes()
    assert first == Path("b/m.safetensors").read_bytes()
    assert first != Path("c/m.safetensors").read_bytes()


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_same_seed_same_generated_text(runner, tiny_corpus, kind):
    train(runner, tiny_corpus, "--max-steps", "3", kind=kind)
    generate = ("generate", "--checkpoint", "checkpoints/tiny.safetensors", "--prefix", "the ", "--length", "40")
    first = run_cli(runner, *generate, "--seed", "3").stdout
    torch.rand(5)  # the global random state must not matter
    assert run_cli(runner, *generate, "--seed", "3").stdout == first
    assert run_cli(runner, *generate, "--seed", "4").stdout != first
    many = run_cli(runner, *generate, "--seed", "3", "--num-samples", "2").stdout
    assert many == run_cli(runner, *generate, "--seed", "3", "--num-samples", "2").stdout


def test_any_integer_is_a_seed(runner, tiny_corpus):
    for seed in ("-5", str(10**30)):
        train(runner, tiny_corpus, "--max-steps", "2", "--seed", seed, "--overwrite")
        run_cli(runner, "generate", "--length", "5", "--seed", seed)


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_eval_frequency_does_not_change_trajectory(runner, tiny_corpus, kind):
    """Evaluating every 3 steps, every 7, or as often as a run evaluates by default leaves the
    same weights, optimizer
    state, random state and carried hidden state after 20 steps (dropout on: evaluation must not
    draw random numbers)."""
    flags = ("--max-steps", "20", "--dropout", "0.3", "--num-layers", "2", "--batch-size", "16")
    for out, every in (("a", ["--eval-every", "3"]), ("b", ["--eval-every", "7"]), ("c", [])):
        train(runner, tiny_corpus, *flags, *every, "--out", f"{out}/m.safetensors", kind=kind)
    (first, _, first_lines), *others = [run_files(f"{out}/m.safetensors") for out in "abc"]
    for tensors, _, lines in others:
        assert_same_tensors(first, tensors, prefixes=("model.", "optim.", "rng.", "carry."))
        assert lines[-1]["val_loss"] == first_lines[-1]["val_loss"]
    # by default every 4 steps: 20 evaluations would be every step, but one predicts 149 tokens, over a
    # tenth of the work of 4 steps of 16 x 8 (its forward passes costing a third of training's)
    assert [len(lines) for _, _, lines in [(first, None, first_lines), *others]] == [7, 3, 5]


def test_a_new_run_never_replaces_an_existing_one_unasked(runner, tiny_corpus):
    """A second `train` to the same --out refuses (naming --resume and --overwrite) and leaves the
    first run's files as they were; --overwrite replaces them."""
    train(runner, tiny_corpus, "--max-steps", "2")
    files = {path: path.read_bytes() for path in Path("checkpoints").iterdir()}
    result = fails(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "3", message="already holds a run")
    assert "--resume" in result.stderr and "--overwrite" in result.stderr
    assert {path: path.read_bytes() for path in Path("checkpoints").iterdir()} == files
    train(runner, tiny_corpus, "--max-steps", "3", "--overwrite")
    assert json.loads(run_cli(runner, "info", "checkpoints/tiny.safetensors", "--json").stdout)["training"]["steps"] == 3
