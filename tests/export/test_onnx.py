"""`charlm export --format onnx` against ONNX Runtime: the exported step gives torch's logits over
300 steps of generation for every language architecture on the registry (the transformer's fixed
window past its context, a bf16-trained model), and a damaged or foreign file is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY_KEYWORDS, TINY_TEXT, run_cli
from tests.models.test_registry import TOY, toy  # noqa: F401  (the fixture that registers the toy)

onnx = pytest.importorskip("onnx", reason="charlm[export] is not installed")
onnxruntime = pytest.importorskip("onnxruntime", reason="charlm[export] is not installed")

TRANSFORMER = {"model": "transformer", "num_layers": 2, "num_heads": 2, "embedding_size": 16, "batch_size": 4,
               "seq_len": 8, "quiet": True}  # a context of 8: 300 steps cut the window dozens of times
MODELS = {
    "rnn": {**TINY_KEYWORDS, "model": "rnn"},
    "gru": {**TINY_KEYWORDS, "model": "gru", "num_layers": 2},
    "lstm": {**TINY_KEYWORDS, "model": "lstm", "num_layers": 2},
    "transformer": TRANSFORMER,
    "lstm-bf16": {**TINY_KEYWORDS, "model": "lstm", "precision": "bf16"},
    "lstm-ensemble": {**TINY_KEYWORDS, "model": "lstm", "num_layers": 2, "ensemble": 2},
    "mingru": {"model": "mingru", "num_layers": 2, "embedding_size": 16, "hidden_size": 16, "batch_size": 4,
               "seq_len": 8, "quiet": True},
    "minlstm": {"model": "minlstm", "num_layers": 1, "embedding_size": 16, "hidden_size": 8, "batch_size": 4,
                "seq_len": 8, "quiet": True},
}


def train(folder: Path, name: str) -> Path:
    import charlm

    (folder / "tiny.txt").write_text(TINY_TEXT, encoding="utf-8")
    return charlm.train(folder / "tiny.txt", **MODELS[name], max_steps=20, out=folder / f"{name}.safetensors").checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """{name: (checkpoint, its ONNX file)} of each model in MODELS, exported through the CLI."""
    from click.testing import CliRunner

    folder = tmp_path_factory.mktemp("export")
    made = {}
    for name in MODELS:
        checkpoint = train(folder, name)
        run_cli(CliRunner(), "export", checkpoint, "--out", folder / f"{name}.onnx")
        made[name] = checkpoint, folder / f"{name}.onnx"
    return made


def initial_state(meta: dict, batch_size: int) -> dict[str, np.ndarray]:
    """The state before any token, from the file's metadata alone (as a user of the file makes it)."""
    state = {}
    for entry in meta["state"]:
        shape = [batch_size if axis == entry["batch_axis"] else size for axis, size in enumerate(entry["shape"])]
        state[f"state.{entry['name']}"] = np.full(shape, entry["initial"], dtype=entry["dtype"])
    return state


@pytest.mark.parametrize("name", MODELS)
def test_onnx_runtime_gives_torchs_logits_over_300_steps_of_generation(exported, name):
    from charlm.checkpoints.loading import load_model

    checkpoint, path = exported[name]
    model, _, vocab = load_model(checkpoint, "lm")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["charlm"])
    assert meta["vocab"]["itos"] == vocab.itos
    rows = 3
    step = model.stepper()  # what `charlm generate` steps with
    state, torch_state = initial_state(meta, rows), None
    ids = torch.tensor([vocab["t"], vocab["h"], vocab[" "]])
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(300):
        with torch.inference_mode():
            expected, torch_state = step(ids, torch_state)
        logits, *after = session.run(None, {"ids": ids.numpy(), **state})
        state = dict(zip(state, after))
        worst = max(worst, float(np.abs(logits - expected.numpy()).max()))
        ids = torch.multinomial(torch.softmax(expected, -1), 1, generator=generator)[:, 0]  # generation's next ids
    assert worst < 1e-4, f"{name}: ONNX Runtime's logits differ from torch's by {worst}"
    if name == "transformer":  # the window holds what generation's holds: it was cut where generation cut it
        length = int(state["state.length"][0])
        assert length == torch_state.length <= model.config.seq_len
        assert (state["state.ids"][:, :length] == torch_state.ids.numpy()).all()


