"""Render a :class:`~headatlas.report.collect.Report` as one self-contained HTML page.

The page carries everything inline: its skeleton, CSS and JS from ``assets/``, the data
as JSON in ``<script type="application/json" id="report-data">``, and a
matplotlib PNG (``data:`` URI) for every interactive figure. The PNG shows
until the script has drawn the interactive figure, so the page still reads
with JavaScript disabled; tables are plain HTML (the script only adds
sorting). Sections appear only for the artifacts that were found.

>>> from headatlas.report.collect import Report
>>> html = render_report(Report(run_dirs=[]))
>>> html.startswith("<!DOCTYPE html>") and 'id="report-data"' in html
True
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

from .. import __version__
from ..builtins import builtin_name
from ..config import SCORE_THRESHOLD
from ..runs import canonical_format
from ..selection import concentration, layer_histogram, share_of_heads
from . import figures
from .collect import CompareRow, Grid, ModelComparison, NiahResult, Report, ScoreMap

THRESHOLD = SCORE_THRESHOLD  # the paper's retrieval-head threshold
SECTIONS = {  # id -> title, in page order
    "head-scores": "Head scores",
    "rh-vs-rth": "Retrieval vs retrieval-transition heads",
    "sharing": "Cross-language sharing",
    "detection": "Detection outcomes",
    "niah": "NIAH accuracy",
    "compare": "Comparisons",
    "retmask": "RetMask",
    "uses": "Using retrieval heads: KV compression and DeCoRe",
    "atlas": "Head atlas: the scorers compared",
    "metadata": "Run metadata",
}
DURATION_KEYS = ("wall_s", "compute_s", "duration_s", "seconds", "elapsed_s")


# ---- small helpers -------------------------------------------------------------------------------
def esc(value: Any) -> str:
    """HTML-escape ``str(value)``."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A number for a table: 4 decimals for floats, as-is for ints, a dash for missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _num_td(value: Any, digits: int = 4, signed: bool = False) -> str:
    """A numeric cell; ``signed``: a ``+`` on gains, coloured ``pos``/``neg``."""
    sign = (value > 0) - (value < 0) if signed and isinstance(value, (int, float)) else 0
    data = "" if value is None else f' data-value="{esc(value)}"'
    cls = {1: "num pos", -1: "num neg"}.get(sign, "num")
    return f'<td class="{cls}"{data}>{esc("+" * (sign > 0) + fmt(value, digits))}</td>'


def _table(headers: Sequence[tuple[str, bool]], rows: Iterable[str], table_id: str = "", sortable: bool = True) -> str:
    """``headers``: (title, numeric); ``rows``: ready ``<tr>`` strings."""
    num_attr = ' data-type="num"'
    ths = "".join(f"<th{num_attr if num else ''}>{esc(title)}</th>" for title, num in headers)
    ident = f' id="{esc(table_id)}"' if table_id else ""
    cls = ' class="sortable"' if sortable else ""
    return f"<table{ident}{cls}><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _kv_table(items: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in items)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _label(value: Any, key: str) -> str:
    """Axis label of a grid row/column: depths as percentages, integral lengths without decimals."""
    if isinstance(value, float) and key == "depth" and 0.0 <= value <= 1.0:
        return f"{value * 100:g}%"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _asset(name: str) -> str:
    return (resources.files("headatlas.report") / "assets" / name).read_text(encoding="utf-8")


LANGUAGE_NAMES = {"en": "English", "de": "German", "zh": "Chinese", "sw": "Swahili", "fr": "French",
                  "es": "Spanish", "ja": "Japanese", "ru": "Russian", "ar": "Arabic", "hi": "Hindi"}


def language_name(code: str) -> str:
    """``de`` -> ``German (de)``; an unknown code stays as it is."""
    return f"{LANGUAGE_NAMES[code]} ({code})" if code in LANGUAGE_NAMES else code



# ---- the page ----------------------------------------------------------------------------------------
class _Page:
    """Collects the interactive figures' data while the sections are rendered."""

    def __init__(self, heads_listed: int):
        self.heads_listed = heads_listed
        self.heatmaps: dict[str, dict[str, Any]] = {}
        self.bars: dict[str, dict[str, Any]] = {}

    def heatmap(
        self, values: Sequence[Sequence[float | None]], rows: Sequence[Any], cols: Sequence[Any], row_key: str,
        col_key: str, value_name: str, title: str, diverging: bool = False, vmin: float | None = None,
        vmax: float | None = None, outline: Sequence[tuple[int, int]] = (), caption: str = "",
    ) -> str:
        """A figure: the static PNG plus a placeholder the script fills with a grid of ``.cell`` elements."""
        finite = [v for row in values for v in row if v is not None]
        lo = vmin if vmin is not None else (min(finite) if finite else 0.0)
        hi = vmax if vmax is not None else (max(finite) if finite else 1.0)
        if hi <= lo:
            hi = lo + 1.0
        row_labels, col_labels = [_label(r, row_key) for r in rows], [_label(c, col_key) for c in cols]
        fig_id = f"hm-{len(self.heatmaps)}"
        self.heatmaps[fig_id] = {
            "title": title, "rows": row_labels, "cols": col_labels, "rowValues": list(rows), "colValues": list(cols),
            "rowKey": row_key, "colKey": col_key, "rowName": row_key, "colName": col_key, "valueName": value_name,
            "values": [list(r) for r in values], "diverging": diverging, "vmin": lo, "vmax": hi,
            "outline": [list(rc) for rc in outline],
        }
        png = figures.heatmap_png(values, row_labels, col_labels, row_key, col_key, value_name, title,
                                  diverging=diverging, vmin=lo, vmax=hi, outline=outline)
        return self._figure("data-heatmap", fig_id, png, title, caption)

    def bar_chart(self, categories: Sequence[Any], series: Sequence[tuple[str, Sequence[float | None]]],
                  x_name: str, y_name: str, title: str, caption: str = "") -> str:
        """A figure: grouped bars (static PNG plus an SVG drawn by the script)."""
        cats = [str(c) for c in categories]
        fig_id = f"bars-{len(self.bars)}"
        self.bars[fig_id] = {"title": title, "categories": cats, "xName": x_name, "yName": y_name,
                             "series": [{"name": n, "values": list(v)} for n, v in series]}
        return self._figure("data-bars", fig_id, figures.bars_png(cats, series, x_name, y_name, title), title, caption)

    @staticmethod
    def _figure(attr: str, fig_id: str, png: str, title: str, caption: str) -> str:
        cap = f'<div class="caption">{esc(caption)}</div>' if caption else ""
        return (f'<div class="figure"><div class="static-fig"><img alt="{esc(title)}" src="{png}"></div>'
                f'<div class="js-fig" {attr}="{fig_id}"></div>{cap}</div>')


