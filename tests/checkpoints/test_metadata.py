"""Checkpoint metadata, typed (`charlm.checkpoints.metadata`): one writer, one reader, the JSON object charlm has
always written, and anyone's metadata read without an error."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

import charlm
from charlm.checkpoints import files as checkpoint
from charlm.errors import CheckpointError
from charlm.checkpoints.metadata import LanguageModelMetadata, PairModelMetadata, describe, read, write
from tests.conftest import run_cli
from tests.fixtures.make_checkpoints import FOLDER, RUNS, TEXT

FIXTURES = sorted(FOLDER.glob("*.safetensors"))


def stored_text(path: Path) -> str:
    """The metadata's JSON text exactly as the file holds it."""
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + size])["__metadata__"]["charlm"]


@pytest.mark.parametrize("path", FIXTURES, ids=lambda path: path.name)
def test_reading_and_writing_a_checkpoints_metadata_gives_its_bytes_back(path):
    text = stored_text(path)
    meta = read(json.loads(text))
    assert json.dumps(write(meta), ensure_ascii=False) == text  # key for key, in order
    assert type(meta) is (PairModelMetadata if meta.task == "translate" else LanguageModelMetadata)
    assert read(write(meta)) == meta and meta.extra == {}


def test_a_run_writes_its_metadata_as_charlm_always_did(runner):
    """A fresh run with a fixture's flags writes the fixture's keys in the fixture's order, and
    since stop 21 its one corpus file's SHA-256 after its name."""
    Path("text.txt").write_text(TEXT, encoding="utf-8")
    run_cli(runner, "train", *RUNS["lstm"], "--out", "lstm.safetensors", "--seed", "1")
    for name in ("lstm.safetensors", "lstm.resume.safetensors"):
        old = list(json.loads(stored_text(FOLDER / name)))
        expected = [*old[: old.index("corpus") + 1], "corpus_sha256", *old[old.index("corpus") + 1 :]]
        assert list(json.loads(stored_text(Path(name)))) == expected


def test_the_fields_are_what_the_file_says():
    meta = read(checkpoint.read_metadata(FOLDER / "finetuned.safetensors"))
    assert (meta.task, meta.kind, meta.tokens, meta.preprocess) == ("lm", "model", "char", "none")
    assert meta.corpus == "more.txt"
    assert meta.model["cell"] == "lstm" and meta.training["steps"] == 2 and set(meta.parent) == {"path", "sha256"}
    assert meta["tokens"] == meta.tokens and dict(meta) == write(meta)  # it reads as its JSON object too
    pair = read(checkpoint.read_metadata(FOLDER / "seq2seq.safetensors"))
    assert pair.architecture == "seq2seq" and pair.source_vocab["itos"][0] == "<unk>" and pair.parent is None


def test_a_written_dataclass_reads_back_the_same():
    meta = PairModelMetadata(task="translate", architecture="tagger", model={"vocab_size": 3}, tokens="char",
                             preprocess="none", source_vocab={"itos": ["<unk>"]}, target_vocab={"itos": ["<unk>"]},
                             corpus="pairs.tsv", kind="model")
    text = json.dumps(write(meta))
    assert json.dumps(write(read(json.loads(text)))) == text
    assert list(write(meta)) == ["task", "architecture", "model", "source_vocab", "target_vocab", "tokens",
                                 "preprocess", "corpus", "kind"]


def test_a_field_of_the_wrong_type_reads_as_missing_and_is_kept_as_it_was():
    header = {"format_version": 1, "task": ["lm"], "model": [], "tokens": 5, "training": "x", "corpus_files": {},
              "note": "anyone's key"}
    meta = read(header)
    assert meta.task is None and meta.model is None and meta.training is None and meta.corpus_files is None
    assert meta.damaged("training") and not meta.damaged("note") and not meta.damaged("parent")
    assert write(meta) == header and meta == header  # written back as read
    summary = describe(header)
    assert summary["task"] == ["lm"] and summary["tokens"] == 5  # shown as the file has them
    assert summary["model"] == {} and summary["training"] == {} and summary["corpus_files"] is None


def test_a_hostile_header_is_refused_by_the_loaders_in_their_words_and_shown_by_info(runner, tmp_path):
    tensors, meta = checkpoint.load(FOLDER / "lstm.safetensors")
    for changes, message in [({"vocab": []}, "damaged vocab or text settings in charlm metadata"),
                             ({"tokens": ["char"]}, "damaged vocab or text settings in charlm metadata"),
                             ({"model": []}, "damaged model config in charlm metadata")]:
        checkpoint.save(tmp_path / "hostile.safetensors", tensors, {**meta, **changes})
        with pytest.raises(CheckpointError, match=message):
            charlm.load(tmp_path / "hostile.safetensors")
        shown = json.loads(run_cli(runner, "info", str(tmp_path / "hostile.safetensors"), "--json").stdout)
        assert shown == {**meta, **changes}
    checkpoint.save(tmp_path / "junk.safetensors", tensors, {**meta, "training": "x", "train": [1]})
    model = charlm.load(tmp_path / "junk.safetensors")  # what generation does not need, it does not check
    assert model.info()["training"] == "x" and model.meta.training is None
