"""Looking inside a model: the view is the model. The mean surprise over a text is what `charlm eval`
reports for it, the top expectation is the token greedy generation writes after the same prefix,
and the activations are the layers' own states."""

from __future__ import annotations

import math

import pytest
import torch

import charlm
from charlm.errors import CharlmError, UsageError
from tests.conftest import TINY_TEXT, run_cli

CELLS = {"lstm": [], "gru": ["--model", "gru"], "rnn-one-hot": ["--model", "rnn", "--embedding-size", "0"]}
TRANSFORMER = ["--model", "transformer", "--num-layers", "2", "--num-heads", "2", "--embedding-size", "16",
               "--seq-len", "16", "--batch-size", "4", "--max-steps", "30", "--quiet"]


MIN_RNNS = ("mingru", "minlstm")


@pytest.fixture(params=[*CELLS, "transformer", *MIN_RNNS])
def model(request, runner, tiny_corpus):
    if request.param == "transformer":
        run_cli(runner, "train", tiny_corpus, *TRANSFORMER)
    elif request.param in MIN_RNNS:
        run_cli(runner, "train", tiny_corpus, "--model", request.param, "--num-layers", "2", "--embedding-size", "16",
                "--hidden-size", "16", "--batch-size", "4", "--seq-len", "8", "--max-steps", "20", "--quiet")
    else:
        run_cli(runner, "train", tiny_corpus, "--hidden-size", "16", "--num-layers", "2", "--embedding-size", "8",
                "--batch-size", "4", "--seq-len", "8", "--max-steps", "20", "--quiet", *CELLS[request.param])
    return charlm.load("checkpoints/tiny.safetensors")


def test_the_mean_surprise_is_the_loss_eval_reports(model):
    text = TINY_TEXT * 7  # 10,528 characters: 32 rows of 328, and the few left over
    inside = model.inspect(text)
    assert len(inside.tokens) == len(text) and inside.surprise[0] is None
    assert inside.mean_surprise() == pytest.approx(model.evaluate(text)["loss"], abs=1e-5)
    assert all(bits >= 0 for bits in inside.surprise[1:])


def test_the_top_expectation_is_what_greedy_generation_writes_next(model):
    inside = model.inspect(TINY_TEXT, top_k=3)
    context = getattr(model.model.config, "seq_len", None)  # a transformer's eval walk: windows from empty
    for position in (1, 5, 40, 150) if context is None else (1, 5, 9, context - 1):
        (first, probability), *rest = inside.expected[position]
        assert len(rest) == 2 and probability >= max(p for _, p in rest)
        written = model.generate(prefix=TINY_TEXT[:position], length=1, temperature=0)
        assert written == TINY_TEXT[:position] + first
        surprise = inside.surprise[position]
        expected_probability = dict(inside.expected[position]).get(TINY_TEXT[position])
        if expected_probability is not None:  # the token itself is among the top 3: its surprise is its bits
            assert surprise == pytest.approx(-math.log2(expected_probability), rel=1e-5)


def test_the_activations_are_each_layers_own_states(model):
    inside = model.inspect(TINY_TEXT)
    config = model.model.config
    if not hasattr(model.model, "rnn"):
        return  # the transformer's blocks: test_a_transformers_blocks_and_heads_are_its_own; the min-RNNs'
        # layers: tests/models/test_minrnn.py's test_the_layers_hook_gives_each_layers_states_and_the_state_after
    kinds = ("h", "c") if config.cell == "lstm" else ("h",)
    assert sorted(inside.activations) == sorted(f"layer {layer} {kind}" for layer in range(2) for kind in kinds)
    ids = torch.tensor([model.vocab[token] for token in TINY_TEXT[:31]])[None]
    with torch.no_grad():
        model.model.eval()
        outputs, state = model.model.recurrent(ids, None)  # the whole model, one stream from the start
    assert torch.allclose(inside.activations["layer 1 h"][30], outputs[0, -1], atol=1e-5)
    for layer in range(2):
        assert torch.allclose(inside.activations[f"layer {layer} h"][30], state.h[layer, 0], atol=1e-5)
        if state.c is not None:
            assert torch.allclose(inside.activations[f"layer {layer} c"][30], state.c[layer, 0], atol=1e-5)
    assert torch.isnan(inside.activations["layer 0 h"][-1]).all()  # nothing follows the last token