def test_the_readme_loads_the_model_with_only_onnxruntime_and_numpy(exported, tmp_path):
    """The README's snippet, run as it is, in a Python where torch and charlm cannot be imported."""
    import subprocess
    import sys

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Run a model anywhere: ONNX and the browser", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "model.onnx").write_bytes(exported["lstm"][1].read_bytes())
    blocked = "import sys\nsys.modules['torch'] = sys.modules['charlm'] = None\n"
    result = subprocess.run([sys.executable, "-c", blocked + snippet], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout.removesuffix("\n")
    assert text.startswith("the ") and len(text) > 200
    assert set(text) <= set(TINY_TEXT)


# ---------------------------------------------------------------------------------------------
# What charlm refuses to read back


def refused(runner, path: Path) -> str:
    result = run_cli(runner, "export", path, "--check", ok=False)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("charlm: error:"), result.output
    return lines[0]


def rewritten(source: Path, target: Path, change) -> Path:
    model = onnx.load(str(source))
    change(model)
    onnx.save(model, str(target))
    return target


def test_a_good_export_reads_back(runner, exported):
    result = run_cli(runner, "export", exported["transformer"][1], "--check")
    assert "charlm ONNX export of transformer 2x16" in result.output


def test_a_truncated_file_is_refused(runner, exported, tmp_path):
    data = exported["lstm"][1].read_bytes()
    for size in (len(data) // 2, len(data) - 7):
        (tmp_path / "cut.onnx").write_bytes(data[:size])
        line = refused(runner, tmp_path / "cut.onnx")
        assert "cut.onnx" in line and ("damaged" in line or "not an ONNX file" in line or "not the one" in line)


def test_an_onnx_file_charlm_did_not_write_is_refused(runner, tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "foreign.onnx"))
    assert "charlm did not write" in refused(runner, tmp_path / "foreign.onnx")


def test_another_models_graph_under_this_metadata_is_refused(runner, exported, tmp_path):
    other = onnx.load(str(exported["rnn"][1]))

    def swap(model):
        model.graph.CopyFrom(other.graph)

    path = rewritten(exported["lstm"][1], tmp_path / "swapped.onnx", swap)
    assert "not the one its charlm metadata describes" in refused(runner, path)


def test_wrong_metadata_is_refused(runner, exported, tmp_path):
    def edit(key, value):
        def change(model):
            entry = next(entry for entry in model.metadata_props if entry.key == "charlm")
            meta = json.loads(entry.value)
            meta[key] = value
            entry.value = json.dumps(meta)
        return change

    for key, value, said in (("vocab_size", 3, "damaged charlm metadata"), ("vocab", {"itos": ["x"]}, "damaged"),
                             ("version", 99, "damaged"), ("state", [], "inputs and outputs")):
        path = rewritten(exported["lstm"][1], tmp_path / "edited.onnx", edit(key, value))
        assert said in refused(runner, path)
    path = rewritten(exported["lstm"][1], tmp_path / "garbled.onnx",
                     lambda model: next(e for e in model.metadata_props if e.key == "charlm").__setattr__("value", "{"))
    assert "damaged charlm metadata" in refused(runner, path)


def test_a_damaged_file_never_reaches_the_web_page(runner, exported, tmp_path):
    (tmp_path / "cut.onnx").write_bytes(exported["lstm"][1].read_bytes()[:1000])
    result = run_cli(runner, "export", tmp_path / "cut.onnx", "--format", "web", "--out", tmp_path / "site",
                     "--ort", tmp_path, ok=False)
    assert result.exit_code == 1 and not (tmp_path / "site" / "model.onnx").exists()


# ---------------------------------------------------------------------------------------------
# Pair models: the encoder, then the decoder's steps


@pytest.fixture(scope="module")
def pair_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a tiny seq2seq checkpoint with attention, of 2 LSTM layers; the folder it exported to)."""
    import charlm
    from click.testing import CliRunner

    folder = tmp_path_factory.mktemp("pairs")
    words = ["man", "king", "girl", "boy", "queen", "women", "time", "machine"]
    (folder / "pairs.tsv").write_text("".join(f"{w}\t{w[::-1]}\n" for w in words) * 6, encoding="utf-8")
    checkpoint = charlm.train(folder / "pairs.tsv", model_type="seq2seq", model="lstm", num_layers=2, hidden_size=16,
                              embedding_size=8, batch_size=4, quiet=True, max_steps=20,
                              out=folder / "pairs.safetensors").checkpoint
    run_cli(CliRunner(), "export", checkpoint, "--out", folder / "exported")
    return checkpoint, folder / "exported"


def test_a_pair_models_encoder_and_decoder_steps_give_torchs_logits(pair_export):
    from charlm.checkpoints.loading import load_translator
    from charlm.text.pairs import BOS_INDEX

    checkpoint, folder = pair_export
    model, _, source_vocab, target_vocab = load_translator(checkpoint)
    encoder, decoder = (onnxruntime.InferenceSession(str(folder / f"{half}.onnx"), providers=["CPUExecutionProvider"])
                        for half in ("encoder", "decoder"))
    meta = json.loads(decoder.get_modelmeta().custom_metadata_map["charlm"])
    assert meta["vocab"]["itos"] == target_vocab.itos
    for words in (["man"], ["kingdom", "machine"]):  # rows of one length: the encoder takes no padding
        source = torch.tensor([source_vocab.encode(list(word)) for word in words])
        with torch.inference_mode():
            expected_state = model.encode(source)
        state = dict(zip([f"state.{entry['name']}" for entry in meta["state"]],
                         encoder.run(None, {"source": source.numpy()})))
        previous, worst = torch.full((len(words),), BOS_INDEX), 0.0
        for _ in range(30):  # past <eos>: the steps go on as greedy search's would for a longer row
            with torch.inference_mode():
                expected, expected_state = model.decode_step(previous, expected_state)
            logits, *after = decoder.run(None, {"ids": previous.numpy(), **state})
            state = dict(zip(state, after))
            worst = max(worst, float(np.abs(logits - expected.numpy()).max()))
            previous = expected.argmax(-1)
        assert worst < 1e-4, f"{words}: ONNX Runtime's logits differ from torch's by {worst}"


def test_a_pair_export_reads_back_as_one_and_refuses_halves_of_two(runner, pair_export, exported, tmp_path):
    _, folder = pair_export
    assert "charlm ONNX export of" in run_cli(runner, "export", folder, "--check").output
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "encoder.onnx").write_bytes((folder / "encoder.onnx").read_bytes())
    (mixed / "decoder.onnx").write_bytes(exported["lstm"][1].read_bytes())  # a language model's step
    result = run_cli(runner, "export", mixed, "--check", ok=False)
    assert result.exit_code == 1 and "not the two halves of one charlm export" in result.output
    result = run_cli(runner, "export", folder / "decoder.onnx", "--format", "web", "--out", tmp_path / "site",
                     "--ort", tmp_path, ok=False)
    assert result.exit_code == 1 and "language model" in result.output


def test_a_new_registry_model_exports_through_its_own_step(runner, tiny_corpus, toy):  # noqa: F811
    """The registry test's toy (its state batch-first, under its own name) needs no export code."""
    from charlm.checkpoints.loading import load_model

    run_cli(runner, "train", tiny_corpus, *TOY, "--max-steps", "3", "--out", "toy.safetensors")
    run_cli(runner, "export", "toy.safetensors", "--out", "toy.onnx")
    model, _, vocab = load_model("toy.safetensors", "lm")
    session = onnxruntime.InferenceSession("toy.onnx", providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["charlm"])
    assert [(entry["name"], entry["batch_axis"]) for entry in meta["state"]] == [("memory", 0)]
    state, torch_state = initial_state(meta, 2), None
    for pair in zip("the time", "machine!"):  # two rows, a character each per step ("!": <unk>, as any id)
        ids = torch.tensor(vocab.encode(pair))
        with torch.inference_mode():
            expected, torch_state = model.step(ids, torch_state)
        logits, *after = session.run(None, {"ids": ids.numpy(), **state})
        state = dict(zip(state, after))
        assert np.abs(logits - expected.numpy()).max() < 1e-5
