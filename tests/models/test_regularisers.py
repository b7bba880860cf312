"""The regularisers: DropConnect on W_hh (--weight-drop), locked dropout (--locked-dropout),
embedding dropout (--embedding-dropout) and the moving average of the weights (--ema). Each is
checked against its definition and against torch's own modules, on every path a model can take."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from charlm.checkpoints import files as checkpoint
from charlm.cli import cli as main
from charlm.models import kernels, recurrent_layers
from charlm.models.recurrent import LanguageModel, ModelConfig
from charlm.presets import record
from charlm.training.optimization import WeightAverage

TINY = ["--hidden-size", "16", "--embedding-size", "8", "--batch-size", "4", "--seq-len", "8", "--quiet"]


def _model(hidden_size: int = 12, **settings) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(vocab_size=11, hidden_size=hidden_size, embedding_size=6, **settings))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_weight_drop_zeroes_the_gradient_of_the_dropped_recurrent_weights(cell: str) -> None:
    """DropConnect: a dropped entry of W_hh takes no part in the batch, so its gradient is exactly 0;
    about p of them are dropped, a new mask each batch, and evaluation uses all of W_hh."""
    model = _model(64, cell=cell, dropout=0.0, weight_drop=0.5, num_layers=2)
    ids = torch.randint(0, 11, (8, 20))
    masks = []
    for _ in range(2):
        model.zero_grad()
        logits, _ = model(ids)
        logits.sum().backward()
        grad = model.rnn.weight_hh_l1.grad
        masks.append(grad == 0)
        assert 0.4 < masks[-1].float().mean() < 0.6
    assert not torch.equal(masks[0], masks[1])
    plain = _model(64, cell=cell, dropout=0.0, num_layers=2).eval()
    model.eval()
    assert torch.equal(model(ids)[0], plain(ids)[0])


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("locked", [False, True])
def test_the_fast_path_with_dropped_weights_and_locked_dropout_equals_torchs_module(cell: str, locked: bool) -> None:
    """charlm's kernels, given a masked W_hh and locked dropout between layers, compute what torch's
    own module computes with those weights and masks (layer by layer), forward and backward. (torch's
    standard dropout draws its masks its own way: unlocked, the layers get none here.)"""
    torch_class = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell]
    torch.manual_seed(1)
    module = torch_class(5, 7, 3, batch_first=True, dropout=0.4 if locked else 0.0)
    x = torch.randn(3, 6, 5)
    weights = {f"weight_hh_l{k}": kernels.dropout(getattr(module, f"weight_hh_l{k}"), 0.3) for k in range(3)}
    results = []
    for fast in (True, False):
        module.zero_grad()
        torch.manual_seed(2)
        out, _ = recurrent_layers.recurrent(module, x, None, fast=fast, weights=weights, locked=locked)
        out.pow(2).sum().backward(retain_graph=True)
        results.append((out.detach(), module.weight_ih_l2.grad.clone(), module.weight_hh_l0.grad.clone()))
    for fast_tensor, torch_tensor in zip(*results):
        torch.testing.assert_close(fast_tensor, torch_tensor, rtol=1e-5, atol=1e-6)


def test_locked_dropout_keeps_one_mask_for_every_step_of_a_sequence() -> None:
    model = _model(dropout=0.5, locked_dropout=True).train()
    ids = torch.randint(0, 11, (4, 30))
    embedded = model.embed(ids)  # (B, T, E)
    dropped = embedded == 0
    assert dropped.any() and not dropped.all()
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))  # the same features at every step
    assert not torch.equal(dropped[0], dropped[1])  # each sequence its own mask
    standard = _model(dropout=0.5).train().embed(ids) == 0
    assert not torch.equal(standard, standard[:, :1].expand_as(standard))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_from_scratch_cells_take_the_same_masks_as_torchs_modules(cell: str) -> None:
    """The from-scratch twin with weight drop and locked dropout: the same training loss, for the
    same seed, as torch's fused module with the same weights."""
    losses = []
    for from_scratch in (False, True):
        model = _model(cell=cell, num_layers=2, dropout=0.3, weight_drop=0.4, locked_dropout=True,
                       embedding_dropout=0.2, from_scratch=from_scratch).train()
        torch.manual_seed(3)
        ids = torch.randint(0, 11, (4, 9))
        losses.append(model.batch_loss((ids, ids.roll(1, 1)))[0])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)


