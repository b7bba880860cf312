"""ONNX: a checkpoint's one-step function as an ONNX file that carries what it needs to be used.

    export_onnx("model.safetensors", "model.onnx")      # the graph of `charlm.export.steps`, and its metadata
    read_export("model.onnx")                            # that metadata, once the file is checked

The graph takes `ids` (B,) int64 and the state tensors (`state.<name>`) and returns `logits` (B, V)
and the state after them (`next.<name>`); feed each `next.<name>` back as `state.<name>`. The
file's metadata (ONNX `metadata_props`, key "charlm", JSON) says the rest: the vocab and how
tokens join, the architecture and model config, each state tensor's shape (with its batch axis),
dtype and first value (zeros, but for nothing), and the SHA-256 of the graph, so that a file whose
graph is not the one its metadata describes, a damaged one, or one charlm did not write is refused
in one line before any runtime sees it (`read_export`).

onnx, onnxscript (torch's exporter needs it) and onnxruntime are the optional extra `export`;
this module is onnx's one home in charlm. It knows nothing about web pages or sampling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from typing import Any

import torch

from charlm.errors import CharlmError, MissingExtra
from charlm.export.steps import step_graph
from charlm.runtime.files import atomic_write

FORMAT = "charlm-onnx"
VERSION = 1
KEY = "charlm"  # the metadata_props entry
INSTALL_HINT = "pip install 'charlm[export]'"


def _onnx() -> Any:
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx.export's exporter)
    except ImportError:
        raise MissingExtra(f"exporting to ONNX needs onnx and onnxscript, an optional extra: {INSTALL_HINT}") from None
    return onnx


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Write `checkpoint`'s language model as one ONNX file at `out`; returns its metadata."""
    from charlm.checkpoints.files import read_metadata
    from charlm.checkpoints.loading import load_with_vocabs
    from charlm.checkpoints.metadata import read
    from charlm.models import registry

    _onnx()
    task = read(read_metadata(checkpoint)).task
    if task != "lm":
        raise CharlmError(f"{checkpoint}: charlm export writes language models; this checkpoint is a {task} model")
    model, meta, vocabs = load_with_vocabs(checkpoint, task)
    model = model.float()  # a bf16-trained model's weights: the graph computes in fp32, as `charlm generate` does
    architecture = registry.name_of(meta)
    graph, state = trace(step_graph(model, architecture))
    description = {
        "format": FORMAT, "version": VERSION, "task": task, "architecture": architecture,
        "describe": model.describe() or architecture, "model": dict(meta["model"]),
        "tokens": meta.tokens, "preprocess": meta.preprocess, "vocab": vocabs["vocab"].to_dict(),
        "vocab_size": len(vocabs["vocab"]), "state": state,
        "graph_sha256": graph_digest(graph),
    }
    entry = graph.metadata_props.add()
    entry.key, entry.value = KEY, json.dumps(description, ensure_ascii=False)
    atomic_write(out, graph.SerializeToString())
    return description


def trace(graph: torch.nn.Module) -> tuple[Any, list[dict[str, Any]]]:
    """(the ONNX ModelProto of `graph`, a `charlm.export.steps` module, with a dynamic batch;
    what the metadata says of each of its state tensors)."""
    one, two = graph.initial_state(1), graph.initial_state(2)
    batch = torch.export.Dim("batch", min=1, max=65536)
    axes = {name: next((axis for axis, (a, b) in enumerate(zip(one[name].shape, two[name].shape)) if a != b), None)
            for name in one}
    dynamic = ({0: batch}, tuple(None if axes[name] is None else {axes[name]: batch} for name in two))
    inputs = ["ids", *(f"state.{name}" for name in two)]
    outputs = ["logits", *(f"next.{name}" for name in two)]
    with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, (torch.zeros(2, dtype=torch.long), *two.values()), dynamo=True,
                                    input_names=inputs, output_names=outputs, dynamic_shapes=dynamic, verbose=False,
                                    external_data=False)
    state = [{"name": name, "shape": list(one[name].shape), "batch_axis": axes[name],
              "dtype": str(one[name].dtype).removeprefix("torch."), "initial": _initial(one[name])} for name in one]
    return program.model_proto, state


def _initial(tensor: torch.Tensor) -> float:
    """The one value a state tensor starts at: the exporters' states start as zeros."""
    values = tensor.unique()
    if values.numel() > 1:
        raise ValueError("a state that does not start at one value cannot be described by its shape")
    return values.item() if values.numel() else 0


class _quiet_exporter:
    """torch's exporter logs each missing optional operator library; the user asked for none."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("torch.onnx")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


def graph_digest(model: Any) -> str:
    """SHA-256 of the graph (nodes and weights), not of the metadata that holds the digest."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def read_export(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of an ONNX file `export_onnx` wrote, after checking that it is one: a
    `CharlmError` of one line for a file that is damaged, not charlm's, or not what it says."""
    from charlm.text.tokens import Vocab

    onnx = _onnx()
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
        model = onnx.load_model_from_string(data)
    except OSError as error:
        raise CharlmError(f"{path}: cannot read it ({error.strerror or error})") from None
    except Exception:  # protobuf's DecodeError, and whatever else a damaged file raises in the parser
        raise CharlmError(f"{path}: not an ONNX file, or a damaged one; export it again (charlm export)") from None
    entries = {entry.key: entry.value for entry in model.metadata_props}
    if KEY not in entries:
        raise CharlmError(f"{path}: an ONNX file charlm did not write (no charlm metadata); charlm reads its own exports")
    try:
        description = json.loads(entries[KEY])
        if description.get("format") != FORMAT or description.get("version") != VERSION:
            raise ValueError(f"format {description.get('format')!r} version {description.get('version')!r}")
        vocab = Vocab.from_dict(description["vocab"])
        if len(vocab) != description["vocab_size"] or description["tokens"] not in ("char", "word"):
            raise ValueError("the vocab does not match its size")
        names = [entry["name"] for entry in description["state"]]
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise CharlmError(f"{path}: damaged charlm metadata in the ONNX file ({error})") from None
    if description.get("graph_sha256") != graph_digest(model):
        raise CharlmError(f"{path}: the graph is not the one its charlm metadata describes (damaged, or another "
                          "model's); export it again")
    inputs = [value.name for value in model.graph.input]
    outputs = [value.name for value in model.graph.output]
    if inputs != ["ids", *(f"state.{n}" for n in names)] or outputs != ["logits", *(f"next.{n}" for n in names)]:
        raise CharlmError(f"{path}: the graph's inputs and outputs are not those its charlm metadata names")
    try:
        onnx.checker.check_model(model)
    except Exception as error:  # onnx.checker.ValidationError
        raise CharlmError(f"{path}: not a valid ONNX graph ({' '.join(str(error).split())[:200]})") from None
    return description