def render_report(report: Report, heads_listed: int = 20, title: str | None = None) -> str:
    """The report page as one HTML string (CSS, JS, data and static figures inline; no external URLs)."""
    page = _Page(heads_listed)
    sections = {
        "head-scores": _head_scores_section(page, report.score_maps, _languages(report)),
        "rh-vs-rth": _rh_vs_rth_section(page, report.rh_vs_rth),
        "sharing": _sharing_section(report.sharing),
        "detection": _detection_section(page, report.detect_outcomes),
        "niah": _niah_section(page, report.niah),
        "compare": _compare_section(report.compare),
        "retmask": _retmask_section(page, report.retmask, report.pair_stats, report.training)
        + _dpo_curves_section(report.dpo_curves),
        "uses": _uses_section(report.uses),
        "atlas": _atlas_section(report.atlas),
        "metadata": _metadata_section(report.metadata),
    }
    present = {k: v for k, v in sections.items() if v}
    models = sorted({str(builtin_name(m.scores.meta["model"])) for m in report.score_maps if m.scores.meta.get("model")})
    title = title or "headatlas report" + (f": {', '.join(models)}" if models else "")
    toc = "".join(f'<a href="#{k}">{esc(SECTIONS[k])}</a>' for k in present)
    body = "".join(f'<section id="{k}"><h2>{esc(SECTIONS[k])}</h2>{v}</section>' for k, v in present.items())
    if not present:
        body = (f'<p class="note">No recognised artifacts were found in {esc(", ".join(map(str, report.run_dirs)))}. '
                "See docs/report.md for the files a report reads.</p>")
    warnings = ""
    if report.warnings:
        items = "".join(f"<li>{esc(w)}</li>" for w in report.warnings)
        warnings = f'<div class="warnings" id="warnings"><h2>Warnings</h2><ul>{items}</ul></div>'
    data = _json_safe({"title": title, "version": __version__, "heatmaps": page.heatmaps, "bars": page.bars,
                       "scoreMaps": [_score_map_data(m) for m in report.score_maps],
                       "runDirs": [str(d) for d in report.run_dirs]})
    data_json = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).replace("<", "\\u003c")
    css = _asset("report.css").replace("</style", "<\\/style")
    js = _asset("report.js").replace("</script", "<\\/script")
    return _asset("report.html").format(  # the page skeleton
        version=esc(__version__), title=esc(title), css=css, js=js, data=data_json, body=body, warnings=warnings,
        runs=esc(", ".join(str(d) for d in report.run_dirs)), generated=esc(time.strftime("%Y-%m-%d %H:%M:%S %z")),
        toc=toc + ('<a href="#warnings">Warnings</a>' if warnings else ""))


def _score_map_data(m: ScoreMap) -> dict[str, Any]:
    return {"label": m.label, "kind": m.kind, "lang": m.lang, "source": m.source, "n_layers": m.scores.n_layers,
            "n_heads": m.scores.n_heads, "model": builtin_name(m.scores.meta.get("model")),
            "method": m.scores.meta.get("method")}


# ---- sections ------------------------------------------------------------------------------------------
CONCENTRATION_LABELS = {
    "n_heads_total": "heads in the model",
    f"n_above_{THRESHOLD:g}": f"heads with score > {THRESHOLD:g}",
    f"frac_above_{THRESHOLD:g}": f"share of heads > {THRESHOLD:g}",
    "top_10_share": "top-10 share of the total score",
    "gini": "Gini coefficient",
    "entropy": "entropy (nats)",
    "entropy_normalised": "entropy (normalised, 0..1)",
}


def _languages(report: Report) -> list[str]:
    """The run's languages in its own order (the sharing analysis keeps it; the source, en, first)."""
    order = list(dict.fromkeys(str(x) for _, d in report.sharing for x in d.get("languages", [])))
    return sorted(order, key=lambda lang: lang != "en")  # stable: en first, the rest as the run gave them


