"""minGRU and minLSTM (`charlm.models.minrnn`): the parallel scan is the paper's recurrence, step by
step; a text in two calls is a text in one; generation one step at a time is the training pass;
they train in bf16 and learn; and they go through charlm's commands as every language model does."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import charlm
from charlm.checkpoints import files as checkpoint
from charlm.models.minrnn import CHUNK, MIN_CELLS, MinRNN, MinRNNConfig, MinRNNLayer, MinRNNState, scan
from tests.conftest import TINY_TEXT, assert_serve_writes_what_generate_writes, run_cli

CELLS = pytest.mark.parametrize("cell", MIN_CELLS)


def paper_recurrence(layer: MinRNNLayer, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The paper's sequential form, written from its equations (not in log space): all h (B, T, H)."""
    g = lambda v: torch.where(v >= 0, v + 0.5, torch.sigmoid(v))  # noqa: E731
    outputs = []
    for projected in layer.project(x).unbind(1):  # (B, gates * H) per position
        if layer.cell == "mingru":
            candidate, z = projected.chunk(2, dim=-1)
            z = torch.sigmoid(z)
            h = (1 - z) * h + z * g(candidate)
        else:
            candidate, f, i = projected.chunk(3, dim=-1)
            f, i = torch.sigmoid(f), torch.sigmoid(i)
            h = f / (f + i) * h + i / (f + i) * g(candidate)
        outputs.append(h)
    return torch.stack(outputs, dim=1)


@CELLS
@pytest.mark.parametrize("form", ["scan", "sequential"])
def test_the_scan_is_the_step_by_step_recurrence_with_its_gradients(cell, form):
    """In float64, over more positions than one chunk, from a carried state: the same h and the
    same gradients of the input, the carried state and the weights, to rounding; for the scan (a
    GPU's training) and the position-by-position form (a CPU's) alike."""
    from charlm.models import minrnn

    torch.manual_seed(0)
    layer = MinRNNLayer(cell, 5, 7).double()
    x = (3 * torch.randn(3, 150, 5, dtype=torch.float64)).requires_grad_()  # both branches of g, saturated gates
    h0 = torch.rand(3, 7, dtype=torch.float64).requires_grad_()
    weights = torch.randn(3, 150, 7, dtype=torch.float64)  # a loss that reads every position
    results = []
    for run in (lambda: getattr(minrnn, form)(*layer.coefficients(x), h0), lambda: paper_recurrence(layer, x, h0)):
        h = run()
        gradients = torch.autograd.grad((h * weights).sum(), (x, h0, layer.project.weight))
        results.append((h, *gradients))
    for ours, reference in zip(*results, strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-11, rtol=1e-10)


def test_the_chunked_scan_keeps_long_fast_decaying_sequences_exact_in_fp32():
    """Strong decay over 4,000 positions: log A_t falls to -8,000, where one scan of the whole in fp32
    would subtract logs of that size; in chunks of CHUNK, fp32 stays within 5e-5 of float64, relatively."""
    torch.manual_seed(1)
    log_a = -4 * torch.rand(2, 4000, 3, dtype=torch.float64)
    log_b = torch.randn(2, 4000, 3, dtype=torch.float64)
    h0 = torch.rand(2, 3, dtype=torch.float64)
    exact = scan(log_a, log_b, h0)
    a, b, reference = log_a.exp(), log_b.exp(), [h0]  # in float64, the scan is the recurrence
    for t in range(4000):
        reference.append(a[:, t] * reference[-1] + b[:, t])
    torch.testing.assert_close(exact, torch.stack(reference[1:], dim=1), atol=1e-12, rtol=1e-10)
    error = lambda chunk: float(((scan(log_a.float(), log_b.float(), h0.float(), chunk).double() - exact)  # noqa: E731
                                 / exact).abs().max())
    assert error(CHUNK) < 5e-5 and error(4000) > 10 * error(CHUNK)  # one scan of the whole: ~40x the error


def tiny(cell: str, **sizes: int) -> MinRNN:
    torch.manual_seed(2)
    model = MinRNN(MinRNNConfig(vocab_size=11, cell=cell, **{"embedding_size": 8, "hidden_size": 12,
                                                              "num_layers": 2, **sizes}))
    for block in model.blocks:  # a shift other than its initial 0, so that the carried inputs matter
        torch.nn.init.uniform_(block.shift)
    return model.double().eval()


