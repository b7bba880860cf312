"""Checkpoint round trips and files; what a bad checkpoint does is in test_guarantees.py."""

from __future__ import annotations

import os

import pytest
import torch

from charlm.checkpoints import files as checkpoint

from charlm.checkpoints import loading
from charlm.errors import CheckpointError
from charlm.models.recurrent import LanguageModel, ModelConfig
from charlm.text.tokens import Vocab


def saved_model(path, **meta_overrides):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=4, cell="gru", embedding_size=3, hidden_size=5, num_layers=1)
    model = LanguageModel(config)
    meta = {"task": "lm", "kind": "model", "model": vars(config).copy(),
            "vocab": Vocab({"a": 3, "b": 2, "c": 1}).to_dict(), "tokens": "char", "preprocess": "none",
            **meta_overrides}
    checkpoint.save(path, loading.model_tensors(model), meta)
    return model


def test_round_trip_rebuilds_the_same_model(tmp_path):
    path = tmp_path / "m.safetensors"
    model = saved_model(path)
    loaded, meta, vocab = loading.load_model(path, "lm")
    assert meta["format_version"] == checkpoint.FORMAT_VERSION
    assert vocab.itos == ["<unk>", "a", "b", "c"]
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_same_content_gives_the_same_bytes(tmp_path):
    saved_model(tmp_path / "a.safetensors")
    saved_model(tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_latest_finds_the_newest_model_of_a_task(tmp_path):
    saved_model(tmp_path / "old.safetensors")
    saved_model(tmp_path / "new.safetensors")
    os.utime(tmp_path / "old.safetensors", (1, 1))
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    assert loading.latest(tmp_path, "lm") == str(tmp_path / "new.safetensors")
    assert loading.latest(tmp_path, "translate") is None


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    from charlm.runtime import files as runtime

    path = tmp_path / "f.bin"
    runtime.atomic_write(path, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(runtime.os, "replace", broken_replace)
    with pytest.raises(OSError):
        runtime.atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temporary left behind


@pytest.mark.parametrize("architecture", ["seq2seq", "tagger"])
def test_translation_checkpoints_rebuild_their_model_and_both_vocabs(tmp_path, architecture):
    from dataclasses import asdict

    from charlm.text.pairs import Pair, pair_vocabs
    from charlm.models import registry

    source_vocab, target_vocab = pair_vocabs([Pair("hello", "ohlol", 1)])
    model_class, config_class = registry.get("translate", architecture).classes()
    torch.manual_seed(0)
    model = model_class(config_class(vocab_size=len(source_vocab), target_vocab_size=len(target_vocab),
                                     embedding_size=3, hidden_size=4, num_layers=1))
    meta = {"task": "translate", "architecture": architecture, "kind": "model", "model": asdict(model.config),
            "source_vocab": source_vocab.to_dict(), "target_vocab": target_vocab.to_dict(), "tokens": "char",
            "preprocess": "none"}
    path = tmp_path / "t.safetensors"
    checkpoint.save(path, loading.model_tensors(model), meta)
    loaded, _, loaded_source, loaded_target = loading.load_translator(path)
    assert type(loaded) is model_class and loaded.config == model.config
    assert (loaded_source, loaded_target) == (source_vocab, target_vocab)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loading.latest(tmp_path, "translate") == str(path) and loading.latest(tmp_path, "lm") is None
    saved_model(tmp_path / "lm.safetensors")
    with pytest.raises(CheckpointError, match="language-model checkpoint"):
        loading.load_translator(tmp_path / "lm.safetensors")

    tensors, _ = checkpoint.load(path)
    for damage, message in [({"architecture": "transformer"}, "unknown task"),
                            ({"target_vocab": Vocab({"a": 1}).to_dict()}, "damaged vocab"),
                            ({"source_vocab": Vocab({"a": 1}, reserved=("<pad>", "<bos>", "<eos>")).to_dict()},
                             "vocab does not match")]:
        checkpoint.save(path, tensors, {**meta, **damage})
        with pytest.raises(CheckpointError, match=message):
            loading.load_translator(path)


def test_cpu_threads_are_set_for_a_block_and_restored():
    from charlm.runtime.device import cpu_threads

    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with cpu_threads(None):
        assert torch.get_num_threads() == before



def test_warmup_steps_is_recorded_only_when_set(runner, tiny_corpus):
    """A run without a warm-up records none, so its files are byte for byte what charlm wrote before
    --warmup-steps existed (and those files resume as ever); one with a warm-up records it."""
    from tests.conftest import TINY_MODEL, run_cli

    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "2", "--out", "plain.safetensors")
    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "2", "--warmup-steps", "5", "--out",
            "warm.safetensors")
    for name in ("plain.safetensors", "plain.resume.safetensors"):
        assert "warmup_steps" not in checkpoint.read_metadata(name)["train"]
    assert checkpoint.read_metadata("warm.resume.safetensors")["train"]["warmup_steps"] == 5
