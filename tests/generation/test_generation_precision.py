"""Generation in bf16: the steppers' products in bf16 with the state and logits in fp32, close to
fp32's; `--precision auto` takes bf16 only where a step measures faster at the rows asked for and
the next-token distributions hold, remembers it beside the checkpoint, and says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import charlm
from charlm.generation import sampling as generator
from charlm.generation import request
from charlm.runtime import measured as tuning
from charlm.errors import CharlmError
from charlm.models.recurrent import LanguageModel, ModelConfig
from charlm.models.recurrent_stepper import product
from charlm.models.transformer import Transformer, TransformerConfig
from tests.conftest import TINY_MODEL, run_cli

VOCAB = 30


def recurrent(cell: str, embedding_size: int = 16, hidden_size: int = 64, num_layers: int = 2) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(VOCAB, cell=cell, embedding_size=embedding_size, hidden_size=hidden_size,
                                     num_layers=num_layers)).eval()


def transformer() -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(VOCAB, embedding_size=32, num_layers=2, num_heads=2, seq_len=8)).eval()


MODELS = {"rnn": lambda: recurrent("rnn"), "gru": lambda: recurrent("gru"), "lstm": lambda: recurrent("lstm"),
          "one-hot lstm": lambda: recurrent("lstm", embedding_size=0, num_layers=1), "transformer": transformer}


def test_a_product_is_addmm_in_fp32_and_bf16s_product_plus_an_fp32_bias_in_bf16():
    generator_ = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(shape, generator=generator_) for shape in ((3, 40), (40, 24), (24,)))
    assert torch.equal(product(x, weight, bias), torch.addmm(bias, x, weight))
    assert torch.equal(product(x, weight), torch.mm(x, weight))
    low = weight.bfloat16()
    out = product(x, low, bias)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.mm(x.bfloat16(), low).float() + bias)


@pytest.mark.parametrize("name", list(MODELS))
@torch.no_grad()
def test_a_bf16_stepper_keeps_fp32_state_and_logits_close_to_fp32s(name):
    """Stepped along the same ids for longer than the transformer's window, bf16's next-token
    distributions stay within the tolerance `auto` allows of fp32's (torch's own step), though
    its products are bf16's."""
    model = MODELS[name]()
    fp32, bf16 = model.stepper((), "fp32"), model.stepper((), "bf16")
    ids = torch.randint(VOCAB, (20, 3), generator=torch.Generator().manual_seed(1))
    reference_state = low_state = None
    divergences = []
    for step_ids in ids.unbind():
        reference, reference_state = model.step(step_ids, reference_state)
        low, low_state = bf16(step_ids, low_state)
        assert low.dtype == torch.float32
        for tensor in (getattr(low_state, "h", None), getattr(low_state, "c", None), *getattr(low_state, "keys", ())):
            assert tensor is None or tensor.dtype == torch.float32
        log_p, log_q = torch.log_softmax(reference, -1), torch.log_softmax(low, -1)
        divergences.append(float((log_p.exp() * (log_p - log_q)).sum(-1).mean()))
        assert not torch.equal(low, reference)  # bf16's products did run
    assert max(divergences) < tuning.KL_TOLERANCE / 10
    assert torch.allclose(fp32(ids[0], None)[0], model.step(ids[0], None)[0], atol=1e-5)


@pytest.fixture
def capable(monkeypatch):
    monkeypatch.setattr(tuning, "bf16_capable", lambda: True)


def fake_probe(monkeypatch, seconds: dict[int, tuple[float, float]], divergence: float = 0.0) -> list[int]:
    """`_probe` timing (fp32, bf16) per row count as the test says; the rows it was called for."""
    calls = []

    def probe(model, rows, device):
        calls.append(rows)
        return {"fp32": seconds[rows][0], "bf16": seconds[rows][1]}, divergence

    monkeypatch.setattr(tuning, "_probe", probe)
    return calls


def big() -> LanguageModel:
    return recurrent("lstm", embedding_size=32, hidden_size=256)  # ~0.8M weights: measured at 2 rows and more


def test_bf16_is_chosen_where_faster_with_the_same_odds_and_remembered(tmp_path, capable, monkeypatch):
    calls = fake_probe(monkeypatch, {32: (2e-3, 1e-3)})
    chosen, why = tuning.choose_generation_precision(big(), 32, tuning.Decisions(tmp_path))
    assert chosen == "bf16" and "2000 µs in fp32, 1000 µs in bf16" in why and calls == [32]
    again = tuning.choose_generation_precision(big(), 32, tuning.Decisions(tmp_path))
    assert again[0] == "bf16" and "as measured before" in again[1] and calls == [32]
    assert len(json.loads((tmp_path / "tuning.json").read_text())) == 1


@pytest.mark.parametrize(("seconds", "divergence"), [({32: (1e-3, 1e-3)}, 0.0), ({32: (2e-3, 1e-3)}, 0.5),
                                                     ({1: (1e-4, 2e-4), 16: (2e-3, 1e-3)}, 0.0)],
                         ids=["not faster", "odds do not hold", "slower for one row"])
def test_fp32_stays_unless_bf16_is_faster_at_every_size_and_keeps_the_odds(tmp_path, capable, monkeypatch,
                                                                             seconds, divergence):
    fake_probe(monkeypatch, seconds, divergence)
    rows = tuple(seconds) if len(seconds) > 1 else next(iter(seconds))
    chosen, why = tuning.choose_generation_precision(big(), rows, tuning.Decisions(tmp_path))
    assert chosen == "fp32" and why