def test_embedding_dropout_drops_whole_tokens() -> None:
    """A dropped token is a zero vector wherever it occurs in the batch; a kept one never is."""
    model = _model(dropout=0.0, embedding_dropout=0.5).train()
    ids = torch.arange(11).repeat(4, 3)  # every token, many times
    zero = (model.embed(ids) == 0).all(-1)  # (B, T): the whole vector dropped
    for token in range(11):
        where = zero[ids == token]
        assert where.all() or not where.any()
    assert zero.any() and not zero.all()


def test_weight_average_is_the_warmed_up_exponential_average_of_the_weights() -> None:
    """avg_n = avg_{n-1} + (1 - d_n) (w_n - avg_{n-1}), d_n = min(decay, (1 + n) / (10 + n)),
    computed here step by step in float64 from the weights after each step."""
    model = nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.9)
    expected = [parameter.detach().double().clone() for parameter in model.parameters()]
    for n in range(1, 40):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        average.update(model)
        decay = min(0.9, (1 + n) / (10 + n))
        expected = [e + (1 - decay) * (p.detach().double() - e) for e, p in zip(expected, model.parameters())]
    for mine, reference in zip(average.average, expected):
        torch.testing.assert_close(mine.double(), reference, rtol=1e-5, atol=1e-5)
    own = [parameter.detach().clone() for parameter in model.parameters()]
    with average.applied(model):
        for parameter, mine in zip(model.parameters(), average.average):
            assert torch.equal(parameter, mine)
    for parameter, before in zip(model.parameters(), own):  # the weights themselves back afterwards
        assert torch.equal(parameter, before)


