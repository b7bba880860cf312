"""What charlm guarantees about a user's own text: folders and several files as one corpus, and
fine-tuning a trained model on new text. One test per guarantee, in the style of
tests/guarantees/test_guarantees.py (whose `fails` and `train` they share)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from charlm.checkpoints import files as checkpoint
from charlm.text.corpus import find_corpus
from charlm.text.corpus import file_digest
from charlm.data.loading import load_corpus
from charlm.text.tokens import CHUNK_BYTES
from tests.conftest import ROOT, TINY_MODEL, TINY_TEXT, run_cli
from tests.guarantees.test_guarantees import fails, train

FINE = ("--batch-size", "4", "--seq-len", "8", "--quiet")  # fine-tuning takes its sizes from its checkpoint
OTHER_TEXT = "a machine for travelling through time said the time traveller to his guests at dinner\n" * 8


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    """A nested folder as users have them: text, Markdown, a binary file, a Latin-1 stray, a hidden
    folder and a hidden file."""
    root = tmp_path / "notes"
    (root / "drafts").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_text(TINY_TEXT, encoding="utf-8")
    (root / "drafts" / "b.md").write_text("# draft\n" + OTHER_TEXT, encoding="utf-8")
    (root / "c.md").write_text(TINY_TEXT.upper(), encoding="utf-8")
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "old.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n", encoding="utf-8")
    (root / ".notes.swp").write_text("hidden text\n", encoding="utf-8")
    return root


def text_of(corpus) -> str:
    return "".join(corpus.vocab.decode(corpus.ids.tolist()))


def test_a_folder_is_read_recursively_in_sorted_order_skipping_what_is_not_text(runner, notes):
    """Every text file under the folder, Markdown too, in the order of their sorted paths and joined
    by a blank line; hidden files and folders are left out, a binary file and one that is not UTF-8
    skipped; stderr says how many files were taken and skipped, naming them, and the checkpoint
    records each file read."""
    result = train(runner, notes, "--max-steps", "1")
    (note,) = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert note == (f"note: {notes}: 3 text files taken, 2 skipped: {notes}/logo.png: looks like a binary file "
                    f"(NUL byte at offset 8); {notes}/old.txt: not valid utf-8 at byte offset 3")
    files = ["a.txt", "c.md", "drafts/b.md"]  # sorted
    assert text_of(load_corpus(find_corpus([notes]))) == "\n\n".join([TINY_TEXT, TINY_TEXT.upper(), "# draft\n" + OTHER_TEXT])
    meta = checkpoint.read_metadata("checkpoints/notes.safetensors")
    assert meta["corpus"] == "notes"
    assert meta["corpus_files"] == [{"name": f"{notes}/{name}", "size": (notes / name).stat().st_size,
                                     "sha256": file_digest(notes / name)} for name in files]
    assert "corpus notes (3 files)" in run_cli(runner, "info", "checkpoints/notes.safetensors").stdout


def test_several_paths_are_one_corpus_in_the_order_given(runner, notes, tmp_path):
    """Files and folders named together are one corpus, in the order given; `stats` and `eval`
    read them as `train` does."""
    (tmp_path / "extra.txt").write_text(OTHER_TEXT, encoding="utf-8")
    train(runner, tmp_path / "extra.txt", notes / "drafts", notes / "a.txt", "--max-steps", "1", "--out", "m.safetensors")
    names = [file["name"] for file in checkpoint.read_metadata("m.safetensors")["corpus_files"]]
    assert names == [f"{tmp_path}/extra.txt", f"{notes}/drafts/b.md", f"{notes}/a.txt"]
    text = OTHER_TEXT + "\n\n# draft\n" + OTHER_TEXT + "\n\n" + TINY_TEXT
    paths = (tmp_path / "extra.txt", notes / "drafts", notes / "a.txt")
    assert json.loads(run_cli(runner, "stats", *paths, "--json").stdout)["tokens"] == len(text)
    report = json.loads(run_cli(runner, "eval", "--checkpoint", "m.safetensors", *paths, "--json").stdout)
    assert report["tokens"] == len(text) - 1


def test_include_and_exclude_choose_the_files_of_a_folder(runner, notes):
    """--include and --exclude (repeatable) match a file's path inside the folder or its name; an
    excluded folder is not entered; a choice that leaves nothing is one line that names the globs."""
    def taken(*globs: str) -> str:
        return [line for line in run_cli(runner, "stats", notes, *globs).stderr.splitlines() if "taken" in line][0]

    assert f"{notes}: 2 text files taken" in taken("--include", "*.md")
    assert f"{notes}: 1 text file taken" in taken("--include", "drafts/*")
    assert f"{notes}: 2 text files taken" in taken("--exclude", "drafts")
    assert f"{notes}: 1 text file taken" in taken("--exclude", "*.md", "--exclude", "logo.png")
    fails(runner, "stats", notes, "--include", "*.rst",
          message=f"{notes}: no text file in it; give a folder that holds text files, or change --include / --exclude")


def test_a_file_that_is_not_text_is_skipped_whole_however_far_in_it_is_found(tmp_path, monkeypatch):
    """A file of a folder is checked whole before any of its text is used: one that turns out not
    to be UTF-8 (or to hold a NUL byte) past the part held while checking is left out whole, and a
    long file that is text is read whole."""
    from charlm.text import corpus

    monkeypatch.setattr(corpus, "HELD_CHARS", 100)  # past this a file is checked through, then read again
    size = CHUNK_BYTES + 10  # the fault is in the second block read
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_text("a" * size, encoding="utf-8")
    (tmp_path / "books" / "b.txt").write_bytes(b"b" * size + b"\xff")
    (tmp_path / "books" / "c.txt").write_bytes(b"c" * size + b"\x00")
    (tmp_path / "books" / "d.txt").write_text("d" * 50, encoding="utf-8")
    found = find_corpus([tmp_path / "books"])
    assert text_of(load_corpus(found)) == "a" * size + "\n\n" + "d" * 50
    assert found.skipped == [(f"{tmp_path}/books/b.txt", f"not valid utf-8 at byte offset {size}"),
                             (f"{tmp_path}/books/c.txt", f"looks like a binary file (NUL byte at offset {size})")]


def test_a_fifo_or_a_link_in_a_folder_is_skipped_and_never_opened(runner, notes, monkeypatch):
    """A FIFO in a folder is skipped by its os.stat, never opened, by the reading and by the token
    cache alike (a helper opens its other end if charlm ever does, so that this test fails rather
    than hangs); a link to a folder is not followed, a broken link is skipped."""
    import threading

    os.mkfifo(notes / "pipe.txt")
    os.symlink(notes / "drafts", notes / "elsewhere")
    os.symlink(notes / "gone.txt", notes / "broken.txt")
    done = threading.Event()

    def unblock_a_reader() -> None:
        while not done.wait(0.05):
            try:
                os.close(os.open(notes / "pipe.txt", os.O_WRONLY | os.O_NONBLOCK))  # ENXIO until a reader is there
            except OSError:
                continue

    threading.Thread(target=unblock_a_reader, daemon=True).start()
    try:
        for _ in range(2):  # the second run hits the token cache
            note = run_cli(runner, "train", notes, *TINY_MODEL, "--max-steps", "1", "--overwrite").stderr
            assert f"{notes}: 3 text files taken, 5 skipped: {notes}/elsewhere: a link to a folder, not followed; " \
                   f"{notes}/broken.txt: no such file; {notes}/logo.png: looks like a binary file (NUL byte at offset 8); " \
                   "and 2 more" in note
        (entry,) = Path(".charlm-cache").iterdir()
        files = checkpoint.read_metadata(entry)["files"]  # the FIFO has no size to compare, nor a hash
        assert list(files["skipped"].values()).count("not a regular file (a FIFO)") == 1 and None in files["sizes"]
    finally:
        done.set()


def test_a_file_named_on_the_command_line_is_read_strictly(runner, notes):
    """A folder skips what is not text; the same file named on the command line is an error, as
    a corpus of one file always was."""
    run_cli(runner, "stats", notes)
    fails(runner, "stats", notes / "a.txt", notes / "old.txt",
          message=f"{notes}/old.txt: not valid utf-8 at byte offset 3; convert it to UTF-8 or pass --encoding")
    fails(runner, "train", notes, notes / "logo.png", message="logo.png: looks like a binary file (NUL byte at offset 8)")


EXPECTED = "\n\n".join([TINY_TEXT, TINY_TEXT.upper(), "# draft\n" + OTHER_TEXT])  # the text of `notes`


def test_a_link_to_a_file_outside_the_folder_is_named_and_not_followed(runner, notes, tmp_path):
    """A folder gives its own text: a link in it to a file outside it (a user's other files, a
    secret) is named with how to read it, not followed; a link to a file inside it is read, once.
    Naming the file outside on the command line reads it."""
    (tmp_path / "secret.txt").write_text("password hunter2\n", encoding="utf-8")
    os.symlink(tmp_path / "secret.txt", notes / "z.txt")
    os.symlink("c.md", notes / "also.md")  # relative, inside the folder
    found = find_corpus([notes])
    assert text_of(load_corpus(found)) == EXPECTED
    assert (f"{notes}/z.txt", f"a link to a file outside {notes}, not followed; name that file to read it") in found.skipped
    assert (f"{notes}/c.md", f"the same file as {notes}/also.md, read once") in found.skipped
    note = train(runner, notes, "--max-steps", "1").stderr
    assert f"{notes}/z.txt: a link to a file outside {notes}, not followed" in note
    assert "hunter2" not in text_of(load_corpus(find_corpus([notes, tmp_path / "secret.txt"]))).split("\n\n")[:3]
    assert text_of(load_corpus(find_corpus([notes, notes / "z.txt"]))).endswith("\n\npassword hunter2\n")


def test_charlms_own_files_in_the_folder_are_never_corpus_text(runner, notes):
    """A run whose --out and --cache-dir are inside its corpus folder: its checkpoint, resume state,
    metrics, lock and cache are never read as text by the next run, whose vocab holds no JSON of
    them, and the run's own --resume is not refused because of them. A user's file that only
    looks like a metrics file by its name is text."""
    train(runner, notes, "--max-steps", "2", "--out", notes / "runs" / "m", "--cache-dir", notes / "cache")
    (notes / "runs" / "other.lock").write_bytes(b"")
    assert {path.name for path in (notes / "runs").iterdir()} >= {"m.safetensors", "m.metrics.jsonl", "other.lock"}
    train(runner, notes, "--max-steps", "3", "--out", notes / "runs" / "m", "--cache-dir", notes / "cache", "--resume")
    found = find_corpus([notes])
    assert text_of(load_corpus(found, cache_dir=None)) == EXPECTED
    assert [file.name for file in found.files] == [f"{notes}/{name}" for name in ("a.txt", "c.md", "drafts/b.md")]
    assert "{" not in checkpoint.read_metadata(notes / "runs" / "m.safetensors")["vocab"]["itos"]
    (notes / "mine.metrics.jsonl").write_text("my own notes, in a file of an odd name\n", encoding="utf-8")
    assert text_of(load_corpus(find_corpus([notes]))).endswith("\n\nmy own notes, in a file of an odd name\n")


def test_a_file_reached_twice_is_read_once_and_said(runner, notes):
    """A file reached twice (a folder and a file inside it, named together; a hard link) is read
    once, where it is first reached, and the second is named: its text is never on both sides of
    the held-out split."""
    os.link(notes / "a.txt", notes / "hard.txt")
    for paths in ([notes, notes / "a.txt"], [notes / "a.txt", notes]):
        found = find_corpus(paths)
        assert text_of(load_corpus(found)).count(TINY_TEXT) == 1
        first, second = (f"{notes}/a.txt", f"{notes}/hard.txt")
        assert (second, f"the same file as {first}, read once") in found.skipped
    note = train(runner, notes, notes / "c.md", "--max-steps", "1").stderr
    assert f"{notes}/c.md: the same file as {notes}/c.md, read once" in note
    assert f"{notes}/hard.txt: the same file as {notes}/a.txt, read once" in note
    twice = run_cli(runner, "stats", notes / "a.txt", notes / "a.txt").stderr
    assert f"1 text file taken, 1 skipped: {notes}/a.txt: the same file as {notes}/a.txt, read once" in twice


def test_a_file_name_that_is_not_utf8_is_shown_escaped(runner, notes):
    """A file name with a byte that is not UTF-8 is shown and recorded with the byte escaped
    ("\\xff"), in the note, the checkpoint and `info`: never a UnicodeEncodeError."""
    os.rename(notes / "c.md", os.fsencode(notes) + b"/c\xff.md")
    hostile = notes / "\x1b]0;pwned\x07.txt"  # a name that would drive the terminal
    hostile.write_text(TINY_TEXT, encoding="utf-8")
    result = train(runner, notes, "--max-steps", "1")
    assert "Traceback" not in result.output
    names = [file["name"] for file in checkpoint.read_metadata("checkpoints/notes.safetensors")["corpus_files"]]
    assert names == [str(hostile), f"{notes}/a.txt", f"{notes}/c\\xff.md", f"{notes}/drafts/b.md"]
    hostile.write_text(TINY_TEXT.replace("time", "mite"), encoding="utf-8")  # edited, its characters the same
    resumed = train(runner, notes, "--max-steps", "2", "--resume", "--allow-changed-corpus").stderr
    assert "1 file edited (" in resumed and "\x1b" not in resumed and "\\x1b]0;pwned\\x07.txt" in resumed
    os.rename(notes / "drafts" / "b.md", os.fsencode(notes) + b"/drafts/\xfe.md")
    os.rename(notes / "logo.png", os.fsencode(notes) + b"/\xfdlogo.png")
    note = run_cli(runner, "stats", notes).stderr
    assert f"{notes}/\\xfdlogo.png: looks like a binary file" in note
    single = os.fsdecode(os.fsencode(notes) + b"/a\xff.txt")  # one file: recorded, resumed, held out, cached
    os.rename(notes / "a.txt", single)
    train(runner, single, "--max-steps", "2", "--out", "one.safetensors")
    assert checkpoint.read_metadata("one.safetensors")["corpus"] == "a\\xff.txt"
    assert "damaged" not in train(runner, single, "--max-steps", "3", "--out", "one.safetensors", "--resume").stderr
    assert "note" not in run_cli(runner, "eval", "--checkpoint", "one.safetensors", "--held-out", single).stderr


@pytest.mark.slow  # a real process: seconds to import torch
def test_a_non_ascii_file_name_in_the_c_locale_is_read_and_shown(notes, tmp_path):
    """`é.txt` under LANG=C with Python's own UTF-8 fallbacks off (the file system encoding is then
    ASCII): it is read, named "é.txt" in the checkpoint as in any locale, and escaped on stderr."""
    os.rename(notes / "c.md", notes / "é.md")
    env = {**os.environ, "LANG": "C", "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "charlm", "train", notes, *TINY_MODEL, "--max-steps", "1", "--out",
                           tmp_path / "m"], env=env, capture_output=True, cwd=tmp_path)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode()
    assert f"{notes}: 3 text files taken".encode() in done.stderr
    names = [file["name"] for file in checkpoint.read_metadata(tmp_path / "m.safetensors")["corpus_files"]]
    assert names == [f"{notes}/a.txt", f"{notes}/drafts/b.md", f"{notes}/é.md"]


def test_a_folder_nested_1200_deep_is_read(runner, tmp_path):
    """A folder nested deeper than Python's recursion limit is walked like any other."""
    folder = tmp_path / "deep"
    folder.mkdir()
    for _ in range(1200):
        folder = folder / "d"
        folder.mkdir()
    (folder / "a.txt").write_text(TINY_TEXT, encoding="utf-8")
    (folder.parent / "b.txt").write_text(OTHER_TEXT, encoding="utf-8")
    try:
        assert text_of(load_corpus(find_corpus([tmp_path / "deep"]))) == OTHER_TEXT + "\n\n" + TINY_TEXT  # sorted
        assert f"{tmp_path / 'deep'}: 2 text files taken" in train(runner, tmp_path / "deep", "--max-steps", "1").stderr
    finally:  # bottom up: shutil.rmtree, which pytest cleans up with, recurses
        for path in (folder / "a.txt", folder.parent / "b.txt"):
            path.unlink()
        while folder != tmp_path:
            folder.rmdir()
            folder = folder.parent


