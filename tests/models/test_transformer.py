"""The transformer against references: attention written out by hand, a full recompute of each
token's context (nanoGPT's crop inside the window, the same keep-the-last-half policy past it),
the cache's State protocol, its optimizer groups and its errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

from charlm.checkpoints import files as checkpoint
from charlm.generation.request import Sampling
from charlm.generation.sampling import choose, generate
from charlm.training.optimization import TrainConfig, learning_rate, make_optimizer
from charlm.runtime.device import seeded_generator
from charlm.models.transformer import KVCache, SelfAttention, Transformer, TransformerConfig
from tests.conftest import TINY_TRANSFORMER, run_cli

VOCAB, CONTEXT = 11, 8


def make(seq_len: int = CONTEXT, dropout: float = 0.0) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(VOCAB, embedding_size=16, num_layers=2, num_heads=2, seq_len=seq_len,
                                         dropout=dropout)).eval()


def random_ids(rows: int, steps: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, steps), generator=torch.Generator().manual_seed(seed))


def recompute(model: Transformer, window: torch.Tensor) -> torch.Tensor:
    """The logits after `window` (B, T) by a full pass with no cache: (B, V)."""
    x, _ = model.hidden(window)
    return model.head(x)[:, -1]


def windows(ids: list[int], seq_len: int) -> list[list[int]]:
    """The context each token of `ids` is predicted from under the model's policy, written
    independently of it: the window grows to seq_len, then keeps its last seq_len // 2 ids."""
    window, seen = [], []
    for token in ids:
        if len(window) == seq_len:
            window = window[len(window) - seq_len // 2:] if seq_len // 2 else []
        window.append(token)
        seen.append(list(window))
    return seen


def test_attention_equals_softmax_attention_written_out():
    """One layer's attention, without and with cached keys, equals masked softmax(q k^T / sqrt(d)) v."""
    torch.manual_seed(0)
    config = TransformerConfig(VOCAB, embedding_size=12, num_layers=1, num_heads=3, seq_len=16)
    attention = SelfAttention(config).eval()
    x = torch.randn(2, 7, 12)
    q, k, v = (t.view(2, 7, 3, 4).transpose(1, 2) for t in attention.qkv(x).split(12, dim=2))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(4)  # (B, nh, T, T)
    scores = scores.masked_fill(~torch.ones(7, 7, dtype=torch.bool).tril(), float("-inf"))
    expected = attention.projection((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 12))
    whole, _, _ = attention(x, None)
    torch.testing.assert_close(whole, expected, atol=1e-6, rtol=0)
    first, keys, values = attention(x[:, :3], None)  # then the last 4 positions over the first 3 cached
    rest, _, _ = attention(x[:, 3:], (keys, values))
    torch.testing.assert_close(torch.cat([first, rest], 1), expected, atol=1e-6, rtol=0)


def test_a_position_never_sees_the_ones_after_it():
    model = make()
    ids = random_ids(1, CONTEXT)
    changed = ids.clone()
    changed[0, 5] = (changed[0, 5] + 1) % VOCAB
    before, after = model(ids)[0], model(changed)[0]
    torch.testing.assert_close(before[:, :5], after[:, :5], atol=0, rtol=0)
    assert not torch.allclose(before[:, 5:], after[:, 5:])


@pytest.mark.parametrize("split", [1, 3, CONTEXT, 13, 21])
def test_a_text_in_two_calls_gives_the_logits_of_one(split):
    """forward(a + b) = forward(b) after forward(a), whatever the split, past the window too."""
    model = make()
    ids = random_ids(2, 30)
    whole, cache = model(ids)
    first, half = model(ids[:, :split])
    second, cache_after = model(ids[:, split:], half)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-5, rtol=0)
    assert torch.equal(cache.ids, cache_after.ids)