def test_told_precisions_no_bf16_units_and_small_steps_measure_nothing(tmp_path, monkeypatch):
    calls = fake_probe(monkeypatch, {})
    decisions = tuning.Decisions(tmp_path)
    monkeypatch.setattr(tuning, "bf16_capable", lambda: True)
    assert tuning.choose_generation_precision(big(), 32, decisions, "bf16") == ("bf16", None)
    assert tuning.choose_generation_precision(big(), 32, decisions, "fp32") == ("fp32", None)
    assert tuning.choose_generation_precision(big(), 1, decisions) == ("fp32", None)  # under a million multiply-adds
    monkeypatch.setattr(tuning, "bf16_capable", lambda: False)
    assert tuning.choose_generation_precision(big(), 32, decisions) == ("fp32", None)
    assert calls == [] and not (tmp_path / "tuning.json").exists()


def test_the_probe_measures_both_and_touches_no_random_state():
    model = big()
    state = torch.random.get_rng_state()
    seconds, divergence = tuning._probe(model, 4, torch.device("cpu"))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert seconds["fp32"] > 0 and seconds["bf16"] > 0 and 0 <= divergence < tuning.KL_TOLERANCE


# ---------------------------------------------------------------------------------------------
# What a user runs


@pytest.fixture
def trained(runner, tiny_corpus):
    run_cli(runner, "train", tiny_corpus, *TINY_MODEL, "--max-steps", "5", "--out", "tiny.safetensors")
    return "tiny.safetensors"


def test_generate_takes_a_precision_and_bf16_gives_its_own_seeded_text(runner, trained):
    text = {precision: run_cli(runner, "generate", "--checkpoint", trained, "--seed", "3", "--length", "300",
                               "--precision", precision).stdout for precision in ("auto", "fp32", "bf16")}
    assert text["auto"] == text["fp32"]  # a tiny model is not measured: fp32
    assert len(text["bf16"]) == len(text["fp32"]) and text["bf16"].startswith("\n") is False
    again = run_cli(runner, "generate", "--checkpoint", trained, "--seed", "3", "--length", "300",
                    "--precision", "bf16").stdout
    assert again == text["bf16"]  # same seed, same precision: same text
    bad = run_cli(runner, "generate", "--checkpoint", trained, "--precision", "fp16", ok=False)
    assert bad.exit_code == 2 and "'fp16' is not one of 'auto', 'fp32', 'bf16'" in bad.output


def test_auto_says_when_it_chose_bf16_and_keeps_it_beside_the_checkpoint(runner, trained, capable, monkeypatch):
    monkeypatch.setattr(tuning, "MIN_GENERATION_WORK", 0)
    calls = fake_probe(monkeypatch, {3: (2e-3, 1e-3)})
    result = run_cli(runner, "generate", "--checkpoint", trained, "--num-samples", "3", "--seed", "1")
    told = run_cli(runner, "generate", "--checkpoint", trained, "--num-samples", "3", "--seed", "1",
                   "--precision", "bf16")
    assert result.stdout == told.stdout and calls == [3]
    assert "note: generating in bf16: a step of 3 rows measured 2000 µs in fp32, 1000 µs in bf16" in result.stderr
    assert "--precision fp32" in result.stderr
    assert (Path(trained).resolve().parent / ".charlm-cache" / "tuning.json").is_file()


def test_the_api_takes_a_precision_and_refuses_a_bad_one(runner, trained):
    model = charlm.load(trained)
    assert model.generate("the ", length=50, seed=2, precision="bf16") == \
        run_cli(runner, "generate", "--checkpoint", trained, "--prefix", "the ", "--length", "50", "--seed", "2",
                "--precision", "bf16").stdout.removesuffix("\n")
    assert "".join(model.stream("the ", length=50, seed=2, precision="bf16")).removesuffix("\n") == \
        model.generate("the ", length=50, seed=2, precision="bf16")
    for call in (lambda: model.generate(precision="half"), lambda: model.stream(precision="half")):
        with pytest.raises(CharlmError, match="precision must be one of auto, fp32, bf16"):
            call()


def test_generate_in_bf16_equals_stepping_the_bf16_stepper_by_hand():
    model = recurrent("gru")
    made = generator.generate(model, [1, 2, 3], 12, request.Sampling(greedy=True), precision="bf16")
    logits, state = generator.warm_up(model, [1, 2, 3], 1)
    step, ids = model.stepper((), "bf16"), []
    for _ in range(12):
        ids.append(int(logits.argmax(-1)))
        logits, state = step(torch.tensor(ids[-1:]), state)
    assert made[0].tolist() == ids


def test_the_bf16_note_is_said_once_when_measured_not_at_every_generate(runner, trained, capable, monkeypatch):
    """The next generate reads the kept decision: the same bf16 text, no second probe, no note."""
    monkeypatch.setattr(tuning, "MIN_GENERATION_WORK", 0)
    calls = fake_probe(monkeypatch, {3: (2e-3, 1e-3)})
    first = run_cli(runner, "generate", "--checkpoint", trained, "--num-samples", "3", "--seed", "1")
    second = run_cli(runner, "generate", "--checkpoint", trained, "--num-samples", "3", "--seed", "1")
    assert "note: generating in bf16" in first.stderr and "generating in bf16" not in second.stderr
    assert second.stdout == first.stdout and calls == [3]
