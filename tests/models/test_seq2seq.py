"""The pair models: attention masks, padding that changes nothing, teacher forcing, stepping."""

from __future__ import annotations

import pytest
import torch

from charlm.data.batches import pad_pairs
from charlm.text.pairs import BOS_INDEX, EOS_INDEX, PAD_INDEX
from charlm.models.seq2seq import BahdanauAttention, Seq2Seq, Seq2SeqConfig, Tagger, TaggerConfig, teacher_forcing

P = PAD_INDEX
PAIRS = [([4, 5, 6, 7], [4, 5]), ([5], [6, 7, 8]), ([6, 4], [8])]  # (source ids, target ids), no padding


def seq2seq(cell: str = "gru", attention: bool = True, num_layers: int = 1) -> Seq2Seq:
    torch.manual_seed(0)
    config = Seq2SeqConfig(vocab_size=8, target_vocab_size=9, cell=cell, embedding_size=5, hidden_size=6,
                           num_layers=num_layers, attention=attention)
    return Seq2Seq(config).eval()


def test_attention_weights_sum_to_one_over_the_source_and_are_zero_on_padding():
    torch.manual_seed(0)
    attention = BahdanauAttention(query_size=3, key_size=4, attention_size=5)
    memory = torch.randn(2, 6, 4)
    mask = torch.tensor([[True] * 6, [True, True, False, False, False, False]])
    context, weights = attention(torch.randn(2, 3, 3), attention.key_layer(memory), memory, mask)
    assert weights.shape == (2, 3, 6) and context.shape == (2, 3, 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3))
    assert (weights[1, :, 2:] == 0).all() and (weights[1, :, :2] > 0).all()
    torch.testing.assert_close(context[1], weights[1, :, :2] @ memory[1, :2])  # padding adds nothing


def test_the_model_attends_only_to_real_source_characters():
    model = seq2seq()
    source, target = pad_pairs(PAIRS, P)
    _, weights = model(source, teacher_forcing(target)[0])  # (B, T, S)
    real = source != P
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))
    assert (weights.masked_select(~real[:, None].expand_as(weights)) == 0).all()


def test_teacher_forcing_puts_bos_before_and_eos_after_each_target():
    inputs, labels = teacher_forcing(torch.tensor([[10, 11], [12, P]]))
    B, E = BOS_INDEX, EOS_INDEX
    assert inputs.tolist() == [[B, 10, 11], [B, 12, P]]
    assert labels.tolist() == [[10, 11, E], [12, E, P]]


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("attention", [True, False], ids=["attention", "plain"])
def test_padding_changes_no_loss(cell, attention):
    """A padded batch's loss is the sum of each pair's loss alone: the encoder stops at each
    source's end, attention skips padding and the loss skips padded targets."""
    model = seq2seq(cell, attention, num_layers=2)
    loss, count, state = model.batch_loss(pad_pairs(PAIRS, P))
    alone = [model.batch_loss(pad_pairs([pair], P)) for pair in PAIRS]
    torch.testing.assert_close(loss, sum(part[0] for part in alone))
    assert int(count) == sum(len(target) + 1 for _, target in PAIRS) and state is None


def test_the_loss_is_the_cross_entropy_of_the_real_targets():
    model = seq2seq()
    source, target = pad_pairs(PAIRS, P)
    inputs, labels = teacher_forcing(target)
    logits, _ = model(source, inputs)
    real = labels != P
    expected = torch.nn.functional.cross_entropy(logits[real], labels[real], reduction="sum")
    torch.testing.assert_close(model.batch_loss((source, target))[0], expected)


@pytest.mark.parametrize("attention", [True, False], ids=["attention", "plain"])
def test_decoding_step_by_step_equals_one_pass(attention):
    model = seq2seq("lstm", attention, num_layers=2)
    source, target = pad_pairs(PAIRS, P)
    inputs, _ = teacher_forcing(target)
    logits, _ = model(source, inputs)
    state, stepped = model.encode(source), []
    for t in range(inputs.shape[1]):
        step_logits, state = model.decode_step(inputs[:, t], state)
        stepped.append(step_logits)
    torch.testing.assert_close(torch.stack(stepped, 1), logits)


def test_selecting_rows_of_a_state_follows_them():
    model = seq2seq("lstm")
    source, _ = pad_pairs(PAIRS, P)
    state = model.encode(source)
    rows = torch.tensor([2, 0, 0])
    chosen = state.select(rows)
    previous = torch.tensor([4, 5, 6])
    logits, _ = model.decode_step(previous[rows], chosen)
    expected, _ = model.decode_step(previous, state)
    torch.testing.assert_close(logits, expected[rows])


def tagger(embedding_size: int = 0) -> Tagger:
    torch.manual_seed(0)
    return Tagger(TaggerConfig(vocab_size=8, target_vocab_size=9, cell="rnn", embedding_size=embedding_size,
                               hidden_size=5, num_layers=1)).eval()


def test_the_tagger_predicts_one_target_per_source_character():
    model = tagger()
    aligned = [([4, 5, 6], [6, 7, 8]), ([7], [4])]
    loss, count, _ = model.batch_loss(pad_pairs(aligned, P))
    assert int(count) == 4
    torch.testing.assert_close(loss, sum(model.batch_loss(pad_pairs([pair], P))[0] for pair in aligned))
    with pytest.raises(ValueError, match="aligned"):
        model.batch_loss(pad_pairs([([4, 5], [6])], P))


def test_tagger_decoding_gives_each_position_then_only_eos():
    model = tagger(embedding_size=3)
    source, _ = pad_pairs([([4, 5, 6], [4, 4, 4]), ([7], [4])], P)
    logits, _ = model(source)
    state = model.encode(source)
    for position in range(4):
        step, state = model.decode_step(torch.zeros(2, dtype=torch.long), state)
        for row, length in enumerate([3, 1]):
            if position < length:
                assert step[row, EOS_INDEX] == float("-inf")
                assert step[row].argmax() == logits[row, position].masked_fill(
                    torch.arange(9) == EOS_INDEX, float("-inf")).argmax()
            else:
                assert step[row].argmax() == EOS_INDEX and torch.isinf(step[row]).sum() == 8


def test_bad_pair_configs_are_refused():
    with pytest.raises(ValueError, match="one-hot"):
        Seq2SeqConfig(vocab_size=5, target_vocab_size=5, embedding_size=0)
    with pytest.raises(ValueError, match="from_scratch"):
        Seq2SeqConfig(vocab_size=5, target_vocab_size=5, from_scratch=True)
    with pytest.raises(ValueError, match="target_vocab_size"):
        TaggerConfig(vocab_size=5, target_vocab_size=0)
