"""Plots, and the only home of matplotlib: an optional extra (`pip install 'charlm[plot]'`),
imported only when a plot is drawn, off-screen, into a file.

- `plot_runs`: the training curves of one or several runs, from their metrics files. Left, the
  training and validation loss (nats per token) against tokens seen; right, the validation
  perplexity. One colour per run, named in the legend.
- `plot_attention`: a translation's attention weights as a heat map.

It reads the `X.metrics.jsonl` files the trainer writes and the numbers it is given; it knows
nothing about models or training.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from charlm.errors import CharlmError, MissingExtra
from charlm.training.run_files import MetricsFile, metrics_of

INSTALL_HINT = "pip install 'charlm[plot]'"


def metrics_path(path: str | os.PathLike) -> Path:
    """The metrics file of a run: the path itself if it is one, else the one beside a checkpoint
    (`X.safetensors` or `X.resume.safetensors` -> `X.metrics.jsonl`, as `charlm.training.run_files` names
    them; it imports no torch, nor does plotting)."""
    path = Path(path)
    if path.name.endswith(".jsonl"):
        return path
    return Path(metrics_of(path))


def read_metrics(path: str | os.PathLike, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """The evaluations of a run, in order (`charlm.training.run_files.MetricsFile.read`: a last line cut short
    is skipped with a note in `notes`). A missing file, or one without evaluations, is a
    `CharlmError`: there is nothing to plot."""
    source = metrics_path(path)
    if not source.is_file():
        raise CharlmError(f"{path}: no metrics file {source}; give a run's X.metrics.jsonl or its checkpoint")
    records = MetricsFile(source).read(notes)
    if not records:
        raise CharlmError(f"{source}: no evaluations yet; plot it once the run has evaluated")
    return records


def run_name(path: str | os.PathLike) -> str:
    """`runs/x.metrics.jsonl` and `runs/x.safetensors` -> "x"."""
    return metrics_path(path).name[: -len(".metrics.jsonl")] or metrics_path(path).stem


def plot_runs(paths: list[str | os.PathLike], out: str | os.PathLike, title: str | None = None) -> list[str]:
    """Draw the runs' curves and write the picture to `out` (its format from the suffix: .png, .svg,
    .pdf). Returns notes on what was left out of the metrics files."""
    if not Path(out).suffix:  # matplotlib would write out + ".png": a file that was not asked for
        raise CharlmError(f"{out}: no picture format in the name; use a .png, .svg or .pdf name")
    notes: list[str] = []
    runs = [(run_name(path), read_metrics(path, notes)) for path in paths]
    names = [name for name, _ in runs]
    if len(set(names)) < len(names):  # same stem in different folders: name them by path
        runs = [(str(metrics_path(path)), records) for path, (_, records) in zip(paths, runs)]
    pyplot = _pyplot()
    figure, (loss_axes, ppl_axes) = pyplot.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    colours = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, records) in enumerate(runs):
        colour = colours[index % len(colours)]
        train = [(r["tokens"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
        val = [(r["tokens"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
        ppl = [(r["tokens"], r["val_ppl"]) for r in records if r.get("val_ppl") is not None]
        if train:
            loss_axes.plot(*zip(*train), color=colour, linestyle="--", marker=".", label=f"{name} train")
        if val:
            loss_axes.plot(*zip(*val), color=colour, marker=".", label=f"{name} validation")
        if ppl:
            ppl_axes.plot(*zip(*ppl), color=colour, marker=".", label=name)
    from matplotlib import ticker

    loss_axes.set(xlabel="tokens seen", ylabel="loss (nats per token)", title="loss (dashed: training)")
    ppl_axes.set(xlabel="tokens seen", ylabel="perplexity", title="validation perplexity", yscale="log")
    plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")  # 6, not 6 x 10^0, on the log scale
    ppl_axes.yaxis.set_major_formatter(plain)
    ppl_axes.yaxis.set_minor_formatter(plain)
    for axes in (loss_axes, ppl_axes):
        axes.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))  # 200k, 1.2M
        axes.grid(True, alpha=0.3)
        if axes.lines:
            axes.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    try:
        _save(figure, out, dpi=100)
    finally:
        pyplot.close(figure)
    return notes


def _save(figure: Any, out: str | os.PathLike, **options: Any) -> None:
    """Write `figure` to `out` whole or not at all (`charlm.runtime.files.atomic_path`): a full disk
    or a kill never leaves a picture cut short, nor spoils the one that was there. The temporary
    keeps the name, so the format is still read from its suffix."""
    from charlm.runtime.files import atomic_path

    try:
        with atomic_path(out) as temporary:  # the format named, so that no suffix is added to the name
            figure.savefig(temporary, format=Path(out).suffix[1:].lower() or "png", **options)
    except ValueError as error:  # a suffix matplotlib cannot write (x.safetensors)
        raise CharlmError(f"{out}: {error}; use a .png, .svg or .pdf name") from None


def _pyplot() -> Any:
    matplotlib = _import("matplotlib", "plotting")
    matplotlib.use("Agg")  # files only, never a window
    return _import("matplotlib.pyplot", "plotting")


def _import(module: str, purpose: str) -> Any:
    """A part of matplotlib, or a `MissingExtra` naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{purpose} needs matplotlib, an optional extra: {INSTALL_HINT}") from None


def shown(character: str) -> str:
    """A character as a readable tick label: a space is drawn as "␣"."""
    return {" ": "␣", "\t": "⇥"}.get(character, character)


def plot_attention(weights: Any, source: Sequence[str], output: Sequence[str], path: str | os.PathLike) -> None:
    """Draw attention weights (len(output), len(source)), a tensor, as a heat map: one column per
    source character, one row per output character, darker where the output looked less."""
    Figure = _import("matplotlib.figure", "--attention-plot").Figure
    rows, columns = weights.shape
    figure = Figure(figsize=(1.5 + 0.4 * columns, 1.2 + 0.4 * rows))
    axes = figure.subplots()
    image = axes.imshow(weights.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="equal")
    axes.set_xticks(range(columns), labels=[shown(character) for character in source])
    axes.set_yticks(range(rows), labels=[shown(character) for character in output])
    axes.set_xlabel("source")
    axes.set_ylabel("output")
    axes.xaxis.set_label_position("top")
    axes.xaxis.tick_top()
    figure.colorbar(image, ax=axes, fraction=0.05, label="attention weight")
    _save(figure, path, bbox_inches="tight", dpi=120)
