"""Plot: the training curves of one or several runs, drawn from their metrics files into a picture.

    plot_runs(["runs/lstm.safetensors", "runs/gru.metrics.jsonl"], "curve.png")

Left, the training and validation loss (nats per token) against tokens seen; right, the validation
perplexity. One colour per run, named in the legend. matplotlib is an optional extra
(`pip install 'charlm[plot]'`), imported here alone and only when a plot is drawn.

It reads the `X.metrics.jsonl` files the trainer writes and knows nothing about models or training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from charlm.errors import CharlmError

INSTALL_HINT = "pip install 'charlm[plot]'"


def metrics_path(path: str | os.PathLike) -> Path:
    """The metrics file of a run: the path itself if it is one, else the one beside a checkpoint
    (`X.safetensors` or `X.resume.safetensors` -> `X.metrics.jsonl`, the names that
    `charlm.trainer.run_paths` gives; not imported from there, so plotting needs no torch)."""
    path = Path(path)
    if path.name.endswith(".jsonl"):
        return path
    name = path.name
    for suffix in (".resume.safetensors", ".safetensors"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(f"{name}.metrics.jsonl")


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The evaluations of a run, in order. A missing or unreadable file is a `CharlmError`."""
    source = metrics_path(path)
    if not source.is_file():
        raise CharlmError(f"{path}: no metrics file {source}; give a run's X.metrics.jsonl or its checkpoint")
    records = []
    with open(source, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                float(record["tokens"])
            except (ValueError, KeyError, TypeError):
                raise CharlmError(f"{source}: line {number} is not a charlm metrics record") from None
            records.append(record)
    if not records:
        raise CharlmError(f"{source}: no evaluations yet; plot it once the run has evaluated")
    return records


def run_name(path: str | os.PathLike) -> str:
    """`runs/x.metrics.jsonl` and `runs/x.safetensors` -> "x"."""
    return metrics_path(path).name[: -len(".metrics.jsonl")] or metrics_path(path).stem


def plot_runs(paths: list[str | os.PathLike], out: str | os.PathLike, title: str | None = None) -> None:
    """Draw the runs' curves and write the picture to `out` (its format from the suffix: .png, .svg, .pdf)."""
    runs = [(run_name(path), read_metrics(path)) for path in paths]
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
        figure.savefig(out, dpi=100)
    except ValueError as error:  # a suffix matplotlib cannot write
        raise CharlmError(f"{out}: {error}; use a .png, .svg or .pdf name") from None
    finally:
        pyplot.close(figure)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise CharlmError(f"plotting needs matplotlib, an optional extra: {INSTALL_HINT}") from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as pyplot

    return pyplot