def _map_order(m: ScoreMap, languages: Sequence[str]) -> tuple[int, int, str]:
    """Model-wide retrieval scores first, then transition scores, then per-language maps in the run's order."""
    group = 0 if m.kind == "retrieval" and not m.lang else 1 if m.kind == "transition" else 2
    lang = m.lang or ""
    rank = languages.index(lang) if lang in languages else len(languages) + (lang != "en")
    return group, rank, lang + m.source


def panel_title(m: ScoreMap) -> str:
    """A head-score panel's title: what the scores are and, per language, the language by name."""
    if m.kind == "transition":
        src = m.scores.meta.get("source_lang") or m.scores.meta.get("needle_lang")
        pair = f"{language_name(src)} → {language_name(m.lang)}" if src and m.lang else ""
        return "Retrieval-transition heads" + (f": {pair}" if pair else "")
    return f"{language_name(m.lang)}: retrieval heads" if m.lang else "Retrieval heads"


def _head_scores_section(page: _Page, maps: list[ScoreMap], languages: Sequence[str] = ()) -> str:
    if not maps:
        return ""
    outlined = sorted({share_of_heads(m.scores.n_layers * m.scores.n_heads) for m in maps})
    k_text = " or ".join(map(str, outlined))
    parts = ['<p class="note">Each cell is one head: rows are layers, columns are query heads (zero-based). '
             f"The {k_text} best heads (5 % of the heads, the toolkit's default K) are outlined in red, and the "
             "tables and layer charts list the best heads: only heads that score above the scorer's null level "
             "(0 for copy and transition events: a head with no event is no retrieval head), so fewer when fewer "
             "score. Hover a cell for its score; click a table header to sort.</p>"]
    for i, m in enumerate(sorted(maps, key=lambda m: _map_order(m, languages))):
        s, title = m.scores, panel_title(m)
        n_softmax = int(s.scores.isfinite().sum())  # a layer without softmax heads is a NaN row: grey, never counted
        scored = s.scored()
        ranked = scored[: page.heads_listed]
        k, n_outlined = len(ranked), min(share_of_heads(n_softmax), len(scored))
        values = [[None if x != x else x for x in row] for row in s.scores.tolist()]
        no_heads = [i for i, row in enumerate(values) if all(x is None for x in row)]
        heatmap = page.heatmap(values, list(range(s.n_layers)), list(range(s.n_heads)), "layer", "head",
                               "score", title, outline=[(h.layer, h.head) for h, _ in scored[:n_outlined]],
                               caption=f"{s.n_layers} layers x {s.n_heads} heads, {len(scored)} scored "
                                       f"(above {s.null_level:g}); the {n_outlined} best outlined"
                               + (f"; layers {no_heads} (grey) have no softmax heads" if no_heads else ""))
        rows = [f'<tr>{_num_td(r)}<td data-value="{h}">{h}</td>{_num_td(h.layer)}{_num_td(h.head)}{_num_td(v)}</tr>'
                for r, (h, v) in enumerate(ranked, start=1)]
        table = _table([("rank", True), ("L.H", False), ("layer", True), ("head", True), ("score", True)], rows,
                       table_id=f"topk-{i}")
        conc = concentration(s, threshold=THRESHOLD, top=10)
        conc_table = _kv_table((CONCENTRATION_LABELS.get(key, key), value) for key, value in conc.items())
        bars = page.bar_chart(list(range(s.n_layers)),
                              [(f"top-{k}", layer_histogram([h for h, _ in ranked], s.n_layers)),
                               (f"score > {THRESHOLD:g}", layer_histogram(s.above(THRESHOLD), s.n_layers))],
                              "layer", "heads", f"{title}: heads per layer")
        model = builtin_name(s.meta.get("model", ""))
        summary = f"{esc(title)}" + (f" — {esc(model)}" if model else "")
        is_open = i == 0 or m.kind == "transition" or not m.lang
        parts.append(f'<details class="card" id="scores-{i}"{" open" if is_open else ""}>'
                     f'<summary>{summary}</summary><div class="source">{esc(m.source)}</div>'
                     f'<div class="row"><div>{heatmap}</div><div><h4>Top-{k} heads</h4>{table}</div></div>'
                     f'<div class="row"><div><h4>Concentration</h4>{conc_table}</div>'
                     f"<div><h4>Layer distribution</h4>{bars}</div></div></details>")
    return "".join(parts)


def _rh_vs_rth_section(page: _Page, items: list[tuple[str, dict[str, Any]]]) -> str:
    parts = []
    for source, d in items:
        ov = d.get("overlap", {})
        k = d.get("top_k")
        rh, rth = d.get("rh_top_k", []), d.get("rth_top_k", [])
        shared = [h for h in rh if h in set(rth)]
        stats = [(f"top-K (K = {k})", k), ("shared heads", ov.get("intersection")), ("Jaccard", ov.get("jaccard")),
                 ("overlap coefficient", ov.get("overlap_coefficient")), ("RH mean layer", d.get("rh_mean_layer")),
                 ("RTH mean layer", d.get("rth_mean_layer"))]
        stats += [(key.replace("_", " "), v) for key, v in d.items() if key.startswith(("rh_above", "rth_above"))]
        stats += [(f"{name} heads scored (the top-K holds no other)", d[key])
                  for name, key in (("RH", "rh_n_scored"), ("RTH", "rth_n_scored")) if key in d]
        parts.append(f'<h3>Top-{esc(k)} overlap</h3><div class="source">{esc(source)}</div>'
                     f'<div class="row"><div>{_kv_table(stats)}'
                     f'<p class="note">shared: {esc(", ".join(shared) or "none")}</p></div>')
        hist_rh, hist_rth = d.get("rh_layer_histogram"), d.get("rth_layer_histogram")
        if isinstance(hist_rh, list) and isinstance(hist_rth, list) and len(hist_rh) == len(hist_rth):
            parts.append("<div>" + page.bar_chart(list(range(len(hist_rh))), [("RH", hist_rh), ("RTH", hist_rth)],
                                                  "layer", "heads", f"top-{k} heads per layer") + "</div>")
        parts.append("</div>")
    return "".join(parts)


