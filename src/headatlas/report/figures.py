"""Static figures for the report: matplotlib (Agg) PNGs returned as ``data:`` URIs.

They are what a reader sees with JavaScript disabled (and what prints); the
interactive page draws the same data with ``assets/report.js``. Every figure
is a bare :class:`~matplotlib.figure.Figure` on an Agg canvas — no pyplot
state, no display.

>>> uri = heatmap_png([[0.0, 0.5], [0.2, 0.9]], ["0", "1"], ["0", "1"], "layer", "head", "score")
>>> uri.startswith("data:image/png;base64,")
True
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

DPI = 80
MAX_TICKS = 24


def _to_uri(fig) -> str:  # noqa: ANN001 - matplotlib.figure.Figure (lazy import)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _new_figure(width: float, height: float, right: float = 0.25):  # noqa: ANN202 - (Figure, Axes)
    """A figure with one axes placed by fixed margins in inches (much faster than constrained layout)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    left, bottom, top = 0.65, 0.6, 0.32
    ax = fig.add_axes((left / width, bottom / height, 1 - (left + right) / width, 1 - (bottom + top) / height))
    return fig, ax


def _finish(fig, ax, x_name: str, y_name: str, title: str, legend_size: int | None = None) -> str:  # noqa: ANN001
    """Axis labels, an optional legend and title; the figure as a PNG data URI."""
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    if legend_size:
        ax.legend(fontsize=legend_size)
    if title:
        ax.set_title(title, fontsize=9)
    return _to_uri(fig)


def _ticks(set_ticks, labels: Sequence[str], rotate_over: int = 0) -> None:  # noqa: ANN001 - ax.set_[xy]ticks
    """At most ``MAX_TICKS`` evenly spaced labels, upright when one is longer than ``rotate_over`` (if given)."""
    idx = list(range(0, len(labels), max(1, math.ceil(len(labels) / MAX_TICKS))))
    shown = [str(labels[i]) for i in idx]
    set_ticks(idx, shown, fontsize=7, rotation=90 if rotate_over and max(map(len, shown), default=0) > rotate_over else 0)


def heatmap_png(
    values: Sequence[Sequence[float | None]], row_labels: Sequence[str], col_labels: Sequence[str], row_name: str,
    col_name: str, value_name: str, title: str = "", diverging: bool = False, vmin: float | None = None,
    vmax: float | None = None, outline: Sequence[tuple[int, int]] = (),
) -> str:
    """A heatmap (row 0 at the top) as a PNG data URI; ``None`` cells are grey; ``outline`` cells get a red box.

    ``diverging`` centres a red-blue map on 0 (for differences).
    """
    import numpy as np
    from matplotlib.patches import Rectangle

    data = np.array([[np.nan if v is None else float(v) for v in row] for row in values], dtype=float)
    n_rows, n_cols = data.shape
    width, height = min(3.2 + 0.28 * n_cols, 12), min(1.8 + 0.26 * n_rows, 10)
    fig, ax = _new_figure(width, height, right=1.2)
    finite = data[np.isfinite(data)]
    if diverging:
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        vmin, vmax, cmap = -(bound or 1.0), bound or 1.0, "RdBu_r"
    else:
        cmap = "viridis"
        vmin = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
        vmax = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
        if vmax <= vmin:
            vmax = vmin + 1.0
    import matplotlib

    cmap = matplotlib.colormaps[cmap].with_extremes(bad="0.85")  # None/NaN cells (no softmax heads) in grey
    image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                      interpolation="nearest")
    pos = ax.get_position()
    cax = fig.add_axes((pos.x1 + 0.12 / width, pos.y0, 0.14 / width, pos.height))
    fig.colorbar(image, cax=cax, label=value_name)
    for r, c in outline:
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.2))
    _ticks(ax.set_xticks, col_labels, rotate_over=4)
    _ticks(ax.set_yticks, row_labels)
    return _finish(fig, ax, col_name, row_name, title)


def bars_png(
    categories: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], x_name: str, y_name: str,
    title: str = "",
) -> str:
    """Grouped bars (one group per category, one bar per series) as a PNG data URI."""
    fig, ax = _new_figure(min(3.5 + 0.3 * len(categories) * max(1, len(series)), 11), 2.8)
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(categories))]
        ax.bar(xs, [0.0 if v is None else float(v) for v in values], width=width, label=name)
    _ticks(ax.set_xticks, categories, rotate_over=6)
    ax.axhline(0, color="black", linewidth=0.6)
    return _finish(fig, ax, x_name, y_name, title, 7 if len(series) > 1 else None)


def line_png(xs: Sequence[float], ys: Sequence[float], x_name: str, y_name: str, title: str = "") -> str:
    """A single line (e.g. the DPO training loss) as a PNG data URI."""
    return curves_png(xs, [("", ys)], y_name, title, x_name=x_name)


def curves_png(
    steps: Sequence[float], series: Sequence[tuple[str, Sequence[float | None]]], y_name: str, title: str = "",
    markers: Sequence[tuple[str, float, float]] = (), x_name: str = "step",
) -> str:
    """Lines over ``steps`` (e.g. DPO reward accuracy, margin; ``None`` values are left out) plus labelled
    point ``markers`` ``(label, step, value)`` (e.g. held-out values before and after training), as a PNG data URI."""
    fig, ax = _new_figure(5.5, 2.6)
    for name, values in series:
        points = [(x, v) for x, v in zip(steps, values, strict=True) if v is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 40 else None,
                    label=name)
    for i, (label, x, value) in enumerate(markers):
        ax.scatter([x], [value], marker="os^v"[i % 4], color="black", zorder=3, label=label)
    return _finish(fig, ax, x_name, y_name, title, 6 if len(series) + len(markers) > 1 else None)


def errorbar_curves_png(
    series: Sequence[tuple[str, Sequence[float], Sequence[float], Sequence[tuple[float, float]] | None]],
    x_name: str, y_name: str, title: str = "",
) -> str:
    """Lines with markers (``name, xs, ys, optional (low, high) per point``) and error bars, as a PNG data URI."""
    fig, ax = _new_figure(5.5, 3.0)
    for name, xs, ys, bounds in series:
        err = None if not bounds else [[y - lo for y, (lo, _) in zip(ys, bounds, strict=True)],
                                       [hi - y for y, (_, hi) in zip(ys, bounds, strict=True)]]
        ax.errorbar(list(xs), list(ys), yerr=err, marker="o", capsize=3, label=name,
                    linestyle="-" if len(xs) > 1 else "none")
    return _finish(fig, ax, x_name, y_name, title, 7)
