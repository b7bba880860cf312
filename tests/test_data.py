from __future__ import annotations

import pytest
import torch

from charlm.data import BatchIterator, eval_batches, id_dtype, load_corpus
from charlm.errors import CorpusError
from charlm.text import Vocab


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
    from charlm.data import Corpus

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
