"""The controls every generator shares: min-p, the repetition, presence and frequency penalties
(against distributions computed by hand on a toy vocabulary), stop texts and log-probabilities,
the same at every door (`charlm generate`, the API, the server's batcher alone and batched)."""

from __future__ import annotations

import math
import threading

import pytest
import torch

import charlm
from charlm.generation.continuation import Continuation
from charlm.generation.request import Request, Sampling
from charlm.generation.sampling import History, filter_logits, generate, scores
from charlm.serve.batcher import Batcher, Generation
from charlm.settings import SettingError
from charlm.text.tokens import Vocab
from tests.conftest import run_cli, train_tiny
from tests.generation.test_generate import FixedModel


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("controls"), 20)


# ---------------------------------------------------------------------------------------------
# Against distributions computed by hand

PROBS = [0.5, 0.25, 0.15, 0.1]


def test_min_p_keeps_the_tokens_at_least_that_share_of_the_likeliest():
    logits = torch.log(torch.tensor([PROBS]))
    kept = lambda sampling: torch.isfinite(filter_logits(logits, sampling))[0].tolist()
    assert kept(Sampling(min_p=0.3)) == [True, True, True, False]  # 0.1 < 0.3 * 0.5 = 0.15 <= 0.15
    assert kept(Sampling(min_p=0.31)) == [True, True, False, False]
    assert kept(Sampling(min_p=1.0)) == [True, False, False, False]
    # after the temperature: at 0.5, p is p² renormalised, so 0.25 of 0.5 becomes 0.0625 / 0.25 = 0.25
    assert kept(Sampling(temperature=0.5, min_p=0.26)) == [True, False, False, False]
    assert kept(Sampling(temperature=0.5, min_p=0.25)) == [True, True, False, False]


def test_the_penalties_give_the_distribution_computed_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0]])

    def history(sampling: Sampling) -> History:
        made = History([0, 1], 1, 4, torch.device("cpu"), sampling)  # the context saw tokens 0 and 1
        made.add(torch.tensor([2]))
        made.add(torch.tensor([2]))  # then made token 2 twice
        return made

    penalized = history(Sampling(repetition_penalty=2.0)).penalize(logits)
    assert penalized.tolist() == [[1.0, -2.0, 0.25, 0.0]]  # seen: positive halved, negative doubled
    penalized = history(Sampling(frequency_penalty=0.5, presence_penalty=0.25)).penalize(logits)
    assert penalized.tolist() == [[2.0, -1.0, 0.5 - 2 * 0.5 - 0.25, 0.0]]  # only what was made
    assert history(Sampling()).penalize(logits).tolist() == logits.tolist()  # off: exactly as it was
    both = history(Sampling(repetition_penalty=2.0, presence_penalty=1.0)).penalize(logits)
    probs = torch.softmax(both, dim=-1)[0].tolist()
    by_hand = [math.exp(value) for value in (1.0, -2.0, 0.25 - 1.0, 0.0)]
    assert probs == pytest.approx([value / sum(by_hand) for value in by_hand])
    banned = history(Sampling(repetition_penalty=3.0)).penalize(torch.tensor([[float("-inf"), 1.0, 1.0, 1.0]]))
    assert banned[0, 0] == float("-inf")


def test_a_penalized_draw_follows_the_penalized_distribution():
    """Sampled with a presence penalty, the first token follows the model's distribution and each
    later one the distribution with the tokens already made pushed down, as computed by hand."""
    model = FixedModel(torch.log(torch.tensor(PROBS)).tolist())
    made = generate(model, [3], 2, Sampling(presence_penalty=2.0), num_samples=20000, seed=0)
    first = torch.bincount(made[:, 0], minlength=4).float() / 20000
    assert first.tolist() == pytest.approx(PROBS, abs=0.015)
    after_0 = made[made[:, 0] == 0, 1]  # token 0 made once: its logit lowered by 2
    by_hand = [PROBS[0] * math.exp(-2), *PROBS[1:]]
    expected = [value / sum(by_hand) for value in by_hand]
    assert (torch.bincount(after_0, minlength=4).float() / len(after_0)).tolist() == pytest.approx(expected, abs=0.02)


