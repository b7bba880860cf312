"""ONNX: a checkpoint's one-step function as an ONNX file that carries what it needs to be used.

    export_onnx("model.safetensors", "model.onnx")      # the graph of `charlm.export.steps`, and its metadata
    read_export("model.onnx")                            # that metadata, once the file is checked
    export_onnx("pairs.safetensors", "pairs-onnx/")      # a seq2seq model: encoder.onnx and decoder.onnx

The graph takes `ids` (B,) int64 and the state tensors (`state.<name>`) and returns `logits` (B, V)
and the state after them (`next.<name>`); feed each `next.<name>` back as `state.<name>`. The
file's metadata (ONNX `metadata_props`, key "charlm", JSON) says the rest: the vocab and how
tokens join, the architecture and model config, each state tensor's shape (with its batch axis),
dtype and starting value, and the SHA-256 of the graph, so that a file whose
graph is not the one its metadata describes, a damaged one, or one charlm did not write is refused
in one line before any runtime sees it (`read_export`). A pair model's encoder takes `source` (B, S)
and returns the decoder's first state (`state.<name>`); its decoder is a step as above, and both files
record both graphs' digests, so that halves of two exports are refused together (`read_pair`).

onnx, onnxscript (torch's exporter needs it) and onnxruntime are the optional extra `export`;
this module is onnx's one home in charlm. It knows nothing about web pages or sampling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from charlm.errors import CharlmError, MissingExtra
from charlm.export.steps import PairDecoderStep, PairEncoderGraph, step_graph
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
    """Write `checkpoint`'s model as ONNX: a language model's step as one file at `out`; a pair
    model's encoder and decoder step as `encoder.onnx` and `decoder.onnx` in the folder `out`.
    Returns the (decoder's) metadata."""
    from charlm.checkpoints.loading import load_with_vocabs
    from charlm.models import registry

    _onnx()
    task = checkpoint_task(checkpoint)
    model, meta, vocabs = load_with_vocabs(checkpoint, task)
    model = model.float()  # a bf16-trained model's weights: the graph computes in fp32, as `charlm generate` does
    architecture = registry.name_of(meta)
    common = {"format": FORMAT, "version": VERSION, "task": task, "architecture": architecture,
              "describe": model.describe() or architecture, "model": dict(meta["model"]), "tokens": meta.tokens,
              "preprocess": meta.preprocess}
    if task == "lm":
        graph, state = trace_step(step_graph(model, architecture))
        return _write(out, graph, {**common, "graph": "step", "vocab": vocabs["vocab"].to_dict(), "state": state})
    if architecture != "seq2seq":
        raise CharlmError(f"{checkpoint}: charlm export writes language models and seq2seq pair models, not the "
                          f"{architecture}")
    (encoder, decoder), state = trace_pair(model)
    paired = {"encoder": graph_digest(encoder), "decoder": graph_digest(decoder)}
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "encoder.onnx", encoder, {**common, "graph": "encoder", "vocab": vocabs["source_vocab"].to_dict(),
                                              "state": state, "pair": paired})
    return _write(folder / "decoder.onnx", decoder, {**common, "graph": "decoder", "state": state, "pair": paired,
                                                     "vocab": vocabs["target_vocab"].to_dict()})


def checkpoint_task(checkpoint: str | os.PathLike) -> str:
    """The task of a model checkpoint ("lm" or "translate"), read from its header alone."""
    from charlm.checkpoints.files import read_metadata
    from charlm.checkpoints.metadata import read

    return read(read_metadata(checkpoint)).task


def _write(path: str | os.PathLike, graph: Any, description: dict[str, Any]) -> dict[str, Any]:
    description = {**description, "vocab_size": len(description["vocab"]["itos"]), "graph_sha256": graph_digest(graph)}
    entry = graph.metadata_props.add()
    entry.key, entry.value = KEY, json.dumps(description, ensure_ascii=False)
    atomic_write(path, graph.SerializeToString())
    return description


def trace_step(graph: torch.nn.Module) -> tuple[Any, list[dict[str, Any]]]:
    """(the ONNX ModelProto of a language model's step graph (`charlm.export.steps`), its batch
    free; what the metadata says of each of its state tensors)."""
    one, two = graph.initial_state(1), graph.initial_state(2)
    axes = {name: _axes(one[name], two[name], "batch") for name in one}
    proto = to_onnx(graph, {"ids": torch.zeros(2, dtype=torch.long), **{f"state.{n}": t for n, t in two.items()}},
                    ["logits", *(f"next.{name}" for name in two)],
                    {"ids": {0: "batch"}, **{f"state.{name}": axis for name, axis in axes.items()}})
    state = [{"name": name, "shape": list(one[name].shape), "batch_axis": next(iter(axes[name]), None),
              "dtype": str(one[name].dtype).removeprefix("torch."), "initial": _initial(one[name])} for name in one]
    return proto, state


