"""What charlm guarantees about the files a run writes: one test per row, named for the row (the
README's "What charlm guarantees" lists them). Nothing that is not a charlm file of the run is ever
replaced or removed, an input never; what cannot be written is said before training starts; the
token cache is checked before it is trusted; a full disk is one line.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from pathlib import Path

import pytest
import safetensors
import torch

from charlm.checkpoints import files as checkpoint
from charlm.data.ids import content_digest
from charlm.data.loading import load_corpus
from charlm.training.run_files import locked_run
from tests.conftest import TINY_MODEL, TINY_TEXT, run_cli
from tests.guarantees.test_guarantees import WRITER, fails, finish, start, train, wait_for


def files_in(folder: str | Path = ".") -> dict[str, bytes]:
    """Every file under `folder` with its bytes (hidden ones too)."""
    return {str(path): path.read_bytes() for path in sorted(Path(folder).rglob("*")) if path.is_file()}


# -- never an input, never a file that is not the run's ------------------------------------------


@pytest.mark.parametrize("how", ["same name", "symlink", "hard link", "metrics name", "resume name"])
def test_a_run_never_writes_over_its_corpus(runner, tiny_corpus, how):
    """`--out` that is, or whose run files are, the corpus (by name, through a link, or as the
    run's metrics or resume file) is refused, with or without --overwrite, and the corpus is kept."""
    corpus = tiny_corpus
    if how == "same name":  # --out tiny.txt is the run tiny.txt.safetensors: the corpus must be named so
        corpus = Path("notes.safetensors")
        corpus.write_text(TINY_TEXT, encoding="utf-8")
        out = corpus
    elif how == "symlink":
        out = Path("link.safetensors")
        out.symlink_to(corpus)
    elif how == "hard link":
        out = Path("hard.safetensors")
        os.link(corpus, out)
    elif how == "metrics name":
        corpus = Path("notes.metrics.jsonl")
        corpus.write_text(TINY_TEXT, encoding="utf-8")
        out = Path("notes.safetensors")
    else:
        corpus = Path("notes.resume.safetensors")
        corpus.write_text(TINY_TEXT, encoding="utf-8")
        out = Path("notes.safetensors")
    for extra in ((), ("--overwrite",)):
        fails(runner, "train", corpus, *TINY_MODEL, "--max-steps", "2", "--out", out, *extra,
              message="would write over the input")
        assert corpus.read_text(encoding="utf-8") == TINY_TEXT


@pytest.mark.parametrize("role", ["model", "resume", "metrics", "lock"])
def test_a_file_that_is_not_a_run_file_is_never_replaced_or_removed(runner, tiny_corpus, role):
    """A user's file lying where a run file of `--out` goes (its model, resume, metrics or lock
    file) is refused, with --overwrite too, and left as it was."""
    name = {"model": "x.safetensors", "resume": "x.resume.safetensors", "metrics": "x.metrics.jsonl",
            "lock": "x.lock"}[role]
    Path(name).write_text("my notes\n", encoding="utf-8")
    for extra in ((), ("--overwrite",)):
        fails(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "2", "--out", "x.safetensors", *extra,
              message="charlm will not replace it")
        assert Path(name).read_text(encoding="utf-8") == "my notes\n"
    assert not [path for path in os.listdir() if path.startswith("x.") and path != name]


def test_overwrite_replaces_only_the_runs_own_files(runner, tiny_corpus):
    """--overwrite replaces a finished run (model, resume state, metrics) and touches nothing else."""
    train(runner, tiny_corpus, "--max-steps", "2", "--out", "x.safetensors")
    Path("x.notes.txt").write_text("mine", encoding="utf-8")
    before = Path("x.metrics.jsonl").read_text(encoding="utf-8")
    train(runner, tiny_corpus, "--max-steps", "3", "--out", "x.safetensors", "--overwrite")
    assert checkpoint.read_metadata("x.resume.safetensors")["training"]["steps"] == 3
    assert Path("x.metrics.jsonl").read_text(encoding="utf-8") != before
    assert Path("x.notes.txt").read_text(encoding="utf-8") == "mine"


@pytest.mark.parametrize("spelling", ["al/x", "al/x.safetensors", "./al/../al/x.safetensors", "link/x"])
def test_one_run_one_lock_whatever_the_spelling_of_out(runner, tiny_corpus, spelling):
    """While a trainer holds the run `al/x` (whose files `--out al/x` and `--out al/x.safetensors`
    share), a second one refuses, however its --out is spelled; the first's files are untouched."""
    os.makedirs("al")
    Path("link").symlink_to("al")
    with locked_run("al/x.safetensors"):
        fails(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "2", "--out", spelling,
              message="another charlm process is training")
    assert sorted(os.listdir("al")) == []


# -- what cannot be written is said before training -------------------------------------------


def word_corpus(path: Path, words: int) -> Path:
    path.write_text(" ".join(f"w{index:05d}" for index in range(words)) * 2, encoding="utf-8")
    return path


def test_what_save_writes_load_reads(tmp_path, monkeypatch):
    """The largest header `save` writes is the largest `load` reads: a checkpoint just under the
    limit round-trips, one over it is refused before anything is written."""
    monkeypatch.setattr(checkpoint, "MAX_HEADER_BYTES", 4096)
    tensors = {"model.w": torch.zeros(3)}
    path = tmp_path / "m.safetensors"
    fits = 4096 - checkpoint.header_size({"format_version": 1, "task": "lm", "pad": ""}, tensors) - 8
    checkpoint.save(path, tensors, {"task": "lm", "pad": "x" * fits})
    assert checkpoint.load(path)[1]["pad"] == "x" * fits
    with pytest.raises(checkpoint.CheckpointError, match="MB header"):
        checkpoint.save(tmp_path / "n.safetensors", tensors, {"task": "lm", "pad": "x" * 5000})
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_a_vocab_too_big_for_a_checkpoint_is_refused_before_training(runner, tmp_path, monkeypatch):
    """A word vocab whose checkpoint header would pass the limit (millions of words against 64 MB;
    here thousands against a lowered limit) stops before the first step with --max-vocab to use,
    writing no checkpoint; the token cache that cannot hold it costs only the cache; and the
    suggested --max-vocab trains."""
    monkeypatch.setattr(checkpoint, "MAX_HEADER_BYTES", 20_000)
    corpus = word_corpus(tmp_path / "words.txt", 3000)
    result = fails(runner, "train", corpus, *TINY_MODEL, "--tokens", "word", "--max-steps", "2", message="--max-vocab")
    assert "cannot write the token cache" in result.stderr
    assert not Path("checkpoints").exists() or os.listdir("checkpoints") == []
    suggested = result.stderr.strip().splitlines()[-1].split("--max-vocab ")[1].split()[0].replace(",", "")
    run_cli(runner, "train", corpus, *TINY_MODEL, "--tokens", "word", "--max-steps", "2", "--max-vocab", suggested)
    assert checkpoint.load("checkpoints/words.safetensors")[1]["task"] == "lm"


def test_an_out_the_file_system_cannot_hold_is_refused_before_training(runner, tmp_path):
    """Every file of a run, temporaries too, must fit the file system's 255-byte name limit: a
    236-character corpus name trains to its default --out (its temporaries and its token cache
    entry carry a bounded part of the name); a 240-character one, whose resume file would not fit,
    fails before the first step saying to choose a shorter --out, as does a too long --out."""
    fitting = tmp_path / f"{'n' * 236}.txt"
    fitting.write_text(TINY_TEXT, encoding="utf-8")
    result = run_cli(runner, "train", fitting, *TINY_MODEL, "--max-steps", "2")
    assert "cannot write the token cache" not in result.stderr
    assert checkpoint.read_metadata(f"checkpoints/{'n' * 236}.resume.safetensors")["training"]["steps"] == 2
    assert load_corpus(fitting, cache_dir=tmp_path / ".charlm-cache").cached
    too_long = tmp_path / f"{'l' * 240}.txt"
    too_long.write_text(TINY_TEXT, encoding="utf-8")
    fails(runner, "train", too_long, *TINY_MODEL, "--max-steps", "2", message="choose a shorter --out")
    fails(runner, "train", fitting, *TINY_MODEL, "--max-steps", "2", "--out", f"{'m' * 245}.safetensors",
          message="choose a shorter --out")
    assert sorted(os.listdir("checkpoints")) == sorted(f"{'n' * 236}{suffix}" for suffix in
                                                       (".safetensors", ".resume.safetensors", ".metrics.jsonl"))


# -- the token cache is checked before it is trusted --------------------------------------------


def cache_entry(corpus: Path) -> Path:
    (entry,) = Path(corpus.parent, ".charlm-cache").glob("*.safetensors")
    return entry


@pytest.mark.parametrize("damage", ["changed ids", "ids past the vocab", "ids past the vocab, checksum forged"])
def test_a_damaged_token_cache_is_rebuilt_not_trusted(runner, tiny_corpus, damage):
    """Bytes of the cached ids changed, or ids outside the vocab (even with a checksum made to
    match): the run says the cache is damaged, reads the text again, and trains exactly as
    without a cache."""
    train(runner, tiny_corpus, "--max-steps", "3", "--out", "clean.safetensors", "--no-cache")
    fresh = load_corpus(tiny_corpus, cache_dir=tiny_corpus.parent / ".charlm-cache")
    entry = cache_entry(tiny_corpus)
    tensors, meta = checkpoint.load(entry)
    ids = tensors["ids"].clone()
    if damage == "changed ids":
        ids[:50] = ids[50:100]
    else:
        ids[7] = len(fresh.vocab) + 3
    if damage.endswith("forged"):
        meta["content_sha256"] = content_digest(ids, fresh.vocab)
    checkpoint.save(entry, {"ids": ids}, meta)
    result = train(runner, tiny_corpus, "--max-steps", "3", "--out", "again.safetensors")
    assert "token cache" in result.stderr and "damaged" in result.stderr
    assert "(cached)" not in result.stderr
    assert Path("again.safetensors").read_bytes() == Path("clean.safetensors").read_bytes()
    assert load_corpus(tiny_corpus, cache_dir=entry.parent).cached  # rebuilt whole


# -- a full disk ---------------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of `size` mounted at `path` (root only; skips where mounting is not allowed)."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> None:
    with contextlib.suppress(OSError), open(folder / "filler", "wb") as file:
        while True:
            file.write(b"\0" * (1 << 16))


def test_a_full_disk_is_one_line_and_costs_no_run(runner, tiny_corpus, tmp_path):
    """A full disk at --out is one line (no traceback) and a non-zero exit; a full --cache-dir
    costs only the cache: the run goes on and trains."""
    with small_disk(tmp_path / "full", "256k") as full:
        fill(full)
        fails(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "2", "--no-cache",
              "--out", full / "m.safetensors", message="No space left on device")
        assert not list(full.glob(".*"))  # no temporaries left behind
        result = train(runner, tiny_corpus, "--max-steps", "2", "--cache-dir", full, "--out", "m.safetensors")
        assert "cannot write the token cache" in result.stderr
        assert checkpoint.read_metadata("m.safetensors")["training"]["steps"] == 2


def test_a_save_that_the_library_fails_is_an_os_error(tmp_path, monkeypatch):
    """safetensors reports a failed write as its own SafetensorError, not an OSError: `save` turns
    it into the OSError it is (so every command shows it as one line), and writes nothing."""
    def full_disk(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint.safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        checkpoint.save(tmp_path / "m.safetensors", {"w": torch.zeros(2)}, {"task": "lm"})
    assert os.listdir(tmp_path) == []


@pytest.mark.slow  # a real process: seconds to import torch
def test_kill_9_during_a_save_leaves_no_temporary_of_the_library_behind(runner):
    """safetensors streams a checkpoint to a `.tmpXXXXXX` file of its own; a writer killed in the
    middle leaves it inside charlm's private temporary folder, which the next save removes: no
    temporary, charlm's or the library's, stays beside the checkpoint."""
    process = start("-c", WRITER)
    library_temporaries = lambda: list(Path().glob(".m.safetensors.*.tmp/.tmp*"))  # noqa: E731
    wait_for(lambda: Path("m.safetensors").exists() and bool(library_temporaries()), process)
    process.kill()
    finish(process)
    assert library_temporaries(), "the kill did not land in the library's write"
    checkpoint.save("m.safetensors", {"w": torch.zeros(1)}, {"task": "lm"})
    assert sorted(os.listdir()) == ["m.safetensors"]


# -- modes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002], ids=["022", "027", "002"])
def test_files_follow_the_umask(runner, tiny_corpus, umask):
    """Checkpoints, resume states, metrics and cache entries get the mode any new file gets under
    the user's umask (not 0600 whatever it is)."""
    previous = os.umask(umask)
    try:
        train(runner, tiny_corpus, "--max-steps", "2", "--out", "m.safetensors")
        run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "2", "--out", "m.safetensors", "--overwrite")
    finally:
        os.umask(previous)
    for path in ["m.safetensors", "m.resume.safetensors", "m.metrics.jsonl", cache_entry(tiny_corpus)]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask, path


def test_a_disk_that_fills_mid_run_keeps_a_resumable_run(runner, tiny_corpus, monkeypatch):
    """The disk fills after the first evaluation's saves: training stops with one line saying
    which step is saved and to --resume; with room again, --resume finishes the run exactly as an
    unbroken run does."""
    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--eval-every", "2", "--max-steps", "6", "--out", "whole.safetensors")
    save, calls = checkpoint.save, []

    def filling(path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 2:  # the model and the resume state of step 2 are written, then no more
            raise OSError(28, os.strerror(28), os.fspath(path))
        save(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", filling)
    result = fails(runner, "train", tiny_corpus, *TINY_MODEL, "--eval-every", "2", "--max-steps", "6",
                   "--out", "m.safetensors", message="step 2 is saved in m.resume.safetensors")
    assert "--resume" in result.stderr
    monkeypatch.setattr(checkpoint, "save", save)
    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--eval-every", "2", "--max-steps", "6", "--out", "m.safetensors",
            "--resume")
    assert Path("m.safetensors").read_bytes() == Path("whole.safetensors").read_bytes()


@pytest.mark.parametrize("out, message", [(".safetensors", "names no file"), ("tiny.txt/m.safetensors", "is not a folder"),
                                          ("/proc/m.safetensors", "cannot write in /proc")])
def test_an_out_that_cannot_be_written_is_one_line_before_training(runner, tiny_corpus, out, message):
    """--out with no file name, under a file, or in a folder that takes no files: one line before
    the first step, and nothing written."""
    fails(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "2", "--out", out, message=message)
    assert sorted(os.listdir()) == ["tiny.txt"]


def test_a_validation_split_that_leaves_nothing_to_train_on_names_val_fraction(runner, tiny_corpus):
    """--val-fraction 0.999 leaves a handful of tokens: the message blames --val-fraction, not the
    corpus's length (which is fine) or --seq-len."""
    fails(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "2", "--val-fraction", "0.999",
          message="lower --val-fraction")


def test_a_runs_files_are_replaced_together_or_not_at_all(runner, tiny_corpus, monkeypatch):
    """`--out x` is the run `x.safetensors`: beside a finished run it is refused unasked, and with
    --overwrite it replaces the checkpoint, resume state and metrics together (never a file `x`
    beside them); a replacing run that fails before its first save leaves no file of the old run
    beside one of the new, nor any of the new beside the old."""
    from charlm.training.trainer import Trainer

    run = ("x.safetensors", "x.resume.safetensors", "x.metrics.jsonl")
    train(runner, tiny_corpus, "--max-steps", "2", "--out", "x.safetensors")
    before = files_in()
    fails(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "3", "--out", "x",
          message="x.safetensors already holds a run")
    assert files_in() == before
    train(runner, tiny_corpus, "--max-steps", "3", "--out", "x", "--overwrite")
    assert not os.path.exists("x")
    assert [checkpoint.read_metadata(name)["training"]["steps"] for name in run[:2]] == [3, 3]
    assert Path("x.metrics.jsonl").read_text(encoding="utf-8").count('"step": 3') == 1

    def full_disk(self):
        raise OSError(28, "No space left on device", "x.safetensors")

    monkeypatch.setattr(Trainer, "_loop", full_disk)
    fails(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "4", "--out", "x", "--overwrite",
          message="No space left on device")
    assert [name for name in run if os.path.exists(name)] == []


def test_pictures_and_pages_are_written_whole_or_not_at_all(runner, tiny_corpus, tmp_path):
    """`plot --out` and `inside --html` over an earlier file on a full disk: one line, and the
    earlier picture or page is left as it was, never cut short; no temporary is left behind."""
    train(runner, tiny_corpus, "--max-steps", "2", "--out", "m.safetensors")
    with small_disk(tmp_path / "full", "512k") as full:
        run_cli(runner, "plot", "m.metrics.jsonl", "--out", full / "curve.png")
        run_cli(runner, "inside", tiny_corpus, "--checkpoint", "m.safetensors", "--html", full / "view.html")
        before = files_in(full)
        fill(full)
        fails(runner, "plot", "m.metrics.jsonl", "--out", full / "curve.png", "--title", "again",
              message="No space left on device")
        fails(runner, "inside", tiny_corpus, "--checkpoint", "m.safetensors", "--html", full / "view.html",
              message="No space left on device")
        assert {name: data for name, data in files_in(full).items() if not name.endswith("filler")} == before
