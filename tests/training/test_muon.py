"""--optimizer muon: torch's Muon on the hidden matrices, torch's AdamW on the rest, in one
optimizer. Checked against the two of torch's optimizers stepped side by side, and through a
resume file (the guarantee table's bit-identical resume runs it too)."""

from __future__ import annotations

import copy

import pytest
import torch

from charlm.models.recurrent import LanguageModel, ModelConfig
from charlm.models.transformer import Transformer, TransformerConfig
from charlm.training.optimization import MuonAdamW, TrainConfig, make_optimizer, scheduled, set_rate
from tests.conftest import run_cli


def names(model, parameters) -> set[str]:
    chosen = {id(parameter) for parameter in parameters}
    return {name for name, parameter in model.named_parameters() if id(parameter) in chosen}


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    lstm = LanguageModel(ModelConfig(vocab_size=30, cell="lstm", num_layers=2, hidden_size=16, embedding_size=8))
    assert names(lstm, lstm.hidden_matrices()) == {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_ih_l1",
                                                   "rnn.weight_hh_l1"}
    one_hot = LanguageModel(ModelConfig(vocab_size=30, cell="gru", num_layers=1, hidden_size=16, embedding_size=0))
    assert names(one_hot, one_hot.hidden_matrices()) == {"rnn.weight_hh_l0"}  # its input weights embed the ids
    transformer = Transformer(TransformerConfig(vocab_size=30, embedding_size=16, num_layers=1, num_heads=2, seq_len=8))
    assert names(transformer, transformer.hidden_matrices()) == {
        "blocks.0.attention.qkv.weight", "blocks.0.attention.projection.weight", "blocks.0.mlp.0.weight",
        "blocks.0.mlp.2.weight"}
    optimizer = make_optimizer(transformer, TrainConfig(optimizer="muon", lr=1e-3, weight_decay=0.1))
    assert isinstance(optimizer, MuonAdamW)
    kinds = {(group["muon"], group["weight_decay"]): names(transformer, group["params"]) for group in optimizer.param_groups}
    assert kinds[(False, 0.0)] == {"blocks.0.attention_norm.weight", "blocks.0.mlp_norm.weight", "final_norm.weight"}
    assert kinds[(False, 0.1)] == {"token_embedding.weight", "position_embedding.weight"}  # nanoGPT decays them
    assert kinds[(True, 0.1)] == names(transformer, transformer.hidden_matrices())