@pytest.mark.parametrize("seq_len", [1, 2, CONTEXT, 9])
@pytest.mark.parametrize("how", ["step", "stepper"])
def test_cached_logits_equal_a_full_recompute_of_each_tokens_context(seq_len, how):
    """Token by token through the cache (`step`, or the generator's `stepper`), each token's
    logits equal a full pass over its context: inside the window nanoGPT's crop (the whole text
    so far), past it the window the policy keeps, written out independently in `windows`."""
    model = make(seq_len)
    ids = random_ids(2, 4 * seq_len + 3)
    step = model.step if how == "step" else model.stepper()
    contexts = windows(list(range(ids.shape[1])), seq_len)  # positions of ids in each context
    cache = None
    for t in range(ids.shape[1]):
        logits, cache = step(ids[:, t], cache)
        torch.testing.assert_close(logits, recompute(model, ids[:, contexts[t]]), atol=1e-5, rtol=0)
        if t < seq_len:
            torch.testing.assert_close(logits, recompute(model, ids[:, : t + 1]), atol=1e-5, rtol=0)


def test_generation_draws_what_a_recomputing_loop_draws():
    """`generate` (prefix in one pass, then the cached stepper) with a seed makes the ids a plain
    loop makes that recomputes every token's context from scratch, drawing from the same generator."""
    model = make()
    prefix, length, sampling = [1, 2, 3, 4, 5], 40, Sampling(temperature=0.9, top_k=6)
    made = generate(model, prefix, length, sampling, num_samples=3, seed=5)
    generator, ids = seeded_generator(5), torch.tensor(prefix).expand(3, -1)
    for _ in range(length):
        context = windows(list(range(ids.shape[1])), CONTEXT)[-1]
        ids = torch.cat([ids, choose(recompute(model, ids[:, context]), sampling, generator)[:, None]], 1)
    assert torch.equal(made, ids[:, len(prefix):])


def test_a_prefix_longer_than_the_context_keeps_going():
    model = make()
    long = random_ids(1, 5 * CONTEXT + 1)[0].tolist()
    made = generate(model, long, 30, seed=0)
    assert made.shape == (1, 30)
    logits, cache = model(torch.tensor([long]))
    assert cache.length <= CONTEXT and logits.shape == (1, len(long), VOCAB)


def test_batch_loss_predicts_windows_of_the_context_each_from_nothing():
    """A batch longer than the context (evaluation's rows) is its windows side by side, a shorter
    last one included; nothing is carried."""
    model = make()
    inputs, targets = random_ids(2, 2 * CONTEXT + 3), random_ids(2, 2 * CONTEXT + 3, seed=2)
    loss, count, state = model.batch_loss((inputs, targets))
    expected = sum(F.cross_entropy(model(inputs[:, start : start + CONTEXT])[0].flatten(0, 1),
                                   targets[:, start : start + CONTEXT].flatten(), reduction="sum")
                   for start in range(0, inputs.shape[1], CONTEXT))
    torch.testing.assert_close(loss, expected, atol=1e-4, rtol=1e-6)
    assert count == targets.numel() and state is None


def test_the_head_is_the_token_embedding():
    model = make()
    assert "head.weight" not in model.state_dict() and not any("head" in name for name in model.state_dict())
    x = torch.randn(1, 2, 16)
    torch.testing.assert_close(model.head(x), model.final_norm(x) @ model.token_embedding.weight.t())
    assert model.describe() == "transformer 2x16, 2 heads, context 8"
    assert model.num_parameters() == VOCAB * 16 + CONTEXT * 16 + 2 * (2 * 16 + 12 * 16 * 16) + 16


def test_weight_decay_falls_on_the_matrices_only():
    model = make()
    optimizer = make_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.1))
    decayed, kept = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and kept["weight_decay"] == 0.0
    assert all(parameter.dim() == 2 for parameter in decayed["params"])
    assert all(parameter.dim() == 1 for parameter in kept["params"]) and len(kept["params"]) == 2 * 2 + 1
    assert len(decayed["params"]) + len(kept["params"]) == len(list(model.parameters()))


