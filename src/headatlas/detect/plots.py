"""A layer x head heatmap of head scores (matplotlib, Agg backend: no display needed).

>>> import torch
>>> from headatlas.heads import HeadScores
>>> path = plot_heatmap(HeadScores(torch.rand(4, 8)), "/tmp/rh-heatmap-doctest.png")
>>> path.name
'rh-heatmap-doctest.png'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..heads import Head, HeadScores


def plot_heatmap(scores: HeadScores, path: str | Path, title: str = "retrieval score", top: int = 10) -> Path:
    """Save ``scores`` as a heatmap PNG (rows: layers, columns: heads); the ``top`` best scored heads are outlined
    (only heads above the scorer's null level: :func:`outlined_heads`)."""
    import matplotlib
    import numpy as np
    from matplotlib.patches import Rectangle

    data = np.ma.masked_invalid(scores.scores.numpy())  # NaN: a layer without softmax heads, shown grey
    n_layers, n_heads = data.shape
    fig = new_figure(min(3 + 0.25 * n_heads, 16), min(2 + 0.25 * n_layers, 14))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    image = ax.imshow(data, aspect="auto", origin="lower", cmap=cmap, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="score")
    for head in outlined_heads(scores, top):
        ax.add_patch(Rectangle((head.head - 0.5, head.layer - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path, dpi=120)


def outlined_heads(scores: HeadScores, top: int = 10) -> list[Head]:
    """The heads a heatmap outlines: the ``top`` best *scored* heads (fewer when fewer score above the null level).

    >>> import torch
    >>> outlined_heads(HeadScores(torch.tensor([[0.0, 0.3], [0.0, 0.0]])), top=3)
    [Head(layer=0, head=1)]
    """
    return scores.top_k(top)


def new_figure(width: float, height: float) -> Any:
    """A bare matplotlib ``Figure`` on the Agg canvas: no pyplot state, no display, safe in threads and notebooks."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path, dpi: int) -> Path:
    """Lay ``fig`` out and write it to ``path`` atomically (a crash never leaves a half-written image)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
    return path
