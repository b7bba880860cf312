from __future__ import annotations

import pytest
import torch

from charlm.data.batches import BatchIterator, eval_batches
from charlm.data.ids import id_dtype
from charlm.data.loading import load_corpus
from charlm.errors import CorpusError
from charlm.text.tokens import Vocab


def test_corpus_ids_are_compact_and_match_the_vocab(tmp_path):
    text = "abracadabra 世界 🚀"
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    corpus = load_corpus(path)
    assert corpus.ids.dtype == torch.uint8
    assert corpus.ids.tolist() == corpus.vocab.encode(text)
    # with a given vocab, unseen characters become <unk>
    small = Vocab({"a": 1, "b": 1})
    assert load_corpus(path, vocab=small).ids.tolist() == small.encode(text)


def test_id_dtype_fits_the_vocab():
    assert id_dtype(256) == torch.uint8
    assert id_dtype(257) == torch.int16
    assert id_dtype(40_000) == torch.int32


def test_word_corpus(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("the cat the dog\nthe end", encoding="utf-8")
    corpus = load_corpus(path, tokens="word")
    assert corpus.vocab.decode(corpus.ids.tolist()) == ["the", "cat", "the", "dog", "the", "end"]


def test_split_holds_out_the_tail():
    from charlm.data.ids import Corpus

    corpus = Corpus(torch.arange(100, dtype=torch.uint8), Vocab())
    train, val = corpus.split(0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))


def test_sequential_batches_continue_row_by_row():
    ids = torch.arange(1000)
    batches = BatchIterator(ids, batch_size=4, seq_len=7, kind="sequential", seed=3)
    seen = list(batches.batches(epoch=0))
    assert len(seen) == len(batches)
    for (x0, y0), (x1, _) in zip(seen, seen[1:]):
        assert torch.equal(x1[:, 0], x0[:, -1] + 1)  # each row continues where it stopped
        assert torch.equal(y0, x0 + 1)  # targets are the next tokens
    offset = int(seen[0][0][0, 0])
    assert 0 <= offset < 7


def test_random_batches_are_windows_of_the_corpus():
    ids = torch.arange(1000)
    batches = BatchIterator(ids, batch_size=4, seq_len=7, kind="random", seed=3)
    starts = []
    for x, y in batches.batches(epoch=0):
        assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 6, dtype=torch.long))
        assert torch.equal(y, x + 1)
        starts += x[:, 0].tolist()
    assert len(set(starts)) == len(starts)  # no window twice
    assert len({s % 7 for s in starts}) == 1  # one offset per epoch, as in d2l