def test_warmup_rises_to_the_rate_then_the_cosine_ends_at_its_floor():
    config = TrainConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1, lr_schedule="cosine")
    rates = [learning_rate(config, step, 110) for step in range(110)]
    assert rates[:10] == pytest.approx([1e-3 * (step + 1) / 11 for step in range(10)])
    assert rates[10] == 1e-3 and rates[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    constant = TrainConfig(lr=1e-3, warmup_steps=4, lr_schedule="constant")
    assert [learning_rate(constant, step, 10) for step in (0, 3, 4, 9)] == pytest.approx([2e-4, 8e-4, 1e-3, 1e-3])
    no_warmup = TrainConfig(lr=3e-3, lr_schedule="cosine")  # the RNNs' curve, as it always was
    assert [learning_rate(no_warmup, step, 50) for step in range(50)] == [
        3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / 49, 1.0)))) for step in range(50)]


def test_the_cache_keeps_the_state_protocol():
    model = make()
    _, cache = model(random_ids(3, 5))
    again = KVCache.from_tensors(cache.tensors())
    assert all(torch.equal(again.tensors()[name], tensor) for name, tensor in cache.tensors().items())
    assert cache.batch_size == 3 and cache.length == 5 and cache.rows(slice(1, 3)).batch_size == 2
    joined = KVCache.join([cache.rows(slice(0, 1)), cache.rows(slice(1, 3))])
    assert all(torch.equal(joined.tensors()[name], tensor) for name, tensor in cache.tensors().items())
    halved = cache.map(torch.Tensor.half)
    assert halved.keys[0].dtype == torch.float16 and halved.ids.dtype == torch.long
    with pytest.raises(ValueError, match="different lengths"):
        KVCache.join([cache, model(random_ids(3, 2))[1]])
    with pytest.raises(ValueError, match="holds ids"):
        KVCache.from_tensors({"ids": cache.ids})
    empty = model.init_state(4)
    assert empty.batch_size == 4 and empty.length == 0 and len(empty.keys) == 2