def _color_cell(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return f"<td>{esc(fmt(value))}</td>"
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    rgba = colormaps["viridis"](max(0.0, min(1.0, float(value))))
    light = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] > 0.55
    return (f'<td class="num" data-value="{value}" style="background:{to_hex(rgba)};'
            f'color:{"#000" if light else "#fff"}">{fmt(float(value), 2)}</td>')


def _sharing_section(items: list[tuple[str, dict[str, Any]]]) -> str:
    parts = []
    for source, d in items:
        langs = [str(x) for x in d.get("languages", [])]
        matrix = d.get("jaccard_matrix") or []
        parts.append(f'<h3>Top-{esc(d.get("top_k", "K"))} Jaccard overlap between languages</h3>'
                     f'<div class="source">{esc(source)}</div>')
        if len(matrix) == len(langs):
            head = "".join(f"<th>{esc(lang)}</th>" for lang in langs)
            body = "".join(f"<tr><th>{esc(a)}</th>{''.join(_color_cell(v) for v in row)}</tr>"
                           for a, row in zip(langs, matrix, strict=False))
            parts.append(f'<table class="matrix"><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>')
        pairs = d.get("pairs") or {}
        if pairs:
            rows = [f"<tr><td>{esc(p.replace('|', ' / '))}</td>{_num_td(v.get('intersection'))}"
                    f"{_num_td(v.get('jaccard'))}{_num_td(v.get('overlap_coefficient'))}</tr>"
                    for p, v in pairs.items() if isinstance(v, dict)]
            parts.append(_table([("pair", False), ("shared", True), ("Jaccard", True), ("overlap coef.", True)], rows))
        n_rh = d.get("n_retrieval_heads") or {}
        shared = d.get("shared_by_all") or {}
        strong = d.get("strong") or {}
        facts = [(f"retrieval heads (> {d.get('threshold', THRESHOLD)}) in {lang}", n) for lang, n in n_rh.items()]
        if shared:
            facts += [("retrieval heads in every language", shared.get("count")),
                      ("share of their union", shared.get("share_of_union")),
                      ("those heads", ", ".join(shared.get("heads", [])) or "none")]
        if strong:
            facts += [(f"strong heads (>= {strong.get('threshold')})", len(strong.get("heads", {}))),
                      ("language-agnostic strong heads", ", ".join(strong.get("language_agnostic", [])) or "none"),
                      ("share language-agnostic", strong.get("share_language_agnostic"))]
        if facts:
            parts.append(_kv_table(facts))
    return "".join(parts)


def _grid_figure(page: _Page, grid: Grid, title: str, diverging: bool = False) -> str:
    finite = [v for row in grid.values for v in row if v is not None]
    unit = bool(finite) and min(finite) >= 0.0 and max(finite) <= 1.0
    vmin, vmax = ((0.0, 1.0) if unit and not diverging else (None, None))
    empty = any(v is None for row in grid.values for v in row)
    caption = (f"Hatched cells (blank in the static figure): no prompt of that {grid.row_key} and {grid.col_key} "
               "was scored, e.g. none passed the filter or the grid has no such cell." if empty else "")
    return page.heatmap(grid.values, grid.rows, grid.cols, grid.row_key, grid.col_key, grid.metric, title,
                        diverging=diverging, vmin=vmin, vmax=vmax, caption=caption)


def _detection_section(page: _Page, items: list[tuple[str, Grid, dict[str, Any]]]) -> str:
    return "".join(f'<h3>Prompts that passed the retrieval filter</h3><div class="source">{esc(source)}</div>'
                   f'<div class="row"><div>{_grid_figure(page, grid, "share retrieved (length x depth)")}</div>'
                   f"<div>{_kv_table(summary.items())}</div></div>" for source, grid, summary in items)


def _difference(grid: Grid, base: Grid) -> Grid:
    ref = {(r, c): base.values[i][j] for i, r in enumerate(base.rows) for j, c in enumerate(base.cols)}
    values = [[None if v is None or ref.get((r, c)) is None else v - ref[(r, c)]  # type: ignore[operator]
               for c, v in zip(grid.cols, row, strict=True)] for r, row in zip(grid.rows, grid.values, strict=True)]
    return Grid(f"{grid.name} − {base.name}", grid.rows, grid.cols, values, grid.row_key, grid.col_key, f"Δ {grid.metric}")


def _grid_mean(grid: Grid) -> float | None:
    finite = [v for row in grid.values for v in row if v is not None]
    return sum(finite) / len(finite) if finite else None