@pytest.mark.parametrize("kind", ["sequential", "random"])
def test_an_epoch_resumes_at_any_batch(kind):
    batches = BatchIterator(torch.arange(500), batch_size=3, seq_len=5, kind=kind, seed=1)
    whole = list(batches.batches(epoch=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(whole[4:], batches.batches(epoch=2, start=4)))
    assert not torch.equal(whole[0][0], next(batches.batches(epoch=3))[0])  # epochs differ


def test_too_short_corpus_says_what_to_change():
    with pytest.raises(CorpusError, match="--batch-size or --seq-len"):
        BatchIterator(torch.arange(50), batch_size=8, seq_len=10)


def test_eval_batches_predict_every_position_once():
    ids = torch.arange(103)
    targets = torch.cat([y.reshape(-1) for _, y in eval_batches(ids, 4, 10)])
    assert sorted(targets.tolist()) == list(range(1, 103))  # 4 rows of 25, then the 2 left over


MIXED = "naïve café — 时间机器 🚀🚀 emoji\nline two\n" * 50


def test_fast_char_counting_equals_the_reference_counter(tmp_path):
    from charlm.data.ids import count_chars
    from charlm.text.tokens import count_tokens

    chunks = ["", MIXED, "", "\U0010ffff\0x"]  # empty chunks, the last code point, a NUL
    assert count_chars(chunks) == count_tokens(chunks, "char")


def test_char_ids_are_the_same_in_every_dtype():
    from charlm.data.ids import encode_stream

    text = "".join(chr(0x4E00 + index) for index in range(300)) + "ab"  # 302 distinct: int16
    vocab = Vocab({char: 1 for char in text[:-1]})  # "b" unseen -> <unk>
    ids = encode_stream(["", text[:100], text[100:]], vocab, len(text))
    assert ids.dtype == torch.int16 and ids.tolist() == vocab.encode(text)


def test_cache_hit_returns_the_same_ids_without_reading_the_text(tmp_path, monkeypatch):
    from charlm.text import corpus as data  # the one reading path, of one file or many

    path = tmp_path / "c.txt"
    path.write_text(MIXED, encoding="utf-8")
    cache = tmp_path / "cache"
    first = load_corpus(path, cache_dir=cache)
    assert len(list(cache.iterdir())) == 1

    def no_reading(*args, **kwargs):
        raise AssertionError("the text was read again")

    monkeypatch.setattr(data, "read_chunks", no_reading)
    second = load_corpus(path, cache_dir=cache)
    assert torch.equal(first.ids, second.ids) and second.ids.dtype == first.ids.dtype
    assert second.vocab == first.vocab and (second.tokens, second.preprocess) == ("char", "none")


def test_a_changed_file_is_noticed_even_with_the_same_size_and_time(tmp_path):
    import os

    path = tmp_path / "c.txt"
    path.write_text("abcabc", encoding="utf-8")
    cache = tmp_path / "cache"
    assert load_corpus(path, cache_dir=cache).vocab.decode(load_corpus(path, cache_dir=cache).ids.tolist()) == list("abcabc")
    stat = os.stat(path)
    path.write_text("xyzxyz", encoding="utf-8")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same modification time
    again = load_corpus(path, cache_dir=cache)
    assert again.vocab.decode(again.ids.tolist()) == list("xyzxyz")
    assert len(list(cache.iterdir())) == 1  # the entry was replaced, not added to


def test_a_file_with_a_byte_order_mark_hits_the_cache(tmp_path, monkeypatch):
    """The hash a read records is of every byte of the file, a UTF-8 byte-order mark's too, as
    the hash a cache hit checks against."""
    from charlm.text import corpus as data  # the one reading path, of one file or many

    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfabcabc")
    first = load_corpus(path, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(data, "read_chunks", lambda *args, **kwargs: pytest.fail("the text was read again"))
    second = load_corpus(path, cache_dir=tmp_path / "cache")
    assert second.cached and second.ids.tolist() == first.ids.tolist() == [1, 2, 3, 1, 2, 3]


def test_different_settings_get_different_entries(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("the cat the dog the end\n" * 5, encoding="utf-8")
    cache = tmp_path / "cache"
    chars = load_corpus(path, cache_dir=cache)
    words = load_corpus(path, tokens="word", cache_dir=cache)
    capped = load_corpus(path, tokens="word", max_vocab=3, cache_dir=cache)
    given = load_corpus(path, vocab=Vocab({"t": 1}), cache_dir=cache)
    assert len(list(cache.iterdir())) == 4
    assert load_corpus(path, tokens="word", cache_dir=cache).vocab == words.vocab
    assert len(capped.vocab) == 3 and capped.vocab.decode(capped.ids.tolist()).count("<unk>") == 10  # dog, end
    assert load_corpus(path, vocab=Vocab({"t": 1}), cache_dir=cache).ids.tolist() == given.ids.tolist()
    assert len(chars.vocab) != len(words.vocab)


def test_an_unwritable_cache_costs_the_cache_not_the_run(tmp_path, capsys):
    path = tmp_path / "c.txt"
    path.write_text("abcabc", encoding="utf-8")
    corpus = load_corpus(path, cache_dir=path / "cache")  # a folder under a file: cannot exist
    assert corpus.ids.tolist() == [1, 2, 3, 1, 2, 3]
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and "cannot write the token cache" in note


def test_a_damaged_cache_entry_is_rebuilt(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("abcabc", encoding="utf-8")
    cache = tmp_path / "cache"
    load_corpus(path, cache_dir=cache)
    (entry,) = cache.iterdir()
    entry.write_bytes(entry.read_bytes()[:-3])
    assert load_corpus(path, cache_dir=cache).ids.tolist() == [1, 2, 3, 1, 2, 3]
    assert len(load_corpus(path, cache_dir=cache).ids) == 6


def test_stats_counts_as_training_does(tmp_path, monkeypatch):
    """One way to count: `charlm stats` counts characters through the path training's vocab is
    counted by (`data.count`, code points summed in C), and gets what the tokenizer counts."""
    import charlm
    from charlm.data import ids as data

    path = tmp_path / "mixed.txt"
    path.write_text(MIXED * 3, encoding="utf-8")
    called = []
    real = data.count_chars
    monkeypatch.setattr(data, "count_chars", lambda chunks: called.append(1) or real(chunks))
    report = charlm.stats(path, top=50)
    assert called and report["tokens"] == len(MIXED * 3)
    from charlm.text.tokens import count_tokens

    assert dict(report["most_frequent"]) == dict(count_tokens([MIXED * 3]).most_common(50))
