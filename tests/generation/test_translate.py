"""Decoding proved against brute force on tiny models, the translator's text handling, and scores."""

from __future__ import annotations

import itertools
import sys

import pytest
import torch

from charlm.evaluation import scores
from charlm.errors import CharlmError, MissingExtra
from charlm.text.pairs import EOS_INDEX, PAD_INDEX, Pair, pair_vocabs
from charlm.models.seq2seq import Seq2Seq, Seq2SeqConfig, Tagger, TaggerConfig, teacher_forcing
from charlm.generation.translation import attention_weights, beam_search, greedy, log_probs, translate
from charlm.evaluation.reports import evaluate_pairs

CHARACTERS = [4, 5]  # the tiny target vocab: <unk> <pad> <bos> <eos> and two characters
MAX_LENGTH = 4


def tiny_model(seed: int, attention: bool = True) -> Seq2Seq:
    torch.manual_seed(seed)
    config = Seq2SeqConfig(vocab_size=6, target_vocab_size=6, embedding_size=3, hidden_size=4, attention=attention)
    model = Seq2Seq(config).eval()
    with torch.no_grad():  # sharper distributions than the initial ones, and outputs of every length
        model.decoder.head.weight.mul_(8)
        model.decoder.head.bias[EOS_INDEX] -= 3
    return model


def candidates(max_length: int) -> list[tuple[list[int], bool]]:
    """Every output a search can return: (characters, ended with <eos>)."""
    ended = [(list(word), True) for length in range(max_length) for word in itertools.product(CHARACTERS, repeat=length)]
    return ended + [(list(word), False) for word in itertools.product(CHARACTERS, repeat=max_length)]