def test_greedy_takes_the_likeliest_after_the_penalties():
    model = FixedModel(torch.log(torch.tensor(PROBS)).tolist())
    assert generate(model, [3], 4, Sampling(greedy=True)).tolist() == [[0, 0, 0, 0]]
    # weights after each token made: 0.5 e^-1 = 0.18 < 0.25, so token 1; then 0.18 > 0.15 > 0.25 e^-1, token 0
    # again; then 0.5 e^-2 = 0.068 and 0.092 < 0.15, token 2
    assert generate(model, [3], 4, Sampling(greedy=True, frequency_penalty=1.0)).tolist() == [[0, 1, 0, 2]]


def test_logprobs_are_the_models_own_and_the_likeliest_n():
    logits = torch.log(torch.tensor([PROBS]))
    chosen, values, order = scores(logits, torch.tensor([2]), 2)
    assert chosen.tolist() == pytest.approx([math.log(0.15)])
    assert order.tolist() == [[0, 1]] and values[0].tolist() == pytest.approx([math.log(0.5), math.log(0.25)])


# ---------------------------------------------------------------------------------------------
# Stop texts


def _continue(pieces: list[str], stop: tuple[str, ...], gap: str = "") -> tuple[list[str], Continuation]:
    vocab = Vocab(dict.fromkeys("".join(pieces), 1))
    shown: list[str] = []
    continuation = Continuation(vocab, gap, 1, stop, lambda sample, text, tokens: shown.append(text))
    for piece in pieces:
        continuation.add([vocab[piece]])
        if continuation.done:
            break
    continuation.finish()
    return shown, continuation


def test_a_stop_text_ends_the_sample_before_it_and_holds_back_only_what_may_start_it():
    shown, continuation = _continue(list("abcab.d"), ("b.",))
    assert "".join(shown) == "abca" and continuation.samples[0].finish_reason == "stop"
    assert shown == ["a", "bc", "a"]  # "b" waited until "c" showed it was not the stop's start
    shown, continuation = _continue(list("hello"), ("xyz", "lo!"))
    assert "".join(shown) == "hello" and continuation.samples[0].finish_reason == "length"  # held "lo", then shown
    shown, continuation = _continue(list("ab\nuser: hi"), ("\nuser:", "\nassistant:"))
    assert "".join(shown) == "ab" and continuation.samples[0].drawn == 8


def test_a_stop_inside_a_word_cuts_the_word():
    vocab = Vocab({"the": 1, "time": 1, "traveller": 1})
    continuation = Continuation(vocab, " ", 1, ("e tr",))
    for word in ("the", "time", "traveller", "the"):
        continuation.add([vocab[word]])
    assert continuation.samples[0].text == "the tim" and [token.text for token in continuation.samples[0].tokens] == \
        ["the", " tim"]


def test_a_request_refuses_nine_stops_or_an_empty_one():
    with pytest.raises(SettingError, match="^stop takes at most 8 texts, got 9$"):
        Request(stop=tuple("abcdefghi"))
    with pytest.raises(SettingError, match="^--stop texts must be 1 to 100 characters long$"):
        Request.from_fields({"stop": ("",)}, said="flag")


# ---------------------------------------------------------------------------------------------
# The same at every door


def test_stop_and_logprobs_through_the_api_and_the_cli(runner, model_path):
    model = charlm.load(model_path)
    whole = model.generate("the ", length=80, seed=3)
    stopped = model.generate("the ", length=80, seed=3, stop=" ")
    assert stopped == whole[:whole.index(" ", 4)]
    printed = run_cli(runner, "generate", "--checkpoint", model_path, "--prefix", "the ", "--length", "80",
                      "--seed", "3", "--stop", " ", "--stop", "zz").stdout
    assert printed == stopped + "\n"
    assert "".join(model.stream("the ", length=80, seed=3, stop=" ")) == stopped
    sample = model.generate("the ", length=80, seed=3, stop=" ", logprobs=3)
    assert "the " + sample.text == stopped and sample.finish_reason == "stop"
    assert "".join(token.text for token in sample.tokens) == sample.text
    assert all(len(token.top) in (3, 4) and token.top[token.text] == token.logprob for token in sample.tokens)
    assert all(token.logprob <= 0 for token in sample.tokens)
    scored = run_cli(runner, "generate", "--checkpoint", model_path, "--prefix", "the ", "--length", "5",
                     "--seed", "3", "--logprobs", "2")
    assert len(scored.stderr.splitlines()) == 5 and scored.stdout == model.generate("the ", length=5, seed=3) + "\n"