def _niah_section(page: _Page, results: list[NiahResult]) -> str:
    parts = []
    for result in results:
        base = next((g for g in result.grids if g.name == result.baseline), None)
        metric = result.metric.replace("_", " ")
        figs = "".join(f"<div><h4>{esc(g.name)}</h4>{_grid_figure(page, g, f'{metric}: {g.name}')}</div>"
                       for g in result.grids)
        parts.append(f"<h3>{esc(metric.capitalize())} by context length and needle depth</h3>"
                     f'<div class="source">{esc(result.source)}</div><div class="row">{figs}</div>')
        if base is not None and len(result.grids) > 1:
            diffs = "".join(f"<div><h4>{esc(g.name)} − {esc(base.name)}</h4>"
                            f"{_grid_figure(page, _difference(g, base), f'{metric}: {g.name} − {base.name}', diverging=True)}</div>"
                            for g in result.grids if g is not base)
            parts.append(f"<h4>Difference vs {esc(base.name)}</h4><div class=\"row\">{diffs}</div>")
        base_mean = _grid_mean(base) if base is not None else None
        rows = []
        for g in result.grids:
            mean = _grid_mean(g)
            delta = None if mean is None or base_mean is None else mean - base_mean
            heads = result.heads.get(g.name)
            heads_text = "—" if heads is None else (", ".join(heads) if heads else "none")
            rows.append(f"<tr><td>{esc(g.name)}</td>{_num_td(mean)}{_num_td(delta, signed=True)}"
                        f"<td>{esc(heads_text)}</td></tr>")
        parts.append(_table([("condition", False), (f"mean {metric}", True), ("Δ vs unmasked", True),
                             ("masked heads", False)], rows))
    return "".join(parts)


def _interval_text(low: float | None, high: float | None) -> str:
    return "—" if low is None or high is None else f"[{low:.4f}, {high:.4f}]"


def _interval_td(low: float | None, high: float | None) -> str:
    """A table cell ``[low, high]`` that sorts by ``low``."""
    return f'<td class="num" data-value="{"" if low is None else low}">{esc(_interval_text(low, high))}</td>'


def _compare_section(tables: list[tuple[str, list[CompareRow]]]) -> str:
    if not tables:
        return ""
    parts = ['<p class="note">Score: the task metric (mean over items); Δ: change against the unmasked model '
             "of the same task; intervals as given by the run (the compare command: percentile bootstrap over "
             "items, paired for Δ).</p>"]
    for i, (source, rows) in enumerate(tables):
        trs = []
        for r in rows:
            trs.append(f"<tr><td>{esc(r.task)}</td><td>{esc(r.condition)}</td>{_num_td(r.k)}{_num_td(r.score)}"
                       f"{_interval_td(r.ci_low, r.ci_high)}{_num_td(r.delta, signed=True)}"
                       f"{_interval_td(r.delta_ci_low, r.delta_ci_high)}{_num_td(r.n)}</tr>")
        metrics = sorted({r.metric for r in rows if r.metric})
        note = f'<div class="note">metric: {esc(", ".join(metrics))}</div>' if metrics else ""
        parts.append(f'<div class="source">{esc(source)}</div>{note}' + _table(
            [("task", False), ("condition", False), ("heads", True), ("score", True), ("95 % CI", True),
             ("Δ vs unmasked", True), ("95 % CI of Δ", True), ("n", True)], trs, table_id=f"compare-{i}"))
    return "".join(parts)


def _uses_section(items: list[tuple[str, dict[str, Any]]]) -> str:
    """kv-compress: accuracy vs KV memory; decore: faithful-answer rates with 95 % intervals."""
    parts = []
    for source, data in items:
        rows = data.get("conditions") or []
        kv = str(data.get("format", "")).endswith("kv-compress")
        if kv:
            by_kind = lambda *kinds, rows=rows: sorted((r for r in rows if r["kind"] in kinds), key=lambda r: r["kv_share"])  # noqa: E731
            series = [(name, [r["kv_share"] for r in rs], [r["accuracy"] for r in rs], [tuple(r["ci95"]) for r in rs])
                      for name, rs in (("top-B KV heads", by_kind("windowed", "top", "full")),
                                       ("retrieval KV heads", by_kind("retrieval")),
                                       ("random KV heads", by_kind("random-retrieval", "random-top"))) if rs]
            png = figures.errorbar_curves_png(series, "KV memory (share of the full cache)", "NIAH exact match",
                                     "accuracy vs KV memory")
            trs = [f"<tr><td>{esc(r['name'])}</td>{_num_td(r['kv_share'])}{_num_td(r['kv_bytes'] / 2**20)}"
                   f"{_num_td(r['accuracy'])}<td>{esc(_interval_text(*r['ci95']))}</td></tr>" for r in rows]
            headers = [("condition", False), ("KV share", True), ("KV MiB", True), ("exact match", True), ("95 % CI", False)]
        else:
            shown = [r for r in rows if "faithful" in r] + [
                {"name": f"{g} (pooled)", **v} for g, v in (data.get("random_pooled") or {}).items() if "faithful" in v]
            png = figures.errorbar_curves_png([(r["name"], [i], [r["faithful"]["rate"]], [tuple(r["faithful"]["ci95"])])
                                      for i, r in enumerate(shown)], "condition", "faithful-answer rate",
                                     "DeCoRe: answers equal to the context's value") if shown else ""
            trs = [f"<tr><td>{esc(r['name'])}</td>{_num_td(r['faithful']['rate'])}"
                   f"<td>{esc(_interval_text(*r['faithful']['ci95']))}</td>"
                   f"{_num_td((r.get('memorised') or {}).get('rate'))}{_num_td(r.get('n'))}</tr>" for r in shown]
            headers = [("condition", False), ("faithful", True), ("95 % CI", False), ("memorised", True), ("n", True)]
        img = f'<div class="figure"><div class="static-fig"><img alt="{esc(source)}" src="{png}"></div></div>' if png else ""
        parts.append(f'<div class="source">{esc(source)}</div>{img}' + _table(headers, trs, sortable=False))
    return "".join(parts)