@CELLS
def test_a_text_in_two_calls_gives_the_logits_and_state_of_one(cell):
    """What sequential batches rely on: the state carried from one call into the next."""
    model = tiny(cell)
    ids = torch.randint(0, 11, (3, 90))
    whole, state = model(ids)
    first, middle = model(ids[:, :41])
    second, after = model(ids[:, 41:], middle)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-12, rtol=1e-10)
    for ours, reference in zip(after.tensors().values(), state.tensors().values(), strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-12, rtol=1e-10)


@CELLS
def test_generation_step_by_step_is_the_training_pass(cell):
    """`step` from a fixed-size state, one id at a time, gives the logits of the whole text in one pass,
    and so does the stepper generation uses (fp32), a state wider than the model included."""
    model = tiny(cell, hidden_size=16)
    ids = torch.randint(0, 11, (2, 70))
    whole, _ = model(ids)
    stepper, state, logits = model.stepper(), None, []
    for position in range(ids.shape[1]):
        out, state = stepper(ids[:, position], state)
        logits.append(out)
        assert state.h.shape == (2, 2, 16) and state.previous.shape == (2, 2, 8)  # (L, B, H), (L, B, E)
    torch.testing.assert_close(torch.stack(logits, dim=1), whole, atol=1e-12, rtol=1e-10)


def test_a_state_saves_splits_and_joins_by_rows():
    model = tiny("mingru")
    _, state = model(torch.randint(0, 11, (4, 5)))
    again = MinRNNState.from_tensors(state.tensors())
    joined = MinRNNState.join([again.rows(slice(0, 1)), again.rows(slice(1, 4))])
    assert joined.batch_size == 4 and all(torch.equal(joined.tensors()[name], state.tensors()[name])
                                          for name in ("h", "previous"))
    with pytest.raises(ValueError, match="h and previous"):
        MinRNNState.from_tensors({"0": state.h})


@CELLS
def test_bf16_autocast_trains_with_the_scan_in_fp32(cell):
    """Under CPU bf16 autocast the products run in bf16 and the scan in fp32: the logits stay close
    to fp32's, and steps of AdamW lower the loss."""
    torch.manual_seed(3)
    model = MinRNN(MinRNNConfig(vocab_size=11, cell=cell, embedding_size=16, hidden_size=16, num_layers=2))
    ids = torch.randint(0, 11, (4, 33))
    batch = (ids[:, :-1], ids[:, 1:])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(batch[0])
        assert logits.dtype == torch.bfloat16 and state.h.dtype == torch.float32
        assert model.blocks[0].recurrent(torch.randn(1, 3, 16)).dtype == torch.float32
    torch.testing.assert_close(logits.float(), model(batch[0])[0], atol=0.1, rtol=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, count, _ = model.batch_loss(batch)
        (loss / count).backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item() / count)
    assert all(math.isfinite(value) for value in losses) and losses[-1] < 0.5 * losses[0]


@CELLS
def test_a_tiny_model_learns_well_below_the_unigram_loss(cell, tmp_path):
    """charlm's own run, its defaults but the size and steps: a few seconds of the tiny text bring the
    held-out loss far below what its character frequencies give."""
    (tmp_path / "tiny.txt").write_text(TINY_TEXT, encoding="utf-8")
    run = charlm.train(tmp_path / "tiny.txt", model=cell, embedding_size=32, hidden_size=32, num_layers=2,
                       seq_len=32, batch_size=8, lr=1e-2, warmup_steps=10, max_steps=150, eval_every=50, quiet=True,
                       out=tmp_path / "m.safetensors")
    unigram = run.summary["unigram_loss"]  # the held-out loss of the training split's character frequencies
    assert 2.0 < unigram and run.best_val_loss < 0.4 * unigram, (run.best_val_loss, unigram)


TINY_FLAGS = ("--embedding-size", "8", "--hidden-size", "12", "--num-layers", "2", "--batch-size", "4",
              "--seq-len", "8", "--dropout", "0.1", "--eval-every", "3", "--quiet")


