from __future__ import annotations

import json

import pytest

from charlm.text.tokens import (
    Tokenizer, Vocab, count_tokens, preprocess, preprocess_chunks, preprocess_prefix, read_chunks,
)
from tests.conftest import TIMEMACHINE


def read(path, **kwargs) -> str:
    return "".join(read_chunks(path, **kwargs))


def test_d2l_time_machine_numbers():
    """d2l's load_corpus_time_machine: 170,580 char tokens and a vocab of 28 (<unk> + 27)."""
    counts = count_tokens(preprocess_chunks(read_chunks(TIMEMACHINE), "d2l"), "char")
    vocab = Vocab(counts)
    assert sum(counts.values()) == 170_580
    assert len(vocab) == 28
    assert vocab.itos[:5] == ["<unk>", " ", "e", "t", "a"]


def test_d2l_preprocessing_is_the_books():
    text = "The Time  Machine, by H. G. Wells [1898]\n\n  I\nThe Time Traveller (for so"
    assert preprocess(text, "d2l") == "the time machine by h g wellsithe time traveller for so"
    assert preprocess_prefix("Time, Traveller ", "d2l") == "time traveller "
    assert preprocess(text, "none") == text


def test_chunked_reading_equals_whole_reading(tmp_path):
    text = "naïve café — 时间机器 🚀🚀 emoji\nline two\r\nthird\rend"
    path = tmp_path / "u.txt"
    path.write_bytes(text.encode("utf-8"))
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    for chunk_bytes in (1, 2, 3, 5, 1 << 20):  # boundaries inside multi-byte characters and CRLF
        assert read(path, chunk_bytes=chunk_bytes) == expected
        got = "".join(preprocess_chunks(read_chunks(path, chunk_bytes=chunk_bytes), "d2l"))
        assert got == preprocess(expected, "d2l")


def test_tokenizers_round_trip():
    chars = Tokenizer("char")
    text = "héllo 世界 👋"
    assert chars.split(text) == list(text)
    assert chars.join(chars.split(text)) == text
    words = Tokenizer("word")
    assert words.split("the  time\nmachine ") == ["the", "time", "machine"]
    assert words.join(["a", "b"]) == "a b"


def test_word_chunks_keep_words_cut_at_boundaries():
    chunks = ["the ti", "me mac", "hine", " x"]
    assert [w for part in Tokenizer("word").split_chunks(chunks) for w in part] == ["the", "time", "machine", "x"]


def test_vocab_orders_by_frequency_then_token():
    vocab = Vocab({"b": 2, "a": 2, "c": 5, "d": 1}, min_freq=2, reserved=["<pad>"])
    assert vocab.itos == ["<unk>", "<pad>", "c", "a", "b"]
    assert vocab["d"] == vocab.unk_index == 0
    assert vocab.encode("cab") == [2, 3, 4]
    assert vocab.decode([2, 3]) == ["c", "a"]
    assert vocab.unknown("dxcd") == ["d", "x"]
    assert len(Vocab({"a": 3, "b": 2, "c": 1}, max_size=3)) == 3


def test_vocab_json_round_trip():
    vocab = Vocab(count_tokens(["héllo 世界 👋"]), reserved=["<bos>", "<eos>"])
    again = Vocab.from_json(vocab.to_json())
    assert again == vocab and again.stoi == vocab.stoi and again.reserved == ("<bos>", "<eos>")
    json.loads(vocab.to_json())
    with pytest.raises(ValueError):
        Vocab.from_dict({"itos": ["a", "a"]})