def trace_pair(model: torch.nn.Module) -> tuple[tuple[Any, Any], list[dict[str, Any]]]:
    """((the encoder's ModelProto, the decoder step's), what the metadata says of each state
    tensor), batch and source length free."""
    encoder, decoder = PairEncoderGraph(model).eval(), PairDecoderStep(model).eval()
    source = lambda rows, length: torch.arange(length).repeat(rows, 1) % 3 + 4  # noqa: E731  ids of real characters
    with torch.no_grad():
        base, rows, longer = encoder(source(2, 3)), encoder(source(3, 3)), encoder(source(2, 4))
    names = decoder.names
    axes = {name: {**_axes(b, r, "batch"), **_axes(b, s, "source")} for name, b, r, s in zip(names, base, rows, longer)}
    encoder_proto = to_onnx(encoder, {"source": source(2, 3)}, [f"state.{name}" for name in names],
                            {"source": {0: "batch", 1: "source"}})
    decoder_proto = to_onnx(decoder, {"ids": torch.zeros(2, dtype=torch.long),
                                      **{f"state.{name}": tensor for name, tensor in zip(names, base)}},
                            ["logits", *(f"next.{name}" for name in names)],
                            {"ids": {0: "batch"}, **{f"state.{name}": axis for name, axis in axes.items()}})
    state = [{"name": name, "batch_axis": next((a for a, d in axes[name].items() if d == "batch"), None),
              "dtype": str(tensor.dtype).removeprefix("torch.")} for name, tensor in zip(names, base)]
    return (encoder_proto, decoder_proto), state


def _axes(a: torch.Tensor, b: torch.Tensor, dimension: str) -> dict[int, str]:
    """{axis: `dimension`} for the axis where `a` and `b`, made for two sizes of it, differ."""
    return {axis: dimension for axis, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y}


def to_onnx(graph: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: list[str],
            dynamic: dict[str, dict[int, str]]) -> Any:
    """The ONNX ModelProto of `graph` traced on `inputs`, with the named axes of `dynamic` free. A
    state output `next.<name>` is declared with its input's shape, free axes included."""
    dimensions = {name: torch.export.Dim(name, min=1, max=65536) for name in ("batch", "source")}
    shapes = [{axis: dimensions[name] for axis, name in dynamic.get(key, {}).items()} or None for key in inputs]
    shapes = (shapes[0], tuple(shapes[1:])) if len(shapes) > 1 else (shapes[0],)
    for rnn in (torch.ops.aten.lstm.input, torch.ops.aten.gru.input):
        # torch 2.13's exporter swaps in a loop kernel for a free sequence length but leaves the choice
        # cached on the op: without this, a second export in one process fixes the source length.
        getattr(rnn, "_dispatch_cache", {}).clear()
    with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        proto = torch.onnx.export(graph, tuple(inputs.values()), dynamo=True, input_names=list(inputs),
                                  output_names=outputs, dynamic_shapes=shapes, verbose=False,
                                  external_data=False).model_proto
    declared = {value.name: value.type for value in proto.graph.input}
    for value in proto.graph.output:
        if value.name.startswith("next.") and "state." + value.name[5:] in declared:
            value.type.CopyFrom(declared["state." + value.name[5:]])
    return proto


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
        if description["graph"] not in ("step", "encoder", "decoder"):
            raise ValueError(f"graph {description['graph']!r}")
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise CharlmError(f"{path}: damaged charlm metadata in the ONNX file ({error})") from None
    if description.get("graph_sha256") != graph_digest(model):
        raise CharlmError(f"{path}: the graph is not the one its charlm metadata describes (damaged, or another "
                          "model's); export it again")
    inputs = [value.name for value in model.graph.input]
    outputs = [value.name for value in model.graph.output]
    named = (["source"], [f"state.{n}" for n in names]) if description["graph"] == "encoder" else \
        (["ids", *(f"state.{n}" for n in names)], ["logits", *(f"next.{n}" for n in names)])
    if (inputs, outputs) != named:
        raise CharlmError(f"{path}: the graph's inputs and outputs are not those its charlm metadata names")
    try:
        onnx.checker.check_model(model)
    except Exception as error:  # onnx.checker.ValidationError
        raise CharlmError(f"{path}: not a valid ONNX graph ({' '.join(str(error).split())[:200]})") from None
    return description


def read_pair(folder: str | os.PathLike) -> dict[str, Any]:
    """The decoder's metadata of a pair model's export (`encoder.onnx`, `decoder.onnx` in `folder`),
    once both files are checked and found to be the two halves of one export."""
    encoder, decoder = (read_export(Path(folder) / f"{half}.onnx") for half in ("encoder", "decoder"))
    halves = {"encoder": encoder["graph_sha256"], "decoder": decoder["graph_sha256"]}
    if (encoder["graph"], decoder["graph"]) != ("encoder", "decoder") or not encoder.get("pair") == \
            decoder.get("pair") == halves:
        raise CharlmError(f"{folder}: encoder.onnx and decoder.onnx are not the two halves of one charlm export")
    return decoder
