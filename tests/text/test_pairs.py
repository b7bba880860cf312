"""Pair files: reading, validating, detecting, splitting, and their vocabs and batches."""

from __future__ import annotations

import pytest
import torch

from charlm.data.batches import PairBatches, encode_pairs, pair_eval_batches
from charlm.errors import CorpusError
from charlm.text.pairs import (
    EOS_INDEX, LESSON_PAIRS, PAD_INDEX, Pair, check_aligned, is_pair_vocab, looks_like_pairs, pair_vocabs, read_pairs,
    split_pairs,
)
from tests.conftest import ROOT, TIMEMACHINE

WORDPAIRS = ROOT / "corpora" / "wordpairs.tsv"


def write(tmp_path, text: str, name: str = "p.tsv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_pairs_are_read_with_their_line_numbers(tmp_path):
    path = write(tmp_path, "man\twomen\r\n\nking\tqueen\nÉté\tsummer")  # CRLF, a blank line, no final \n
    pairs, skipped = read_pairs(path)
    assert pairs == [Pair("man", "women", 1), Pair("king", "queen", 3), Pair("Été", "summer", 4)]
    assert skipped == []


def test_a_pair_file_is_decoded_like_any_corpus(tmp_path):
    path = tmp_path / "latin.tsv"
    path.write_bytes("caf\xe9\tcoffee\n".encode("latin-1"))
    with pytest.raises(CorpusError, match="byte offset 3"):
        read_pairs(path)
    assert read_pairs(path, encoding="latin-1")[0] == [Pair("café", "coffee", 1)]
    with pytest.raises(CorpusError, match="no source<TAB>target pairs"):
        read_pairs(write(tmp_path, "\n\n  \n"))


def test_pair_files_are_told_from_text_by_their_shape(tmp_path):
    assert looks_like_pairs(WORDPAIRS)
    assert not looks_like_pairs(TIMEMACHINE)
    assert looks_like_pairs(write(tmp_path, "one\ttab\nmany\tmore\ttabs\nno tab\n"))  # reported, not trained on
    assert not looks_like_pairs(write(tmp_path, "one\ttab\nno tab\nnone either\n"))


def test_the_held_out_split_is_seeded_whole_sources_and_never_the_lessons():
    pairs, _ = read_pairs(WORDPAIRS)
    train, held_out = split_pairs(pairs, 0.1, seed=0)
    assert len(held_out) == int(0.1 * len(pairs)) and len(train) + len(held_out) == len(pairs)
    assert split_pairs(pairs, 0.1, seed=0) == (train, held_out)
    assert split_pairs(pairs, 0.1, seed=1)[1] != held_out
    for seed in range(20):  # the lessons' pairs train, whatever the seed
        assert not LESSON_PAIRS & {(pair.source, pair.target) for pair in split_pairs(pairs, 0.5, seed)[1]}
    many = [Pair("Run!", "Cours !", 1), Pair("Run!", "Courez !", 2)] + [Pair(f"s{i}", "t", i + 3) for i in range(8)]
    for seed in range(10):  # a source's translations stay together
        train, held_out = split_pairs(many, 0.2, seed)
        assert {pair.source for pair in train}.isdisjoint(pair.source for pair in held_out)
        assert len(held_out) == 2
    assert split_pairs(pairs[:1], 0.1) == (pairs[:1], [])


def test_pair_vocabs_reserve_the_special_tokens_at_fixed_ids():
    source_vocab, target_vocab = pair_vocabs([Pair("ab", "xyz", 1)])
    for vocab in (source_vocab, target_vocab):
        assert vocab.itos[:4] == ["<unk>", "<pad>", "<bos>", "<eos>"] and is_pair_vocab(vocab)
    assert vocab["<eos>"] == EOS_INDEX and vocab["<pad>"] == PAD_INDEX
    assert source_vocab.itos[4:] == ["a", "b"] and target_vocab.itos[4:] == ["x", "y", "z"]


def test_the_tagger_check_names_the_unequal_lines(tmp_path):
    check_aligned([Pair("hello", "ohlol", 1)], "p.tsv")
    with pytest.raises(CorpusError, match=r"line 2 \(2 -> 4 characters\).*--model-type seq2seq"):
        check_aligned([Pair("ab", "cd", 1), Pair("up", "down", 2)], "p.tsv")


def encoded_pairs(count: int = 50):
    pairs = [Pair("x" * (1 + index % 7), "y" * (1 + index % 5), index) for index in range(count)]
    source_vocab, target_vocab = pair_vocabs(pairs)
    return encode_pairs(pairs, source_vocab, target_vocab)


def unpadded(batch):
    """The (source, target) id lists of a padded batch."""
    source, target = batch
    strip = lambda row: [token for token in row if token != PAD_INDEX]
    return [(strip(s), strip(t)) for s, t in zip(source.tolist(), target.tolist())]


def test_pair_batches_hold_every_pair_once_per_epoch_padded():
    encoded = encoded_pairs()
    batches = PairBatches(encoded, batch_size=8, pad_index=PAD_INDEX, seed=3)
    assert len(batches) == 7 and batches.carries_state is False
    seen = []
    for source, target in batches.batches(epoch=0):
        assert source.dtype == target.dtype == torch.long and source.shape[0] == target.shape[0] <= 8
        assert (source != PAD_INDEX).any(1).all()
        seen += unpadded((source, target))
    assert sorted(seen) == sorted(encoded)


def test_pair_batches_resume_at_any_batch_and_differ_by_epoch():
    batches = PairBatches(encoded_pairs(), batch_size=4, pad_index=PAD_INDEX, seed=1)
    whole = list(batches.batches(epoch=2))
    resumed = list(batches.batches(epoch=2, start=5))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole[5:], resumed))
    assert len(resumed) == len(whole) - 5
    assert [unpadded(batch) for batch in whole] != [unpadded(batch) for batch in batches.batches(epoch=3)]


def test_pair_eval_batches_keep_file_order():
    encoded = encoded_pairs(20)
    assert [pair for batch in pair_eval_batches(encoded, PAD_INDEX, 6)() for pair in unpadded(batch)] == encoded