def test_ema_evaluates_and_keeps_the_average_and_resumes_it(tmp_path, monkeypatch) -> None:
    """With --ema the model checkpoint holds the average (what was evaluated), the resume file the
    weights and the average, and a stopped run resumed gives the unbroken run's model bytes."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.txt").write_text("the time machine by h g wells\n" * 300, encoding="utf-8")
    runner = CliRunner()
    flags = [*TINY, "--ema", "0.9", "--keep", "last", "--eval-every", "10", "--weight-drop", "0.3",
             "--locked-dropout", "--embedding-dropout", "0.1"]
    for out, steps, resume in (("whole", 40, []), ("part", 20, []), ("part", 40, ["--resume"])):
        result = runner.invoke(main, ["train", "text.txt", *flags, "--max-steps", str(steps), "--out",
                                      f"{out}.safetensors", *resume])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "whole.safetensors").read_bytes() == (tmp_path / "part.safetensors").read_bytes()
    model, _ = checkpoint.load(str(tmp_path / "whole.safetensors"))
    resume, meta = checkpoint.load(str(tmp_path / "whole.resume.safetensors"))
    assert int(resume["ema.updates"]) == 40
    for name, tensor in model.items():
        key = name.removeprefix("model.")
        assert torch.equal(tensor, resume[f"ema.{key}"])
    assert any(not torch.equal(tensor, resume[name]) for name, tensor in model.items())  # not the raw weights
    assert meta["train"]["ema"] == 0.9 and meta["model"]["weight_drop"] == 0.3


def test_a_damaged_weight_average_in_a_resume_file_is_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.txt").write_text("abcdefgh " * 400, encoding="utf-8")
    runner = CliRunner()
    args = ["train", "text.txt", *TINY, "--ema", "0.9", "--max-steps", "10"]
    assert runner.invoke(main, args).exit_code == 0
    path = tmp_path / "checkpoints" / "text.resume.safetensors"
    tensors, meta = checkpoint.load(str(path))
    tensors["ema.head.weight"] = torch.full_like(tensors["ema.head.weight"], float("nan"))
    checkpoint.save(str(path), tensors, meta)
    result = runner.invoke(main, [*args[:-1], "20", "--resume"])
    assert result.exit_code != 0 and "damaged resume state" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_without_the_regularisers_a_checkpoint_records_what_it_always_did() -> None:
    """Fields added later are recorded only when set, so a run without them writes the bytes it did
    before they existed (scripts/checkpoint_digests.py shows it) and resumes a run started then."""
    assert set(record(ModelConfig(vocab_size=5))) == {"vocab_size", "cell", "embedding_size", "hidden_size",
                                                      "num_layers", "dropout", "from_scratch"}
    assert record(ModelConfig(vocab_size=5, weight_drop=0.5))["weight_drop"] == 0.5


@pytest.mark.parametrize("args, says", [
    (["--embedding-size", "0", "--embedding-dropout", "0.1"], "embedding_dropout needs an embedding"),
    (["--weight-drop", "1"], "--weight-drop"),
    (["--ema", "1"], "--ema"),
    (["--ema", "nan"], "--ema"),
])
def test_bad_regulariser_settings_are_one_line(tmp_path, monkeypatch, args, says) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.txt").write_text("abcdefgh " * 400, encoding="utf-8")
    result = CliRunner().invoke(main, ["train", "text.txt", *TINY, "--max-steps", "2", *args])
    assert result.exit_code != 0 and says in result.output and "Traceback" not in result.output


def test_the_regularisers_are_for_text_models_and_fine_tuning_may_change_them(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pairs.tsv").write_text("".join(f"{w}\t{w[::-1]}\n" for w in ("man", "king", "queen", "boy")) * 5)
    result = CliRunner().invoke(main, ["train", "pairs.tsv", "--weight-drop", "0.2", "--epochs", "1", "--quiet"])
    assert result.exit_code != 0 and "for language models of text" in result.output
    (tmp_path / "text.txt").write_text("abcdefgh " * 400, encoding="utf-8")
    runner = CliRunner()
    assert runner.invoke(main, ["train", "text.txt", *TINY, "--max-steps", "4", "--out", "parent.safetensors"]).exit_code == 0
    result = runner.invoke(main, ["train", "text.txt", "--init-from", "parent.safetensors", "--weight-drop", "0.3",
                                  "--locked-dropout", "--max-steps", "4", "--batch-size", "4", "--seq-len", "8",
                                  "--quiet", "--out", "child.safetensors"])
    assert result.exit_code == 0, result.output
    meta = checkpoint.read_metadata(str(tmp_path / "child.safetensors"))
    assert meta["model"]["weight_drop"] == 0.3 and meta["model"]["locked_dropout"] is True
    assert json.dumps(meta["parent"])


def test_ema_new_on_resume_averages_from_the_resumed_weights(tmp_path, monkeypatch) -> None:
    """A run resumed with --ema that it did not have starts the average from the weights it
    resumes (not from those it was built with): after one more step the average is
    w_10 + (1 - d_1) (w_11 - w_10), d_1 = min(0.9, 2 / 11)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.txt").write_text("the time machine by h g wells\n" * 300, encoding="utf-8")
    runner = CliRunner()
    assert runner.invoke(main, ["train", "text.txt", *TINY, "--max-steps", "10", "--out", "r.safetensors"]).exit_code == 0
    before, _ = checkpoint.load(str(tmp_path / "r.resume.safetensors"))
    result = runner.invoke(main, ["train", "text.txt", *TINY, "--max-steps", "11", "--ema", "0.9", "--keep", "last",
                                  "--out", "r.safetensors", "--resume"])
    assert result.exit_code == 0, result.output
    after, _ = checkpoint.load(str(tmp_path / "r.resume.safetensors"))
    kept, _ = checkpoint.load(str(tmp_path / "r.safetensors"))
    weight = 1 - min(0.9, 2 / 11)
    for name, tensor in kept.items():
        expected = before[name] + weight * (after[name] - before[name])
        torch.testing.assert_close(tensor, expected, rtol=1e-5, atol=1e-6)
