"""Ensembles (`--ensemble N`, `charlm.models.ensemble`): the mixture is the mean of the members'
distributions, computed from torch's own softmax; training is each member's own loss, evaluation the
mixture's; generation, state, checkpoints, fine-tuning, inside, export and the server take it as they
take any model. The runs' bytes, resume and seeds are the guarantee rows' (`TINY_KINDS`)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import charlm
from charlm.checkpoints import files as checkpoint
from charlm.checkpoints.loading import load_model
from charlm.models.ensemble import Ensemble, EnsembleState, mixture
from charlm.models.protocol import LanguageModelContract
from charlm.models.recurrent import LanguageModel, ModelConfig
from charlm.models.state import RecurrentState
from tests.conftest import TINY_ENSEMBLE, TINY_MODEL, TINY_TRANSFORMER, assert_serve_writes_what_generate_writes, run_cli


def tiny(count: int = 3, cell: str = "lstm", seed: int = 0) -> Ensemble:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=11, cell=cell, embedding_size=6, hidden_size=10, num_layers=2, dropout=0.2)
    return Ensemble.of(LanguageModel, config, count)


def test_the_mixture_is_the_mean_of_the_members_probabilities():
    logits = [torch.randn(2, 5, 7) * scale for scale in (1, 3, 10)]
    expected = torch.stack([torch.softmax(each, -1) for each in logits]).mean(0).log()
    torch.testing.assert_close(mixture(logits), expected)
    torch.testing.assert_close(mixture(logits[:1]), torch.log_softmax(logits[0], -1))
    banned = [each.clone().index_fill_(-1, torch.tensor([2]), float("-inf")) for each in logits]
    assert torch.isneginf(mixture(banned)[..., 2]).all() and torch.isfinite(mixture(banned)[..., :2]).all()


def test_members_start_from_their_own_weights_and_learn_on_their_own():
    """Training: the loss is the mean of each member's own loss, and a member's gradients are those
    of its own loss alone; evaluating: the mixture's loss, which is never above the members' mean."""
    model = tiny()
    first, second = (dict(member.named_parameters()) for member in model.members[:2])
    assert not torch.equal(first["rnn.weight_hh_l0"], second["rnn.weight_hh_l0"])
    ids, targets = torch.randint(0, 11, (4, 9)), torch.randint(0, 11, (4, 9))
    model.eval()  # no dropout: the members' own losses are reproducible
    own = [member.batch_loss((ids, targets))[0] for member in model.members]
    model.train()
    for member in model.members:
        member.dropout.p, member.rnn.dropout = 0.0, 0.0
    loss, count, state = model.batch_loss((ids, targets))
    assert count == 36 and isinstance(state, EnsembleState) and len(state.members) == 3
    torch.testing.assert_close(loss, torch.stack(own).mean())
    loss.backward()
    reference = model.members[1].rnn.weight_hh_l0
    expected, = torch.autograd.grad(own[1] / 3, reference)  # the member's own loss, scaled by the mean
    torch.testing.assert_close(reference.grad, expected)
    model.eval()
    with torch.no_grad():
        mixed, _, _ = model.batch_loss((ids, targets))
    logits = [member(ids)[0] for member in model.members]
    by_hand = -torch.stack([F.softmax(each, -1) for each in logits]).mean(0).log().gather(-1, targets[..., None]).sum()
    torch.testing.assert_close(mixed, by_hand)
    assert float(mixed) <= float(torch.stack(own).mean().detach()) + 1e-6  # Jensen: the mixture is never worse


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_generation_step_by_step_is_the_training_pass_and_carries_each_members_state(cell):
    model = tiny(cell=cell).eval()
    ids = torch.randint(0, 11, (3, 12))
    with torch.no_grad():
        whole, after = model(ids)
        for stepper in (model.step, model.stepper()):
            state, logits = None, []
            for position in range(12):
                step_logits, state = stepper(ids[:, position], state)
                logits.append(step_logits)
            torch.testing.assert_close(torch.stack(logits, 1), whole, atol=1e-5, rtol=1e-5)
            for ours, reference in zip(state.members, after.members):
                torch.testing.assert_close(ours.h, reference.h, atol=1e-5, rtol=1e-5)
        bf16 = model.stepper(precision="bf16")(ids[:, 0], None)[0]
        assert (bf16.exp() - whole[:, 0].exp()).abs().max() < 0.02


def test_a_state_saves_splits_and_joins_by_rows_and_refuses_what_is_not_its_own():
    model = tiny()
    state_class = model.state_class
    assert state_class is EnsembleState.of(RecurrentState)  # one class per member state class
    state = model(torch.randint(0, 11, (4, 3)))[1]
    back = state_class.from_tensors(state.tensors())
    assert sorted(state.tensors()) == ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1"]
    joined = state_class.join([back.rows(slice(0, 1)), back.rows(slice(1, None))])
    for ours, reference in zip(joined.members, state.members):
        assert torch.equal(ours.h, reference.h) and torch.equal(ours.c, reference.c)
    assert joined.batch_size == 4 and joined.map(torch.zeros_like).members[2].h.abs().sum() == 0
    unpickled = pickle.loads(pickle.dumps(state))  # as torchrun's processes gather it
    assert type(unpickled) is state_class and torch.equal(unpickled.members[1].c, state.members[1].c)
    for bad in ({"h": torch.zeros(1)}, {"0.0": torch.zeros(1, 1, 1), "2.0": torch.zeros(1, 1, 1)}):
        with pytest.raises(ValueError, match="ensemble's state"):
            state_class.from_tensors(bad)


def test_muon_the_dropout_and_the_path_reach_every_member():
    model = tiny(count=2)
    assert isinstance(model, LanguageModelContract)  # the contract every reader of a model relies on
    hidden = {id(matrix) for matrix in model.hidden_matrices()}
    assert sorted(name for name, parameter in model.named_parameters() if id(parameter) in hidden) == sorted(
        f"members.{k}.rnn.weight_{kind}_l{layer}" for k in range(2) for kind in ("ih", "hh") for layer in range(2))
    model.set_dropout(0.05)
    model.fast_path = False
    assert all(member.dropout.p == 0.05 and member.fast_path is False for member in model.members)
    assert model.describe() == "2 x lstm 2x10" and model.config.hidden_size == 10


ALONE = (*TINY_MODEL, "--num-layers", "2", "--dropout", "0.1", "--eval-every", "3")
FLAGS = (*ALONE, *TINY_ENSEMBLE[len(TINY_MODEL):])  # ALONE, --ensemble 2


def test_it_trains_evaluates_generates_fine_tunes_and_shows_its_info(runner, tiny_corpus):
    run_cli(runner, "train", tiny_corpus, *FLAGS, "--max-steps", "6", "--out", "e.safetensors")
    meta = checkpoint.read_metadata("e.safetensors")
    assert meta["model"]["ensemble"] == 2 and "architecture" not in meta  # an LSTM's checkpoint, with members
    tensors = checkpoint.load("e.safetensors")[0]
    assert {name.split(".")[2] for name in tensors if name.startswith("model.")} == {"0", "1"}
    assert checkpoint.load("e.resume.safetensors")[0]["carry.1.0"].shape == (2, 4, 16)
    model, _, vocab = load_model("e.safetensors", "lm")
    assert isinstance(model, Ensemble) and len(model.members) == 2

    # `charlm eval` scores the mixture: the members' distributions averaged by hand, state carried
    report = json.loads(run_cli(runner, "eval", "--checkpoint", "e.safetensors", tiny_corpus, "--json").stdout)
    ids = torch.tensor(vocab.encode(list(tiny_corpus.read_text(encoding="utf-8"))))
    with torch.no_grad():
        probabilities = torch.stack([F.softmax(member(ids[None, :-1])[0][0], -1) for member in model.members]).mean(0)
    by_hand = -probabilities.log().gather(-1, ids[1:, None]).mean()
    assert report["loss"] == pytest.approx(float(by_hand), abs=1e-4)
    assert report["loss"] == pytest.approx(charlm.load("e.safetensors").evaluate(tiny_corpus.read_text())["loss"],
                                           abs=1e-5)
    shown = run_cli(runner, "info", "e.safetensors").stdout
    assert "ensemble=2" in shown

    generate = ("generate", "--checkpoint", "e.safetensors", "--prefix", "the ", "--length", "20", "--seed", "1")
    generated = run_cli(runner, *generate).stdout
    assert generated.startswith("the ") and run_cli(runner, *generate).stdout == generated

    # fine-tuned, it stays an ensemble of as many; --ensemble would change it, and is refused
    run_cli(runner, "train", tiny_corpus, "--init-from", "e.safetensors", "--max-steps", "2", "--quiet",
            "--out", "tuned.safetensors")
    assert checkpoint.read_metadata("tuned.safetensors")["model"]["ensemble"] == 2
    refused = run_cli(runner, "train", tiny_corpus, "--init-from", "e.safetensors", "--ensemble", "3",
                      "--max-steps", "1", ok=False)
    assert refused.exit_code == 2 and "--ensemble" in refused.stderr and "Traceback" not in refused.output

    inside = run_cli(runner, "inside", tiny_corpus, "--checkpoint", "e.safetensors", "--no-color")
    assert "member 0 layer" in inside.stderr or "member 1 layer" in inside.stderr


@pytest.mark.parametrize(("given", "message"), [
    (("--ensemble", "0"), "1<=x<=64"), (("--ensemble", "65"), "1<=x<=64"), (("--ensemble", "two"), "--ensemble"),
])
def test_a_number_of_members_it_cannot_train_is_refused_in_one_line(runner, tiny_corpus, given, message):
    result = run_cli(runner, "train", tiny_corpus, *FLAGS, "--max-steps", "1", *given, ok=False)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output


def test_a_resume_with_another_number_of_members_is_refused_naming_it(runner, tiny_corpus):
    """Refused when told another count; left out, the count goes on as its run recorded it (as the
    recipe's choices do: the recipe may have chosen it)."""
    run_cli(runner, "train", tiny_corpus, *FLAGS, "--max-steps", "2", "--out", "e.safetensors")
    result = run_cli(runner, "train", tiny_corpus, *ALONE, "--ensemble", "3", "--max-steps", "4", "--out",
                     "e.safetensors", "--resume", ok=False)
    assert result.exit_code != 0 and "ensemble 2 then, 3 now" in result.stderr and "Traceback" not in result.output
    run_cli(runner, "train", tiny_corpus, *ALONE, "--max-steps", "4", "--out", "e.safetensors", "--resume")
    assert checkpoint.read_metadata("e.safetensors")["model"]["ensemble"] == 2


def test_a_checkpoint_with_a_damaged_count_of_members_is_refused(runner, tiny_corpus):
    run_cli(runner, "train", tiny_corpus, *FLAGS, "--max-steps", "1", "--out", "e.safetensors")
    tensors, header = checkpoint.load("e.safetensors")
    for count in (3, 0, "2", 10**9):
        header = json.loads(json.dumps(header))
        header["model"]["ensemble"] = count
        checkpoint.save("bad.safetensors", tensors, header)
        result = run_cli(runner, "generate", "--checkpoint", "bad.safetensors", "--length", "3", ok=False)
        assert result.exit_code != 0 and "bad.safetensors" in result.stderr and "Traceback" not in result.output


def test_an_ensemble_of_transformers_trains_but_does_not_export(runner, tiny_corpus):
    pytest.importorskip("onnx", reason="charlm[export] is not installed")
    run_cli(runner, "train", tiny_corpus, *TINY_TRANSFORMER, "--ensemble", "2", "--max-steps", "2",
            "--out", "t.safetensors")
    assert run_cli(runner, "generate", "--checkpoint", "t.safetensors", "--length", "5", "--seed", "1").stdout
    result = run_cli(runner, "export", "t.safetensors", "--out", "t.onnx", ok=False)
    assert result.exit_code != 0 and "ensemble of transformers" in result.stderr and not Path("t.onnx").exists()


def test_serve_batches_an_ensemble_and_writes_what_charlm_generate_writes(runner, tiny_corpus):
    run_cli(runner, "train", tiny_corpus, *FLAGS, "--max-steps", "4", "--out", "e.safetensors")
    assert_serve_writes_what_generate_writes(runner, "e.safetensors")
