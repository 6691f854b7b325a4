"""Figures every report draws the same way: matplotlib's object-oriented API on the Agg canvas (no
pyplot state, no display), saved atomically."""
from __future__ import annotations

from pathlib import Path

from services.run_store import atomic_write


def new_figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: Path) -> None:
    atomic_write(path, lambda p: fig.savefig(p, format="png", bbox_inches="tight", pad_inches=0.12))