@torch.no_grad()
def scores_of(model: Seq2Seq, source: torch.Tensor, outputs: list[tuple[list[int], bool]]) -> list[float]:
    """Each output's log-probability from one teacher-forced pass: no decoding code involved."""
    targets = torch.full((len(outputs), MAX_LENGTH + 1), PAD_INDEX)
    for row, (ids, _) in enumerate(outputs):
        targets[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    inputs, labels = teacher_forcing(targets)  # <eos> after each output's characters
    for row, (ids, ended) in enumerate(outputs):
        if not ended:
            labels[row, len(ids)] = PAD_INDEX  # cut at the maximum length: no <eos> to score
    logits, _ = model(source.expand(len(outputs), -1), inputs)
    token_scores = log_probs(logits.flatten(0, 1)).gather(1, labels.reshape(-1, 1)).view(labels.shape)
    return token_scores.masked_fill(labels == PAD_INDEX, 0.0).sum(1).tolist()


def brute_force(model, source, length_penalty=0.0):
    outputs = candidates(MAX_LENGTH)
    return max((score / max(len(ids) + ended, 1) ** length_penalty, ids)
               for score, (ids, ended) in zip(scores_of(model, source, outputs), outputs))


def greedy_by_brute_force(model, source) -> list[int]:
    """The greedy path, each step the likeliest continuation scored by teacher forcing."""
    ids: list[int] = []
    while len(ids) < MAX_LENGTH:
        options = [(ids + [token], False) for token in CHARACTERS] + [(ids, True)]
        best = max(zip(scores_of(model, source, options), options))[1]
        if best[1]:
            break
        ids = best[0]
    return ids


@pytest.mark.parametrize("attention", [True, False], ids=["attention", "plain"])
def test_greedy_and_beam_search_agree_with_brute_force(attention):
    num_candidates = len(candidates(MAX_LENGTH))  # 15 ended with <eos> + 16 cut at the maximum length
    greedy_was_beaten = False
    for seed in range(6):
        model = tiny_model(seed, attention)
        source = torch.tensor([[4, 5, 4]])
        best_score, best_ids = brute_force(model, source)
        found = beam_search(model, source, beam_size=num_candidates, max_length=MAX_LENGTH)
        assert found.ids == best_ids and found.score == pytest.approx(best_score, abs=1e-5)
        mean_score, mean_ids = brute_force(model, source, length_penalty=1.0)
        assert beam_search(model, source, num_candidates, MAX_LENGTH, length_penalty=1.0).ids == mean_ids
        greedy_ids = greedy(model, source, MAX_LENGTH)[0]
        assert greedy_ids == greedy_by_brute_force(model, source)
        assert beam_search(model, source, beam_size=1, max_length=MAX_LENGTH).ids == greedy_ids
        greedy_was_beaten |= greedy_ids != best_ids
    assert greedy_was_beaten  # some model where the wide beam finds what greedy misses


def test_greedy_in_a_batch_equals_greedy_alone():
    model = tiny_model(1)
    sources = [[4, 5, 4], [5], [4, 4]]
    padded = torch.tensor([[4, 5, 4], [5, PAD_INDEX, PAD_INDEX], [4, 4, PAD_INDEX]])
    assert greedy(model, padded, 6) == [greedy(model, torch.tensor([ids]), 6)[0] for ids in sources]


def test_decoding_stops_at_the_maximum_length():
    model = tiny_model(2)
    with torch.no_grad():
        model.decoder.head.bias[EOS_INDEX] = -1e4  # never ends by itself
    source = torch.tensor([[4, 5]])
    assert len(greedy(model, source)[0]) == 2 * 2 + 10 and len(greedy(model, source, 4)[0]) == 4
    found = beam_search(model, source, beam_size=3, max_length=4)
    assert len(found.ids) == 4 and not found.ended


def test_the_tagger_decodes_one_character_per_source_character():
    torch.manual_seed(0)
    model = Tagger(TaggerConfig(vocab_size=6, target_vocab_size=6, cell="rnn", embedding_size=0, hidden_size=4)).eval()
    source = torch.tensor([[4, 5, 4, 4], [5, 5, PAD_INDEX, PAD_INDEX]])
    logits, _ = model(source)  # (2, 4, 6)
    best = logits[..., EOS_INDEX + 1 :].argmax(-1) + EOS_INDEX + 1  # the likeliest character, never a special
    assert greedy(model, source) == [best[0].tolist(), best[1, :2].tolist()]
    assert beam_search(model, source[1:, :2], beam_size=4).ids == best[1, :2].tolist()


def word_model():
    pairs = [Pair("ab", "ba", 1), Pair("abc", "cab", 2)]
    source_vocab, target_vocab = pair_vocabs(pairs)
    torch.manual_seed(0)
    config = Seq2SeqConfig(vocab_size=len(source_vocab), target_vocab_size=len(target_vocab), embedding_size=3,
                           hidden_size=4)
    return Seq2Seq(config), source_vocab, target_vocab


def test_translate_uses_the_generators_unknown_character_policy():
    model, source_vocab, target_vocab = word_model()
    with pytest.raises(CharlmError, match="the input has 2 characters the model never saw: 'x', 'é'"):
        translate(model, ["abxé"], source_vocab, target_vocab)
    skipped = translate(model, ["abxé", "ab"], source_vocab, target_vocab, unknown="skip")
    assert skipped[0] == skipped[1]
    outputs = translate(model, ["abx", "", "x"], source_vocab, target_vocab, unknown="unk")
    assert outputs[1] == "" and all(set(output) <= set("abc") for output in outputs)
    assert translate(model, ["x"], source_vocab, target_vocab, unknown="skip") == [""]
    assert translate(model, ["cab", "b"], source_vocab, target_vocab, beam_size=3, max_length=5)[1] == \
        translate(model, ["b"], source_vocab, target_vocab, beam_size=3, max_length=5)[0]


def test_attention_weights_cover_each_output_and_eos():
    model, source_vocab, target_vocab = word_model()
    weights = attention_weights(model, source_vocab.encode("abc"), target_vocab.encode("ba"))
    assert weights.shape == (3, 3)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    model.config.attention = False
    with pytest.raises(CharlmError, match="no attention"):
        attention_weights(model, [4], [4])


def test_edit_distance_and_error_rates():
    assert scores.edit_distance("kitten", "sitting") == 3
    assert scores.edit_distance("", "abc") == 3 and scores.edit_distance("abc", "abc") == 0
    hypotheses, references = ["women", "whit", "quen"], [["women"], ["white"], ["queen", "quean"]]
    assert scores.exact_match(hypotheses, references) == pytest.approx(1 / 3)
    assert scores.character_error_rate(hypotheses, references) == pytest.approx(2 / 15)
    assert scores.exact_match(["b"], [["a", "b"]]) == 1.0  # any reference counts
    assert not scores.are_sentences(references) and scores.are_sentences([["Va !"]])


def test_bleu_is_sacrebleus_with_every_reference():
    sacrebleu = pytest.importorskip("sacrebleu")
    hypotheses = ["le chat est sur le tapis", "il fait froid ici"]
    references = [["le chat est sur le tapis"], ["il fait très froid ici", "il fait froid ici"]]
    assert scores.corpus_bleu(hypotheses, references) == pytest.approx(100.0)
    streams = [["le chat est sur le tapis", "il fait très froid ici"]]
    assert scores.corpus_bleu(hypotheses, [refs[:1] for refs in references]) == pytest.approx(
        sacrebleu.corpus_bleu(hypotheses, streams).score)


def test_without_sacrebleu_bleu_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # makes `import sacrebleu` fail
    with pytest.raises(MissingExtra, match=r"pip install 'charlm\[bleu\]'"):
        scores.corpus_bleu(["a b"], [["a b"]])
    model, source_vocab, target_vocab = word_model()
    report = evaluate_pairs(model, [Pair("ab", "b a", 1)], source_vocab, target_vocab)
    assert report["bleu"] is None and "charlm[bleu]" in report["note"]


def test_evaluation_translates_each_source_once_against_all_its_targets():
    model, source_vocab, target_vocab = word_model()
    made = translate(model, ["ab", "abc"], source_vocab, target_vocab)
    pairs = [Pair("ab", made[0], 1), Pair("ab", "zz", 2), Pair("abc", made[2 - 1] + "x", 3), Pair("aq", "a", 4)]
    report = evaluate_pairs(model, pairs, source_vocab, target_vocab)
    assert report["pairs"] == 4 and report["sources"] == 3 and report["unknown_characters"] == 1
    assert report["exact_match"] == pytest.approx(1 / 3)
    assert report["bleu"] is None  # single words: BLEU says nothing