def test_a_transformers_blocks_and_heads_are_its_own(runner, tiny_corpus):
    """Block outputs equal the model's own over a window from an empty context; each head's weights
    are a distribution over the window up to the token, and weighing the head's values by them
    gives what torch's scaled_dot_product_attention gives."""
    from torch.nn import functional as F

    run_cli(runner, "train", tiny_corpus, *TRANSFORMER)
    model = charlm.load("checkpoints/tiny.safetensors")
    transformer, context = model.model.eval(), 16
    text = TINY_TEXT[:1000]
    inside = model.inspect(text)
    assert sorted(inside.activations) == ["block 0", "block 1"] and inside.attention.shape == (1000, 2, 2, context)
    ids = torch.tensor([model.vocab[token] for token in text[:context]])[None]
    with torch.no_grad():
        top, _ = transformer.hidden(ids)  # the first window, from an empty context
        assert torch.allclose(inside.activations["block 1"][:context], top[0], atol=1e-5)
        x = transformer.token_embedding(ids) + transformer.position_embedding(torch.arange(context))
        for layer, block in enumerate(transformer.blocks):
            normed = block.attention_norm(x)
            q, k, v = (t.view(1, context, 2, 8).transpose(1, 2) for t in block.attention.qkv(normed).split(16, dim=2))
            reference = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (1, heads, T, head size)
            for head in range(2):
                for position in (0, 7, context - 1):
                    looked = inside.attended(position, layer, head)
                    assert [where for where, _ in looked] == list(range(position + 1))
                    weights = torch.tensor([weight for _, weight in looked])
                    assert float(weights.sum()) == pytest.approx(1.0, abs=2e-3)  # float16 kept
                    mixed = weights @ v[0, head, : position + 1]
                    assert torch.allclose(mixed, reference[0, head, position], atol=2e-3)
            x, _, _ = block(x, None)
    later = inside.attended(3 * context + 5, 1, 0)  # a later window starts afresh, as eval walks it
    assert [where for where, _ in later] == list(range(3 * context, 3 * context + 6))
    assert inside.attended(999, 0, 0) == []  # nothing is predicted from the last token


def test_what_it_cannot_look_inside_is_one_line(runner, tiny_corpus, monkeypatch):
    from charlm.evaluation import inside

    run_cli(runner, "train", tiny_corpus, *TRANSFORMER)
    transformer = charlm.load("checkpoints/tiny.safetensors")
    monkeypatch.setattr(inside, "ATTENTION_ENTRIES", 64 * 2 * 2 * 16)  # the attention of 64 tokens
    assert inside.attention_fits(transformer.model) == 64
    with pytest.raises(CharlmError, match="at most 64 tokens; look inside a shorter text"):
        transformer.inspect(TINY_TEXT[:65])
    transformer.inspect(TINY_TEXT[:64])
    run_cli(runner, "train", tiny_corpus, "--hidden-size", "8", "--max-steps", "2", "--quiet", "--overwrite")
    lstm = charlm.load("checkpoints/tiny.safetensors")
    for bad in ({"top_k": 0}, {"top_k": 2.5}):
        with pytest.raises(UsageError, match="top_k"):
            lstm.inspect(TINY_TEXT, **bad)
    with pytest.raises(CharlmError, match="fewer than 2 tokens"):
        lstm.inspect("t")


def test_the_features_of_a_text_are_what_a_reader_sees():
    from charlm.evaluation.inside import text_features

    features = text_features(list('He said "it\'s (so) odd"\nAb'))
    assert features["inside quotes"].tolist()[8:22] == [1.0] * 14  # the apostrophe of it's is no quote
    assert features["inside quotes"][7] == 0 and features["inside quotes"][22] == 0
    assert features["inside parentheses"].tolist()[14:18] == [1.0, 1.0, 1.0, 0.0]
    assert features["position in the line"].tolist()[-3:] == [23.0, 0.0, 1.0]
    assert features["after a line break"].tolist()[-3:] == [0.0, 1.0, 0.0]
    assert features["upper case"].tolist()[0] == 1.0 and features["inside a word"].tolist()[2] == 0.0


def test_a_unit_that_tracks_a_feature_ranks_first():
    from charlm.evaluation.inside import Inside

    tokens = list("ab\nabc\nabcd\n" * 5)
    column = torch.tensor([float(i) for line in "".join(tokens).split("\n")[:-1] for i in range(len(line) + 1)])
    activations = torch.randn(len(tokens), 8, generator=torch.Generator().manual_seed(0))
    activations[:, 5] = -0.5 * column  # unit 5 counts down along the line
    activations[-1] = float("nan")
    ranked = Inside(tokens, [None] * len(tokens), [[]] * len(tokens), {"layer 0 h": activations}).rank_units(best=2)
    (unit, r), _ = ranked["position in the line"]
    assert unit == "layer 0 h 5" and r == pytest.approx(-1.0)
    assert "inside parentheses" not in ranked  # the text has none: nothing to follow


def test_charlm_inside_colours_a_file_and_writes_a_page_that_interprets_nothing(runner, tmp_path):
    hostile = 'the time <script>alert(1)</script> "quoted" </script>\x1b[31m\n'
    (tmp_path / "tiny.txt").write_text(hostile + TINY_TEXT, encoding="utf-8")  # its characters in the vocab
    run_cli(runner, "train", tmp_path / "tiny.txt", "--hidden-size", "8", "--max-steps", "3", "--quiet")
    (tmp_path / "look.txt").write_text(hostile + TINY_TEXT[:200], encoding="utf-8")
    plain = run_cli(runner, "inside", tmp_path / "look.txt", "--html", "view.html", "--no-color")
    assert plain.stdout.startswith("the time <script>alert(1)</script>") and "\x1b" not in plain.stdout
    assert "\\x1b[31m" in plain.stdout  # the text's own escape is shown, never obeyed
    assert "nats," in plain.stderr and "wrote view.html" in plain.stderr
    page = (tmp_path / "view.html").read_text(encoding="utf-8")
    assert "<script>alert" not in page and '"\\u003c", "s", "c"' in page  # a token each, "<" written \u003c
    assert page.count("</script>") == 2  # the page's own two; the text's is escaped in the data too
    colored = run_cli(runner, "inside", tmp_path / "look.txt", "--color")
    assert "\x1b[48;5;" in colored.stdout