@pytest.mark.parametrize(("changes", "message"), [
    ({"num_heads": 3}, "does not split into 3 heads"), ({"seq_len": 0}, "seq_len must be"),
    ({"embedding_size": 0}, "embedding_size must be"), ({"dropout": 1.0}, "dropout must be"),
])
def test_a_config_that_cannot_be_built_says_why(changes, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(VOCAB, **{"embedding_size": 16, "num_heads": 4, **changes})


# ---------------------------------------------------------------------------------------------
# Through the CLI: the same pipeline as the RNNs


def test_train_generate_eval_info_with_the_transformers_own_defaults(runner, tiny_corpus):
    run_cli(runner, "train", tiny_corpus, *TINY_TRANSFORMER, "--max-steps", "6", "--eval-every", "3")
    meta = checkpoint.read_metadata("checkpoints/tiny.safetensors")
    assert meta["architecture"] == "transformer"
    assert meta["model"] == {"vocab_size": meta["model"]["vocab_size"], "embedding_size": 16, "num_layers": 1,
                             "num_heads": 2, "seq_len": 8, "dropout": 0.0}
    train = meta["train"]
    assert (train["iterator"], train["optimizer"], train["weight_decay"], train["warmup_steps"], train["lr"]) == \
        ("random", "adamw", 0.1, 100, 1e-3)
    assert "carry.ids" not in checkpoint.load("checkpoints/tiny.resume.safetensors")[0]  # nothing carried
    text = run_cli(runner, "generate", "--prefix", "the ", "--length", "50", "--seed", "1").stdout
    assert text.startswith("the ") and len(text.rstrip("\n")) == 54
    many = run_cli(runner, "generate", "--prefix", "the ", "--length", "20", "--num-samples", "3", "--top-p", "0.9",
                   "--seed", "1").stdout
    assert many.count("the ") >= 3
    report = json.loads(run_cli(runner, "eval", "--checkpoint", "checkpoints/tiny.safetensors", tiny_corpus,
                                "--json").stdout)
    assert report["tokens"] == len(tiny_corpus.read_text()) - 1 and 0 < report["loss"] < 5
    shown = run_cli(runner, "info", "checkpoints/tiny.safetensors").stdout
    assert "transformer: " in shown and "num_heads=2" in shown and "seq_len=8" in shown


@pytest.mark.parametrize(("flags", "message"), [
    (["--num-heads", "3"], "embedding_size 16 does not split into 3 heads"),
    (["--hidden-size", "32"], "--hidden-size does not apply to --model transformer"),
    (["--from-scratch"], "--from-scratch does not apply to --model transformer"),
    (["--embedding-size", "0"], "embedding_size must be a whole number of at least 1"),
    (["--seq-len", "0"], "Invalid value for '--seq-len'"),
    (["--warmup-steps", "-1"], "Invalid value for '--warmup-steps'"),
    (["--model", "lstm", "--num-heads", "2"], "--num-heads does not apply to --model lstm"),
])
def test_what_a_user_gets_wrong_is_one_line(runner, tiny_corpus, flags, message):
    result = run_cli(runner, "train", tiny_corpus, *TINY_TRANSFORMER, "--max-steps", "1", *flags, ok=False)
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("charlm: error: ") and message in lines[0], result.stderr


def test_a_transformer_fine_tunes_from_its_checkpoint(runner, tiny_corpus):
    run_cli(runner, "train", tiny_corpus, *TINY_TRANSFORMER, "--max-steps", "4", "--out", "parent.safetensors")
    run_cli(runner, "train", tiny_corpus, "--init-from", "parent.safetensors", "--batch-size", "4", "--seq-len", "8",
            "--max-steps", "2", "--quiet", "--out", "child.safetensors")
    child = checkpoint.read_metadata("child.safetensors")
    assert child["architecture"] == "transformer" and child["model"] == checkpoint.read_metadata(
        "parent.safetensors")["model"]
    result = run_cli(runner, "train", tiny_corpus, "--init-from", "parent.safetensors", "--num-heads", "1", ok=False)
    assert result.exit_code != 0 and "--num-heads would change the model" in result.stderr


def test_the_python_api_trains_and_samples_it_as_the_command_does(runner, tiny_corpus):
    import charlm

    options = {"model": "transformer", "num_layers": 1, "num_heads": 2, "embedding_size": 16, "batch_size": 4,
               "seq_len": 8, "max_steps": 4, "quiet": True}
    run = charlm.train(tiny_corpus, **options, out="api.safetensors")
    run_cli(runner, "train", tiny_corpus, *TINY_TRANSFORMER, "--max-steps", "4", "--out", "cli.safetensors")
    assert open("api.safetensors", "rb").read() == open("cli.safetensors", "rb").read()
    model = charlm.load(run.checkpoint)
    text = model.generate("the ", length=30, seed=3)
    shown = run_cli(runner, "generate", "--checkpoint", "cli.safetensors", "--prefix", "the ", "--length", "30",
                    "--seed", "3").stdout
    assert text + "\n" == shown  # the command ends the sample with a line break
    assert model.evaluate("the time traveller")["tokens"] == len("the time traveller") - 1


@pytest.mark.parametrize(("changes", "message"), [
    ({"num_heads": 3}, "damaged model config"), ({"num_heads": 0}, "damaged model config"),
    ({"seq_len": 10**9}, "the weights do not match the model config"), ({"num_layers": 10**6}, "more layers"),
])
def test_a_checkpoint_whose_config_is_tampered_with_is_one_line(runner, tiny_corpus, changes, message):
    run_cli(runner, "train", tiny_corpus, *TINY_TRANSFORMER, "--max-steps", "1", "--out", "m.safetensors")
    tensors, meta = checkpoint.load("m.safetensors")
    checkpoint.save("m.safetensors", tensors, {**meta, "model": {**meta["model"], **changes}})
    for command in (["generate", "--checkpoint", "m.safetensors"], ["eval", "--checkpoint", "m.safetensors", tiny_corpus]):
        result = run_cli(runner, *command, ok=False)
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