def test_interactive_mode_continues_each_prefix(runner, model_path):
    from charlm.cli import cli

    printed = runner.invoke(cli, ["generate", "-i", "--checkpoint", str(model_path), "--length", "10", "--seed", "2"],
                            input="the \nQQ\nhis \n", catch_exceptions=False)
    assert printed.exit_code == 0, printed.output
    model = charlm.load(model_path)
    assert printed.stdout == "> " + model.generate("the ", length=10, seed=2) + "\n> > " + \
        model.generate("his ", length=10, seed=2) + "\n> "
    assert "charlm: error: the prefix has 1 character the model never saw: 'Q'" in printed.stderr


NEW_FIELDS = [{"min_p": 0.2}, {"repetition_penalty": 1.3}, {"presence_penalty": 1.5}, {"frequency_penalty": 0.8},
              {"stop": ("e",)}, {"stop": (" t", "s ")}, {"frequency_penalty": -0.5, "min_p": 0.05, "stop": ("x",)},
              {"repetition_penalty": 1.2, "temperature": 0.7, "top_k": 5}, {"logprobs": 2}]


def test_every_new_field_gives_the_same_text_alone_batched_and_through_charlm_generate(runner, model_path):
    """Requests with the new fields, each with other prefixes and seeds, stepped together by one
    batcher, get the text `TextModel.generate` gives each alone, which is `charlm generate`'s."""
    model = charlm.load(model_path)
    asks = [dict(prefix=prefix, length=60, seed=seed, num_samples=samples, **fields)
            for seed, (fields, prefix, samples) in enumerate(
                (fields, prefix, samples) for fields in NEW_FIELDS for prefix, samples in (("the ", 1), ("his ", 2)))]
    batcher = Batcher(model.model, model.vocab, model.meta["tokens"])
    texts = [[""] * ask["num_samples"] for ask in asks]
    ended = [threading.Event() for _ in asks]
    generations = []
    for index, ask in enumerate(asks):
        def on_text(sample, piece, index=index):
            texts[index][sample] += piece
        generations.append(Generation(Request.from_fields(ask), model.vocab.encode(list(ask["prefix"])), on_text,
                                      lambda failure, index=index: ended[index].set()))
        batcher.submit(generations[-1])
    assert all(event.wait(60) for event in ended)
    batcher.close()
    assert batcher.largest_batch > 10
    for ask, text, generation in zip(asks, texts, generations):
        plain = {name: value for name, value in ask.items() if name != "logprobs"}
        alone = model.generate(**plain, precision="fp32")
        assert text == ([alone] if ask["num_samples"] == 1 else alone), ask
        if "logprobs" in ask:
            made = model.generate(**ask, precision="fp32")
            made = made if isinstance(made, list) else [made]
            # the same tokens; their log-probabilities to float rounding (a step of many rows rounds
            # its products in other last bits than a step of one, which no draw here depends on)
            for got, want in zip(generation.continuation.samples, made):
                assert [token.text for token in got.tokens] == [token.text for token in want.tokens]
                assert [token.logprob for token in got.tokens] == pytest.approx([token.logprob for token in want.tokens],
                                                                                abs=1e-5)
    flags = ["--prefix", "his ", "--length", "60", "--seed", "3", "--num-samples", "2", "--precision", "fp32",
             "--repetition-penalty", "1.3"]
    printed = run_cli(runner, "generate", "--checkpoint", model_path, *flags).stdout
    assert printed == "\n\n".join(texts[3]) + "\n"