def _atlas_section(items: list[tuple[str, dict[str, Any]]]) -> str:
    """compare-scorers: agreement matrices, then per scorer the change each causal test shows, [95 % CI]."""
    parts = []
    for source, d in items:
        ag = d.get("agreement") or {}
        names = [str(n) for n in ag.get("scorers", [])]
        parts.append(f'<div class="source">{esc(source)}</div>')
        for key, title in (("spearman", "Spearman over heads"), ("jaccard", f"top-{ag.get('k', 'K')} Jaccard")):
            matrix = ag.get(key) or []
            if len(matrix) == len(names) and names:
                head = "".join(f"<th>{esc(n)}</th>" for n in names)
                body = "".join(f"<tr><th>{esc(a)}</th>{''.join(_color_cell(v) for v in row)}</tr>"
                               for a, row in zip(names, matrix, strict=False))
                parts.append(f'<h3>{esc(title)}</h3><table class="matrix"><thead><tr><th></th>{head}</tr></thead>'
                             f"<tbody>{body}</tbody></table>")
        tests = [(task, rows, "unmasked") for task, rows in (d.get("masking") or {}).items()]
        if d.get("kv"):
            tests.append((f"KV, top-{d['kv'].get('budget')} kept", d["kv"].get("niah") or {}, "full"))
        trs = []
        for name in [*names, "random", "windowed"]:
            cells = [f"<td>{esc(name)}</td>"]
            shown = False
            for _, rows, _ in tests:
                r = rows.get(name) if isinstance(rows, dict) else None
                shown = shown or bool(r)
                cells.append(f"<td>{esc(_interval_text(r.get('ci_low'), r.get('ci_high')))} "
                             f"({fmt(r.get('delta'), 3)})</td>" if r else "<td>—</td>")
            if shown:
                trs.append("<tr>" + "".join(cells) + "</tr>")
        headers = [("heads", False)] + [(f"{t} vs {ref} ({fmt((rows.get(ref) or {}).get('score'), 2)})", False)
                                        for t, rows, ref in tests]
        parts.append(f"<h3>Masking top-{esc(d.get('k'))} heads / keeping top KV heads: change in exact match</h3>"
                     + _table(headers, trs, sortable=False))
    return "".join(parts)


def _retmask_section(page: _Page, comparisons: list[ModelComparison],
                     pair_stats: list[tuple[str, dict[str, Any]]], training: list[tuple[str, dict[str, Any]]]) -> str:
    parts = []
    for cmp in comparisons:
        headers: list[tuple[str, bool]] = [("suite", False)]
        for model in cmp.models:
            headers += [(model, True), (f"{model} 95 % CI", True)]
            if model != cmp.base:
                headers += [(f"Δ {model}", True), (f"Δ {model} 95 % CI", True)]
        trs = []
        for suite in cmp.suites:
            tds = [f"<td>{esc(suite)}</td>"]
            for model in cmp.models:
                row = cmp.results[model].get(suite, {})
                tds += [_num_td(row.get("accuracy")), _accuracy_interval_td(row)]
                if model != cmp.base:
                    tds += [_num_td(row.get("delta"), signed=True), _interval_td(row.get("delta_low"), row.get("delta_high"))]
            trs.append(f"<tr>{''.join(tds)}</tr>")
        chart = page.bar_chart(cmp.suites, [(m, [cmp.results[m].get(s, {}).get("accuracy") for s in cmp.suites])
                                            for m in cmp.models], "suite", "accuracy", f"{' vs '.join(cmp.models)}")
        conc = ""
        if cmp.concentration:
            conc = ("<h4>Concentration of the head scores</h4>"
                    + _kv_table((CONCENTRATION_LABELS.get(k, k), v) for k, v in cmp.concentration.items()))
        trained = ", ".join(f"“{m}”" for m in cmp.models if m != cmp.base) or "none"
        parts.append("<h3>Before and after RetMask training</h3>"
                     f'<p class="note">“{esc(cmp.base)}” is the model before training; {esc(trained)} after. '
                     f"Δ: a trained model's accuracy minus the one before, on the same items; intervals: "
                     f"percentile bootstrap over items (paired for Δ).</p>"
                     f'<div class="source">{esc(cmp.source)}</div>'
                     f'<div class="row"><div>{_table(headers, trs)}{conc}</div><div>{chart}</div></div>'
                     + _retmask_arms(cmp))
    for source, st in pair_stats:
        facts = [("prompts", st.get("n_prompts")), ("pairs kept", st.get("n_pairs")), ("dropped", st.get("n_dropped"))]
        facts += [(f"dropped: {k}", v) for k, v in (st.get("dropped") or {}).items()]
        facts += [("mean chosen tokens", st.get("mean_chosen_tokens")),
                  ("mean rejected tokens", st.get("mean_rejected_tokens")),
                  ("masked heads", ", ".join(map(str, st.get("heads") or [])) or "—")]
        facts += [(f"sampling: {k}", json.dumps(v) if isinstance(v, (list, dict)) else v)
                  for k, v in (st.get("settings") or {}).items()]
        parts.append(f'<h3>Preference pairs</h3><div class="source">{esc(source)}</div>{_kv_table(facts)}')
    for source, run in training:
        metrics = run.get("metrics") or {}
        parts.append(f'<h3>DPO training</h3><div class="source">{esc(source)}</div>')
        facts = [("base model", run.get("base_model")), ("pairs", run.get("n_pairs")),
                 ("LoRA adapter", run.get("adapter"))] + [(k, v) for k, v in metrics.items()]
        parts.append(f'<div class="row"><div>{_kv_table((k, v) for k, v in facts if v is not None)}</div>')
        history = [h for h in run.get("log_history") or [] if isinstance(h, dict) and "loss" in h and "step" in h]
        if len(history) >= 2:
            png = figures.line_png([h["step"] for h in history], [h["loss"] for h in history], "step", "loss",
                                   "DPO training loss")
            parts.append(f'<div><img class="plain-fig" alt="DPO training loss" src="{png}"></div>')
        parts.append("</div>")
    return "".join(parts)


