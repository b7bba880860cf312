"""Sampling, tested with a mock model whose next-token distribution is known exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from charlm.errors import CharlmError
from charlm.generation.request import Sampling
from charlm.generation.sampling import encode_prefix, filter_logits, generate
from charlm.models.protocol import ModelDefaults
from charlm.text.tokens import Vocab


class FixedModel(ModelDefaults, nn.Module):
    """Predicts the same logits at every step, whatever the input."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, ids, state=None):
        return self.logits.expand(*ids.shape, -1), state

    def step(self, ids, state):
        return self.logits.expand(ids.shape[0], -1), state


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda sampling: torch.isfinite(filter_logits(logits, sampling))[0].tolist()
    assert kept(Sampling(top_k=2)) == [True, True, False, False]
    assert kept(Sampling(top_p=0.5)) == [True, False, False, False]
    assert kept(Sampling(top_p=0.8)) == [True, True, False, False]
    assert kept(Sampling(top_p=0.81)) == [True, True, True, False]
    assert kept(Sampling(top_p=1.0)) == [True, True, True, True]


def test_sampling_follows_the_distribution():
    model = FixedModel(torch.log(torch.tensor([0.7, 0.2, 0.1, 1e-9])).tolist())
    made = generate(model, [0], 4000, Sampling(), num_samples=2, seed=0)
    freq = torch.bincount(made.reshape(-1), minlength=4).float() / made.numel()
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1, 0.0]), atol=0.02, rtol=0)


def test_temperature_sharpens_and_greedy_takes_the_argmax():
    model = FixedModel([1.0, 2.0, 0.5])
    assert generate(model, [0], 5, Sampling(greedy=True)).tolist() == [[1] * 5]
    cold = generate(model, [0], 500, Sampling(temperature=0.05), seed=0)
    assert (cold == 1).all()


def test_banned_tokens_are_never_drawn():
    model = FixedModel([5.0, 0.0, 0.0])
    made = generate(model, [1], 300, seed=0, banned=[0])
    assert (made != 0).all()
    assert generate(model, [1], 3, Sampling(greedy=True), banned=[0]).tolist() == [[1, 1, 1]]


def test_same_seed_same_text_other_seed_other_text():
    model = FixedModel([0.0] * 20)
    a = generate(model, [0], 50, seed=7)
    assert torch.equal(a, generate(model, [0], 50, seed=7))
    assert not torch.equal(a, generate(model, [0], 50, seed=8))


def test_tokens_stream_in_order():
    model = FixedModel([0.0] * 5)
    blocks = []
    made = generate(model, [0], 9, seed=1, on_tokens=blocks.append)
    assert [block.shape[1] for block in blocks] == [1] * 9  # on a CPU: every token as it is made
    assert torch.equal(torch.cat(blocks, dim=1), made)
    blocks = []
    assert torch.equal(generate(model, [0], 9, seed=1, on_tokens=blocks.append, flush_every=4), made)
    assert [block.shape[1] for block in blocks] == [4, 4, 1]  # on a GPU: every 32 tokens
    assert torch.equal(torch.cat(blocks, dim=1), made)
    assert generate(model, [0], 0, num_samples=3).shape == (3, 0)


def test_a_generation_that_hands_its_ids_on_need_not_keep_them():
    """With keep=False the ids go to `on_tokens` only, the same blocks of the same ids, and none
    come back: a stream of any length holds no more than its last block. A Continuation that keeps
    nothing shows the same text and ends the same way."""
    from charlm.generation.continuation import Continuation

    model = FixedModel([0.0] * 5)
    kept, handed = [], []
    made = generate(model, [0], 50, seed=3, on_tokens=kept.append, flush_every=8)
    assert generate(model, [0], 50, seed=3, on_tokens=handed.append, flush_every=8, keep=False) is None
    assert [block.tolist() for block in handed] == [block.tolist() for block in kept]
    assert torch.equal(torch.cat(handed, dim=1), made)
    with pytest.raises(ValueError, match="on_tokens"):
        generate(model, [0], 5, keep=False)
    vocab = Vocab({letter: 1 for letter in "abcd."})
    shown = {True: [], False: []}
    for keep in (True, False):
        continuation = Continuation(vocab, "", 1, ("d.",), keep=keep,
                                    emit=lambda sample, text, tokens, keep=keep: shown[keep].append(text))
        for letter in "abcabd.a":
            continuation.add([vocab[letter]])
        continuation.finish()
        assert continuation.samples[0].finish_reason == "stop"
        assert continuation.samples[0].text == ("abcab" if keep else "")
    assert shown[True] == shown[False] and "".join(shown[False]) == "abcab"


def test_unknown_prefix_characters_are_named_or_handled():
    vocab = Vocab({"a": 2, "b": 1, " ": 1})
    with pytest.raises(CharlmError, match="'x', 'é'"):
        encode_prefix("ab xé", vocab)
    assert encode_prefix("ab xé", vocab, unknown="skip") == vocab.encode("ab ")
    assert encode_prefix("ab xé", vocab, unknown="unk") == vocab.encode("ab xé")
    lower = Vocab({"a": 1, "b": 1, " ": 1})
    assert encode_prefix("A, B", lower, preprocess="d2l") == lower.encode("a b")


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(top_p=0), dict(top_k=-1)])
def test_bad_sampling_values_are_refused(kwargs):
    with pytest.raises(CharlmError):
        Sampling(**kwargs)


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(0.7, 5, 0.9)], ids=["plain", "filtered"])
def test_a_draw_is_torch_multinomials_and_stacked_requests_draw_as_alone(sampling):
    """`choose` draws what torch.multinomial draws for the same seed (so seeded text is what it
    was), and `choose_rows` on several requests' rows stacked, each with its own generator, gives
    each request the ids `choose` gives it alone: the batched server's text is the CLI's."""
    from charlm.generation.sampling import choose, choose_rows

    torch.manual_seed(0)
    logits = [torch.randn(count, 300) * 3 for count in (1, 3, 2, 1)]
    for seed in range(20):
        alone = [choose(rows, sampling, torch.Generator().manual_seed(seed + index)) for index, rows in enumerate(logits)]
        stacked = choose_rows(torch.cat(logits), sampling,
                              [torch.Generator().manual_seed(seed + index) for index in range(len(logits))],
                              [rows.shape[0] for rows in logits])
        assert torch.equal(stacked, torch.cat(alone))
        filtered = filter_logits(logits[1], sampling) if sampling != Sampling() else logits[1]
        multinomial = torch.multinomial(torch.softmax(filtered, dim=-1), 1,
                                        generator=torch.Generator().manual_seed(seed + 1)).squeeze(-1)
        assert torch.equal(alone[1], multinomial)