def test_a_corpus_of_one_file_is_read_and_split_as_it_always_was(tmp_path, notes):
    """One file: the same ids, with no separator, and the last `val_fraction` held out. A folder
    holding one file gives the same ids and split."""
    single = load_corpus(notes / "a.txt")
    assert text_of(single) == TINY_TEXT
    train_ids, val_ids = single.split(0.1)
    cut = len(single.ids) - int(len(single.ids) * 0.1)
    assert torch.equal(train_ids, single.ids[:cut]) and torch.equal(val_ids, single.ids[cut:])
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.txt").write_text(TINY_TEXT, encoding="utf-8")
    folder = load_corpus(find_corpus([tmp_path / "one"]))
    assert torch.equal(folder.ids, single.ids) and folder.vocab == single.vocab
    assert all(torch.equal(a, b) for a, b in zip(folder.split(0.1), (train_ids, val_ids)))


def test_the_held_out_split_samples_every_part_of_the_corpus(runner, tmp_path):
    """Of several files, the last `val_fraction` of each of 20 equal stretches is held out, so
    files that sort first are validated too, not only the last ones; `stats` says how it is taken."""
    (tmp_path / "letters").mkdir()
    for letter in "abcd":
        (tmp_path / "letters" / f"{letter}.txt").write_text(letter * 1000, encoding="utf-8")
    corpus = load_corpus(find_corpus([tmp_path / "letters"]))
    train_ids, val_ids = corpus.split(0.1)
    assert len(val_ids) == int(len(corpus.ids) * 0.1) and len(train_ids) + len(val_ids) == len(corpus.ids)
    held = "".join(corpus.vocab.decode(val_ids.tolist()))
    assert all(held.count(letter) >= 90 for letter in "abcd")  # a quarter of the held-out part each
    assert sorted(torch.cat([train_ids, val_ids]).tolist()) == sorted(corpus.ids.tolist())
    report = json.loads(run_cli(runner, "stats", tmp_path / "letters", "--json").stdout)
    assert report["held_out"] == "the last 10 % of each of 20 equal stretches (--val-fraction 0.1)"
    one = json.loads(run_cli(runner, "stats", tmp_path / "letters" / "a.txt", "--json").stdout)
    assert one["held_out"] == "the last 10 % (--val-fraction 0.1)"