def _accuracy_interval_td(row: dict[str, Any]) -> str:
    """The bootstrap interval of an accuracy, or ± its binomial half-width (files written before intervals)."""
    if row.get("ci_low") is not None:
        return _interval_td(row.get("ci_low"), row.get("ci_high"))
    ci95 = row.get("ci95")
    return _num_td(None) if ci95 is None else f'<td class="num" data-value="{ci95}">± {esc(fmt(ci95, 4))}</td>'


def _interval_td(low: float | None, high: float | None) -> str:
    return f'<td class="num" data-value="{"" if low is None else low}">{esc(_interval_text(low, high))}</td>'


def _retmask_arms(cmp: ModelComparison) -> str:
    """RetMask against its random-heads control: per arm what it was trained on, per suite the paired change."""
    parts = []
    if cmp.arms:
        keys = list(next(iter(cmp.arms.values())))
        trs = [f"<tr><td>{esc(arm)}</td>" + "".join(
            f"<td>{esc(v)}</td>" if isinstance(v, str) else _num_td(v) for v in info.values()) + "</tr>"
            for arm, info in cmp.arms.items()]
        parts.append("<h4>Arms</h4>" + _table([("arm", False)] + [(k, k != "masked") for k in keys], trs,
                                               sortable=False))
    for name, per_suite in cmp.contrasts.items():
        trs = []
        for suite, row in per_suite.items():
            low = row.get("delta_low")
            verdict = "—" if low is None else ("yes" if low > 0 or (row.get("delta_high") or 0) < 0 else "no")
            trs.append(f"<tr><td>{esc(suite)}</td>{_num_td(row.get('delta'), signed=True)}"
                       f"{_interval_td(low, row.get('delta_high'))}<td>{verdict}</td></tr>")
        parts.append(f"<h4>{esc(name)}</h4>"
                     '<p class="note">Paired change between the two trained models on the same items, with its '
                     "bootstrap 95 % interval: the gain RetMask owes to masking the retrieval heads rather than "
                     "as many random heads.</p>"
                     + _table([("suite", False), ("change", True), ("95 % CI", True), ("interval excludes 0", False)],
                              trs, sortable=False))
    return "".join(parts)


def _dpo_curves_section(items: list[tuple[str, dict[str, Any]]]) -> str:
    """Per run: held-out DPO metrics before/after training and the reward curves (``training_curves.json``)."""
    parts = []
    keys = ("reward_accuracy", "reward_margin", "logp_chosen", "logp_rejected", "logp_accuracy", "loss", "n")
    for source, curves in items:
        held = curves["heldout"]
        trs = [f"<tr><td>{esc(k)}</td>{_num_td((held.get('before') or {}).get(k))}"
               f"{_num_td((held.get('after') or {}).get(k))}</tr>" for k in keys]
        table = _table([("held-out pairs", False), ("before", True), ("after", True)], trs, sortable=False)
        train, figs = curves["train"], ""
        steps = [r["step"] for r in train]
        last = max(steps, default=1)
        for title, names in (("DPO reward accuracy", ("reward_accuracy",)), ("DPO reward margin", ("reward_margin",)),
                             ("DPO log-probabilities", ("logp_chosen", "logp_rejected"))):
            markers = [(f"held-out {when} ({name})", x, held[when][name]) for name in names
                       for when, x in (("before", 0), ("after", last))
                       if isinstance(held.get(when), dict) and isinstance(held[when].get(name), (int, float))]
            if len(steps) >= 2 or markers:
                png = figures.curves_png(steps, [(f"train {n}", [r.get(n) for r in train]) for n in names],
                                         title.split(" ", 1)[1], title, markers)
                figs += f'<div><img class="plain-fig" alt="{esc(title)}" src="{png}"></div>'
        parts.append(f'<h3>DPO curves</h3><div class="source">{esc(source)}</div>'
                     f'<div class="row"><div>{table}</div>{figs}</div>')
    return "".join(parts)


