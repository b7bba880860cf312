"""Plots, and the only home of matplotlib: an optional extra (`pip install 'charlm[plot]'`),
imported only when a plot is asked for. Figures are drawn off-screen and written to a file.

It knows nothing about models: it draws the numbers it is given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from charlm.errors import MissingExtra


def shown(character: str) -> str:
    """A character as a readable tick label: a space is drawn as "␣"."""
    return {" ": "␣", "\t": "⇥"}.get(character, character)


def plot_attention(
    weights: torch.Tensor, source: Sequence[str], output: Sequence[str], path: str | os.PathLike
) -> None:
    """Draw attention weights (len(output), len(source)) as a heat map: one column per source
    character, one row per output character, darker where the output looked less."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtra("--attention-plot needs matplotlib: pip install 'charlm[plot]'") from None
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
    figure.savefig(os.fspath(path), bbox_inches="tight", dpi=120)
