"""Learning-curve plots shared by the example scripts.

Usage:

    from examples.common.plotting import plot_curves
    plot_curves({"lstm": [0.5, 0.7], "layer_norm_lstm": [0.6, 0.8]},
                "runs/demo/validation_accuracy.png",
                title="Sequential digits", ylabel="validation accuracy")
"""

from __future__ import annotations

import os
from pathlib import Path


def plot_curves(curves, path, *, title, ylabel, xlabel="epoch"):
    """Draws one line per named curve and saves the figure as a PNG.

    Args:
        curves: dict mapping a label to a sequence of floats, one value per
            epoch (or per whatever `xlabel` names); the x axis counts from 1.
        path: where to write the PNG; missing parent directories are created.
        title: figure title.
        ylabel: y axis label.
        xlabel: x axis label, "epoch" by default.

    Returns:
        `path`, as given.
    """
    if not curves:
        raise ValueError(
            "Received an invalid value for argument `curves`, expected at least "
            f"one named curve, got {curves!r}."
        )
    # Agg renders to files only: no display is needed (servers, CI). Select
    # it on the figure itself so we never change pyplot's global backend for
    # a caller that has its own.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for label, values in curves.items():
        values = [float(v) for v in values]
        axes.plot(range(1, len(values) + 1), values, label=str(label),
                  marker="o" if len(values) < 20 else None, markersize=3)
    # Whole-number ticks: a curve has one point per epoch.
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()

    parent = os.path.dirname(os.fspath(path))
    if parent:
        Path(parent).mkdir(parents=True, exist_ok=True)
    figure.savefig(os.fspath(path), format="png")
    return path