def _duration(meta: dict[str, Any]) -> str:
    """``wall 12.5 s (00:00:12)``: every duration the run records, ``;``-separated; empty if none."""
    out = [f"{key.removesuffix('_s')} {v:.1f} s ({time.strftime('%H:%M:%S', time.gmtime(v))})"
           for key in DURATION_KEYS if isinstance(v := meta.get(key), (int, float)) and not isinstance(v, bool)]
    metrics = meta.get("metrics")
    runtime = metrics.get("train_runtime") if isinstance(metrics, dict) else None
    return "; ".join(out + ([f"train {runtime:.1f} s"] if isinstance(runtime, (int, float)) else []))


def _meta_value(key: str, value: Any) -> str:
    if key == "model" and isinstance(value, dict):  # run.json: {"model": name, "revision": ...}
        value = value.get("model", value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, list):
        text = ", ".join(map(str, value))
        return text if len(text) < 200 else text[:200] + " …"
    return fmt(value)


SETTING_KEYS = ("method", "mode", "dtype", "lengths", "depths", "needle_ids", "n_prompts", "rouge_threshold", "accuracy_threshold",
                "dedup", "max_new_tokens", "condition", "masking", "heads", "top_k")
NOT_SETTINGS = {"model", "base_model", "seed", "versions", "python", "host", "created", "command", "format",
                "format_version", "progress", "config", "metrics", "log_history", "prompt_ids", *DURATION_KEYS}


def _settings(meta: dict[str, Any]) -> dict[str, str]:
    """A run's settings as text: the known top-level ones and everything under ``config``."""
    out = {k: _meta_value(k, meta[k]) for k in SETTING_KEYS if meta.get(k) is not None}
    config = meta.get("config")
    if isinstance(config, dict):  # run.json and training runs keep their settings under "config"
        out.update({k: _meta_value(k, v) for k, v in config.items() if k not in NOT_SETTINGS and v is not None})
    return out


def _run_kind(source: str, meta: dict[str, Any]) -> str:
    fmt_name = canonical_format(meta.get("format"))
    if fmt_name:
        return fmt_name.rsplit("/", 1)[-1]
    name = source.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return str(meta.get("kind") or meta.get("method") or name.split(".", 1)[0])


def _model_text(meta: dict[str, Any]) -> str:
    model = meta.get("model", meta.get("base_model"))
    if isinstance(model, dict):  # run.json: {"model": name, "revision": ...}
        model = model.get("model")
    return str(builtin_name(model)) if model is not None else "—"


def _breakable(text: str) -> str:
    """``text`` escaped, each word kept whole (``<span class="nobr">``: a browser would otherwise break
    ``tiny-llama`` or ``--model`` at a hyphen) with a line-break opportunity (``<wbr>``) after each ``/``:
    a long path wraps between its folders, never inside a name."""
    out = []
    for token in re.split(r"(\s+)", str(text)):
        if not token or token.isspace():
            out.append(esc(token))
            continue
        out.append("<wbr>".join(f'<span class="nobr">{esc(p)}</span>' for p in re.split(r"(?<=/)", token) if p))
    return "".join(out)


def _metadata_section(items: list[tuple[str, dict[str, Any]]]) -> str:
    """One row per run: what made it (model, kind, the settings in which runs differ, seed, versions, when,
    the command line); every field of every run under "all fields"."""
    if not items:
        return ""
    settings = [_settings(meta) for _, meta in items]
    keys = list(dict.fromkeys(k for run in settings for k in run))
    differ = [k for k in keys if len({run.get(k) for run in settings if k in run}) > 1
              or sum(k in run for run in settings) < len(settings)]
    shown = keys if len(items) == 1 else differ
    common = [k for k in keys if k not in differ]
    rows = []
    for (source, meta), run in zip(items, settings, strict=True):
        versions = meta.get("versions")
        versions_text = ", ".join(f"{k} {v}" for k, v in versions.items()) if isinstance(versions, dict) else "—"
        duration = _duration(meta)
        created = str(meta.get("created") or "—") + (f" ({duration})" if duration else "")
        command = meta.get("command")
        command_text = " ".join(map(str, command)) if isinstance(command, list) else str(command or "—")
        setting_text = "; ".join(f"{k} {run[k]}" for k in shown if k in run) or "—"
        rows.append(f'<tr><td class="source">{_breakable(source)}</td><td>{_breakable(_run_kind(source, meta))}</td>'
                    f"<td>{_breakable(_model_text(meta))}</td><td>{_breakable(setting_text)}</td>"
                    f"{_num_td(meta.get('seed'))}<td>{_breakable(versions_text)}</td><td>{_breakable(created)}</td>"
                    f"<td><code>{_breakable(command_text)}</code></td></tr>")
    table = _table([("run", False), ("kind", False), ("model", False),
                    ("settings" if len(items) == 1 else "settings that differ", False), ("seed", True),
                    ("versions", False), ("created", False), ("command", False)], rows, table_id="run-metadata")
    note = ""
    if common and len(items) > 1:
        note = (f'<p class="note">Same in every run that records them: '
                f"{esc('; '.join(f'{k} {settings[0].get(k, next(r[k] for r in settings if k in r))}' for k in common))}.</p>")
    full = "".join(f'<h4 class="source">{esc(source)}</h4><pre class="json">'
                   f"{esc(json.dumps(_json_safe(meta), indent=1, ensure_ascii=False, default=str))}</pre>"
                   for source, meta in items)
    return (f'<div class="scroll meta">{table}</div>{note}'
            f"<details><summary>all fields</summary>{full}</details>")


__all__ = ["render_report"]