@CELLS
def test_it_trains_resumes_generates_evaluates_and_shows_its_info(runner, tiny_corpus, cell):
    train = lambda *extra: run_cli(runner, "train", tiny_corpus, "--model", cell, *TINY_FLAGS, *extra)  # noqa: E731
    train("--max-steps", "6", "--out", "whole.safetensors")
    meta = checkpoint.read_metadata("whole.safetensors")
    assert meta["architecture"] == cell and meta["model"]["cell"] == cell and meta["model"]["hidden_size"] == 12
    carried = checkpoint.load("whole.resume.safetensors")[0]
    assert carried["carry.h"].shape == (2, 4, 12) and carried["carry.previous"].shape == (2, 4, 8)

    # resumed from step 3, it is the unbroken run, bit for bit (dropout on: its random state too)
    train("--max-steps", "3", "--out", "broken.safetensors")
    train("--max-steps", "6", "--out", "broken.safetensors", "--resume")
    assert Path("broken.safetensors").read_bytes() == Path("whole.safetensors").read_bytes()

    generate = ("generate", "--checkpoint", "whole.safetensors", "--prefix", "the ", "--length", "20", "--seed", "1")
    generated = run_cli(runner, *generate).stdout
    assert generated.startswith("the ") and len(generated.rstrip("\n")) == 24
    assert run_cli(runner, *generate).stdout == generated

    report = json.loads(run_cli(runner, "eval", "--checkpoint", "whole.safetensors", tiny_corpus, "--json").stdout)
    loaded = charlm.load("whole.safetensors")
    assert report["loss"] == pytest.approx(loaded.evaluate(tiny_corpus.read_text())["loss"], abs=1e-5)
    shown = run_cli(runner, "info", "whole.safetensors").stdout
    assert f"{cell}: " in shown and "hidden_size=12" in shown


def test_muon_takes_its_hidden_matrices_and_a_muon_run_resumes_bit_for_bit(runner, tiny_corpus):
    """--optimizer muon orthogonalises the min-RNN's input projections, output projections and MLP
    matrices, not the embedding or the head; stopped and resumed, its run is the unbroken one."""
    model = tiny("minlstm")
    hidden = {id(parameter) for parameter in model.hidden_matrices()}
    assert sorted(name for name, parameter in model.named_parameters() if id(parameter) in hidden) == sorted(
        f"blocks.{layer}.{name}.weight" for layer in range(2) for name in ("recurrent.project", "out", "mlp.0", "mlp.2"))
    train = lambda *extra: run_cli(runner, "train", tiny_corpus, "--model", "mingru", *TINY_FLAGS,  # noqa: E731
                                   "--optimizer", "muon", *extra)
    train("--max-steps", "6", "--out", "whole.safetensors")
    train("--max-steps", "3", "--out", "broken.safetensors")
    train("--max-steps", "6", "--out", "broken.safetensors", "--resume")
    assert Path("broken.safetensors").read_bytes() == Path("whole.safetensors").read_bytes()


def test_a_flag_it_has_no_setting_for_is_refused(runner, tiny_corpus):
    result = run_cli(runner, "train", tiny_corpus, "--model", "minlstm", *TINY_FLAGS, "--max-steps", "1",
                     "--weight-drop", "0.2", ok=False)
    assert result.exit_code != 0 and "--weight-drop" in result.stderr and "minlstm" in result.stderr
    assert "Traceback" not in result.output


def test_the_layers_hook_gives_each_layers_states_and_the_state_after(runner, tiny_corpus):
    """What the inside view reads (`MinRNN.layer_states`), and `charlm inside` reading it."""
    model = tiny("minlstm")
    ids = torch.randint(0, 11, (2, 9))
    logits, found, state = model.layer_states(ids)
    assert sorted(found) == ["layer 0 h", "layer 1 h"] and torch.equal(logits, model(ids)[0])
    for layer in range(2):
        assert torch.equal(found[f"layer {layer} h"][:, -1], state.h[layer])
    run_cli(runner, "train", tiny_corpus, "--model", "mingru", *TINY_FLAGS, "--max-steps", "1")
    result = run_cli(runner, "inside", tiny_corpus, "--no-color")
    assert result.stdout.startswith(tiny_corpus.read_text(encoding="utf-8")[:50])
    assert "layer 1 h" in result.stderr and "nats," in result.stderr


def test_serve_generates_what_charlm_generate_writes(runner, tiny_corpus):
    """The server batches requests by joining their states: a min-RNN's state joins and splits by rows."""
    run_cli(runner, "train", tiny_corpus, "--model", "mingru", *TINY_FLAGS, "--max-steps", "4",
            "--out", "m.safetensors")
    assert_serve_writes_what_generate_writes(runner, "m.safetensors")