def test_the_token_cache_notices_an_added_removed_or_edited_file(notes, monkeypatch):
    """A folder's cache entry lists every file's path, size and SHA-256: a file edited (even to the
    same size and time), added or removed is read afresh and replaces the entry; the same files hit
    it without tokenizing."""
    from charlm.data import loading as data  # where load_corpus looks encode_stream up

    cache = notes.parent / "cache"
    load = lambda found=None: load_corpus(found or find_corpus([notes]), cache_dir=cache)  # noqa: E731
    first_found, found = find_corpus([notes]), find_corpus([notes])
    first = load(first_found)
    tokenize = data.encode_stream
    monkeypatch.setattr(data, "encode_stream", lambda *args, **kwargs: pytest.fail("tokenized again"))
    hit = load(found)
    assert hit.cached and torch.equal(hit.ids, first.ids) and hit.documents == 3
    assert found.summary() == first_found.summary() and found.identity() == first_found.identity()
    monkeypatch.setattr(data, "encode_stream", tokenize)
    stat = os.stat(notes / "a.txt")
    (notes / "a.txt").write_text(TINY_TEXT.replace("time", "TIME"), encoding="utf-8")
    os.utime(notes / "a.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    edited = load()
    assert not edited.cached and "TIME" in text_of(edited)
    (notes / "z.txt").write_text("an added file\n", encoding="utf-8")
    added = load()
    assert not added.cached and text_of(added).endswith("\n\nan added file\n")
    (notes / "c.md").unlink()
    removed = load()
    assert not removed.cached and TINY_TEXT.upper() not in text_of(removed)
    assert load().cached and len(list(cache.iterdir())) == 1  # replaced each time, never piled up


def test_resume_on_a_changed_corpus_is_refused_naming_what_changed(runner, notes):
    """--resume compares the files the run started on with those it would read now: an edited, added
    or removed file is one line naming it, unless --allow-changed-corpus; the same files resume."""
    (notes / "z.txt").write_text(TINY_TEXT, encoding="utf-8")
    train(runner, notes, "--max-steps", "2", "--out", "m.safetensors")
    train(runner, notes, "--max-steps", "3", "--out", "m.safetensors", "--resume")  # unchanged: it goes on
    (notes / "a.txt").write_text(TINY_TEXT.replace("time", "mite"), encoding="utf-8")  # the same characters
    (notes / "new.md").write_text(TINY_TEXT, encoding="utf-8")
    (notes / "z.txt").unlink()
    fails(runner, "train", notes, *TINY_MODEL, "--max-steps", "4", "--out", "m.safetensors", "--resume",
          message="the corpus changed since the run at m.resume.safetensors started: "
                  f"1 file edited ({notes}/a.txt); 1 file added ({notes}/new.md); 1 file removed ({notes}/z.txt); "
                  "resume on the same files, or pass --allow-changed-corpus")
    result = train(runner, notes, "--max-steps", "4", "--out", "m.safetensors", "--resume", "--allow-changed-corpus")
    assert "1 file edited" in result.stderr and "going on, as --allow-changed-corpus says" in result.stderr
    assert checkpoint.read_metadata("m.resume.safetensors")["resume"]["step"] == 4
    fails(runner, "train", notes, "--out", "n.safetensors", "--allow-changed-corpus",
          message="--allow-changed-corpus only applies with --resume")
    fails(runner, "train", notes / "a.txt", *TINY_MODEL, "--max-steps", "5", "--out", "m.safetensors", "--resume",
          message="it was trained on 4 files, and now reads one, a.txt")

    # one file, edited so that its vocab stays the same: the resume file's record of it notices
    single = notes / "a.txt"
    train(runner, single, "--max-steps", "2", "--out", "one.safetensors")
    train(runner, single, "--max-steps", "3", "--out", "one.safetensors", "--resume")  # unchanged: it goes on
    single.write_text(single.read_text(encoding="utf-8").replace("mite", "time"), encoding="utf-8")
    fails(runner, "train", single, *TINY_MODEL, "--max-steps", "4", "--out", "one.safetensors", "--resume",
          message="the corpus changed since the run at one.resume.safetensors started: a.txt edited")
    train(runner, single, "--max-steps", "4", "--out", "one.safetensors", "--resume", "--allow-changed-corpus")


@pytest.fixture
def parent(runner, tiny_corpus) -> Path:
    """A language model of TINY_TEXT, trained enough to have learnt something."""
    train(runner, tiny_corpus, "--max-steps", "40", "--lr", "0.01", "--out", "parent.safetensors")
    return Path("parent.safetensors")


def test_a_fine_tuned_model_fits_its_new_text_better_than_its_parent(runner, parent, tmp_path):
    """--init-from starts from a trained model's weights, architecture, vocab and text settings
    with a fresh optimizer and schedule; `eval` scores the child better on the new text than its
    parent, and the child's metadata (and `info`) names its parent and its SHA-256."""
    new = tmp_path / "new.txt"
    new.write_text(OTHER_TEXT, encoding="utf-8")
    run_cli(runner, "train", new, "--init-from", parent, *FINE, "--max-steps", "40", "--lr", "0.01",
            "--out", "child.safetensors")
    score = lambda path: json.loads(run_cli(runner, "eval", "--checkpoint", path, new, "--json").stdout)["loss"]  # noqa: E731
    assert score("child.safetensors") < score(parent) - 0.1
    child, mother = checkpoint.read_metadata("child.safetensors"), checkpoint.read_metadata(parent)
    assert child["model"] == mother["model"] and child["vocab"] == mother["vocab"]
    assert child["parent"] == {"path": str(parent.resolve()), "sha256": file_digest(parent)}
    assert child["training"]["steps"] == 40  # its own schedule, from step 0
    info = run_cli(runner, "info", "child.safetensors").stdout
    assert f"parent       {parent.resolve()} (sha256 {file_digest(parent)})" in info


@pytest.mark.parametrize("embedding", ["8", "0"], ids=["embedding", "onehot"])
def test_new_characters_are_refused_mapped_to_unk_or_added(runner, tmp_path, tiny_corpus, embedding):
    """Characters of the new text that the vocab lacks are one line naming them and their count;
    --unknown unk maps them to <unk>; --extend-vocab adds them after the old ones, as new rows of
    the embedding and the head (new columns of W_ih for one-hot input), every old row and column
    bit-equal to the parent's."""
    from charlm.data.loading import DataConfig
    from charlm.training.setup import language_model_run, load_parent
    from charlm.training.optimization import TrainConfig

    train(runner, tiny_corpus, "--max-steps", "2", "--embedding-size", embedding, "--out", "parent.safetensors")
    new = tmp_path / "new.txt"
    new.write_text(TINY_TEXT + "Zürich, São Paulo!\n" * 8, encoding="utf-8")
    added = ["!", ",", "P", "S", "Z", "ã", "ü"]  # as frequent as each other: by code point
    fails(runner, "train", new, "--init-from", "parent.safetensors", *FINE,
          message="new.txt has 7 characters the model's vocab lacks: '!', ',', 'P', 'S', 'Z', 'ã', 'ü'; pass "
                  "--unknown unk to map them to <unk>, or --extend-vocab to add them")
    tensors, meta = checkpoint.load("parent.safetensors")
    run_cli(runner, "train", new, "--init-from", "parent.safetensors", *FINE, "--max-steps", "1", "--unknown", "unk",
            "--out", "unk.safetensors")
    assert checkpoint.read_metadata("unk.safetensors")["vocab"] == meta["vocab"]
    run_cli(runner, "train", new, "--init-from", "parent.safetensors", *FINE, "--max-steps", "1", "--extend-vocab",
            "--out", "extended.safetensors")
    assert checkpoint.read_metadata("extended.safetensors")["vocab"]["itos"] == meta["vocab"]["itos"] + added
    # The model such a run starts from, before its first step:
    run = language_model_run(find_corpus([new]), DataConfig(unknown="extend"), TrainConfig(batch_size=4, seq_len=8),
                             parent=load_parent("parent.safetensors"))
    grown, old = run.model.state_dict(), len(meta["vocab"]["itos"])
    vocab_dims = {"head.weight": 0, "head.bias": 0,
                  **({"embedding.weight": 0} if embedding != "0" else {"rnn.weight_ih_l0": 1})}
    for name, tensor in grown.items():
        parents = tensors[f"model.{name}"]
        if name in vocab_dims:
            assert tensor.shape[vocab_dims[name]] == old + len(added), name
            assert torch.equal(tensor.narrow(vocab_dims[name], 0, old), parents), name
        else:
            assert torch.equal(tensor, parents), name
    assert set(vocab_dims) <= set(grown)
    fails(runner, "train", new, "--init-from", "parent.safetensors", *FINE, "--extend-vocab", "--unknown", "unk",
          message="--unknown and --extend-vocab are two ways with new characters; choose one")


@pytest.mark.parametrize("flag", [["--model", "gru"], ["--hidden-size", "8"], ["--num-layers", "2"],
                                  ["--embedding-size", "0"], ["--from-scratch"], ["--tokens", "word"],
                                  ["--preprocess", "d2l"], ["--max-vocab", "10"], ["--min-freq", "2"]])
def test_init_from_refuses_flags_that_would_change_its_model(runner, parent, tiny_corpus, flag):
    """With --init-from the architecture, vocab and text settings are the checkpoint's: a flag that
    would change them is refused, by name."""
    fails(runner, "train", tiny_corpus, "--init-from", parent, *FINE, *flag,
          message=f"{flag[0]} would change the model --init-from starts from")


def test_init_from_a_translation_checkpoint_is_refused_in_one_line(runner, tmp_path, tiny_corpus):
    """A pair model is not fine-tuned: one line says so, and what to do."""
    (tmp_path / "rev.tsv").write_text("".join(f"{w}\t{w[::-1]}\n" for w in ["abc", "bca", "cab", "ab"]), encoding="utf-8")
    run_cli(runner, "train", tmp_path / "rev.tsv", "--hidden-size", "8", "--embedding-size", "4", "--epochs", "1",
            "--quiet", "--out", "pairs.safetensors")
    fails(runner, "train", tiny_corpus, "--init-from", "pairs.safetensors", *FINE,
          message="pairs.safetensors is a translation checkpoint; --init-from fine-tunes a language model")