@pytest.mark.parametrize("kind, muon_lr", [("lstm", None), ("transformer", None), ("lstm", 2e-2), ("transformer", 1e-2)])
def test_a_step_is_torchs_muon_and_adamw_side_by_side(kind, muon_lr):
    """Along a falling schedule, Muon's rate is the schedule's times muon_lr / lr."""
    torch.manual_seed(0)
    model = (LanguageModel(ModelConfig(vocab_size=20, cell="lstm", num_layers=2, hidden_size=16, embedding_size=8))
             if kind == "lstm" else
             Transformer(TransformerConfig(vocab_size=20, embedding_size=16, num_layers=2, num_heads=2, seq_len=8)))
    reference = copy.deepcopy(model)
    ours = make_optimizer(model, TrainConfig(optimizer="muon", lr=3e-3, weight_decay=0.1, muon_lr=muon_lr))
    hidden = {id(parameter) for parameter in reference.hidden_matrices()}
    groups = list(reference.parameter_groups(0.1))
    groups = groups if isinstance(groups[0], dict) else [{"params": groups}]
    split = lambda is_hidden: [{**group, "params": [p for p in group["params"] if (id(p) in hidden) is is_hidden]}  # noqa: E731
                               for group in groups]
    muon = torch.optim.Muon([g for g in split(True) if g["params"]], lr=3e-3, weight_decay=0.1,
                            adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([g for g in split(False) if g["params"]], lr=3e-3, weight_decay=0.1)
    ids = torch.randint(0, 20, (4, 9), generator=torch.Generator().manual_seed(1))
    for step in range(3):
        rate = 3e-3 * (1 - 0.3 * step)
        set_rate(ours, rate)
        assert scheduled(ours) == pytest.approx(rate, rel=1e-12)
        for group in muon.param_groups:
            group["lr"] = rate * (muon_lr or 3e-3) / 3e-3
        for group in adamw.param_groups:
            group["lr"] = rate
        for network, optimizers in ((model, [ours]), (reference, [muon, adamw])):
            torch.manual_seed(step)  # the same dropout masks
            loss, _, _ = network.batch_loss((ids[:, :-1], ids[:, 1:]), None)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
                optimizer.zero_grad()
    for (name, mine), theirs in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(mine, theirs), name
    saved = ours.state_dict()  # one state for both, and it loads back into a fresh one whole
    fresh = make_optimizer(model, TrainConfig(optimizer="muon", lr=3e-3, weight_decay=0.1, muon_lr=muon_lr))
    fresh.load_state_dict(copy.deepcopy(saved))
    assert fresh.muon.state is fresh.state and fresh.adamw.param_groups[0] is fresh.param_groups[-len(fresh.adamw.param_groups)]
    for index, values in saved["state"].items():
        for key, value in values.items():
            assert torch.equal(fresh.state_dict()["state"][index][key], value)


def test_a_muon_resume_state_of_the_wrong_shape_or_optimizer_is_refused(runner, tiny_corpus):
    from charlm.checkpoints import files

    run_cli(runner, "train", tiny_corpus, "--hidden-size", "8", "--max-steps", "3", "--optimizer", "muon", "--quiet")
    tensors, meta = files.load("checkpoints/tiny.resume.safetensors")
    buffers = [name for name in tensors if name.endswith(".momentum_buffer")]
    assert buffers and any(name.endswith(".exp_avg") for name in tensors)  # Muon's and AdamW's, side by side
    damaged = {**tensors, buffers[0]: tensors[buffers[0]][:1]}
    files.save("checkpoints/tiny.resume.safetensors", damaged, meta)
    result = run_cli(runner, "train", tiny_corpus, "--hidden-size", "8", "--max-steps", "6", "--optimizer", "muon",
                     "--quiet", "--resume", ok=False)
    assert result.exit_code == 1, result.output
    assert "damaged resume state" in result.stderr and "momentum_buffer" in result.stderr
    files.save("checkpoints/tiny.resume.safetensors", tensors, meta)
    run_cli(runner, "train", tiny_corpus, "--hidden-size", "8", "--max-steps", "6", "--optimizer", "muon",
            "--quiet", "--resume")


def test_muon_lr_is_muons_rate_and_only_with_muon(runner, tiny_corpus):
    import json

    result = run_cli(runner, "train", tiny_corpus, "--hidden-size", "8", "--max-steps", "3", "--muon-lr", "0.01",
                     "--quiet", ok=False)
    assert result.exit_code == 2 and "--muon-lr only applies with --optimizer muon" in result.stderr, result.output
    assert "Traceback" not in result.output
    result = run_cli(runner, "train", tiny_corpus, "--hidden-size", "8", "--max-steps", "3", "--optimizer", "muon",
                     "--muon-lr", "-1", "--quiet", ok=False)
    assert result.exit_code == 2 and "--muon-lr" in result.stderr and "x>0" in result.stderr, result.output
    run_cli(runner, "train", tiny_corpus, "--hidden-size", "8", "--max-steps", "4", "--eval-every", "2",
            "--optimizer", "muon", "--lr", "0.002", "--muon-lr", "0.05", "--lr-schedule", "constant", "--quiet")
    from charlm.checkpoints import files

    _, meta = files.load("checkpoints/tiny.safetensors")
    assert meta["train"]["muon_lr"] == 0.05  # recorded, so that --resume builds the same optimizer
    metrics = [json.loads(line) for line in open("checkpoints/tiny.metrics.jsonl")]
    assert {record["lr"] for record in metrics} == {0.002}  # the metrics say --lr's curve, not Muon's
