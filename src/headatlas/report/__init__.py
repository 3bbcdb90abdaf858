"""Run reports: one self-contained HTML page from the artifacts of one or more run directories.

The page (``report.html``) shows the layer x head heatmap of retrieval (and
retrieval-transition) scores with the top-K heads, concentration statistics
and the layer distribution, NIAH accuracy per masking condition and its
difference vs the unmasked model, comparison tables with 95 % intervals,
RetMask before/after, cross-language sharing, RH vs RTH overlap, and the
run's metadata — each section only when its artifacts exist. It needs no
network: CSS, JS, data (inline JSON) and static PNG fallbacks are embedded.
See ``docs/report.md``.

>>> from pathlib import Path
>>> from headatlas.report import write_report
>>> write_report([Path("runs/demo")])  # doctest: +SKIP
PosixPath('runs/demo/report.html')
"""

from __future__ import annotations

from pathlib import Path

from ..runs import atomic_write_text
from .collect import Report, collect_runs
from .render import render_report

REPORT_FILE = "report.html"


def write_report(
    run_dirs: list[Path], out: Path | None = None, *, heads_listed: int = 20, title: str | None = None
) -> Path:
    """Read the artifacts under ``run_dirs`` and write the report page; returns its path.

    ``out`` is the HTML file to write (a directory gets ``report.html``
    inside); by default ``report.html`` in the first run directory.
    ``heads_listed`` is the number of best heads listed per score map. Unreadable
    artifacts become warnings on the page, never an exception.

    >>> path = write_report([Path("runs/organism")], Path("/tmp/organism-report.html"))  # doctest: +SKIP
    """
    return build_report(run_dirs, out, heads_listed=heads_listed, title=title)[0]


class NoArtifactsError(ValueError):
    """The run directories hold nothing a report can show (``build_report(..., require_artifacts=True)``)."""


def build_report(
    run_dirs: list[Path], out: Path | None = None, *, heads_listed: int = 20, title: str | None = None,
    require_artifacts: bool = False,
) -> tuple[Path, Report]:
    """:func:`write_report`, also returning the collected :class:`Report` (its warnings, what was found).

    With ``require_artifacts`` a folder with no recognised artifact raises :class:`NoArtifactsError`
    (naming the files that could not be read) and nothing is written.
    """
    if not run_dirs:
        raise ValueError("give at least one run directory")
    if heads_listed < 1:
        raise ValueError(f"heads_listed must be >= 1, got {heads_listed}")
    run_dirs = [Path(d) for d in run_dirs]
    if out is None:
        first = run_dirs[0]
        out = (first.parent if first.is_file() else first) / REPORT_FILE
    out = Path(out)
    if out.is_dir():
        out = out / REPORT_FILE
    report = collect_runs(run_dirs)
    if require_artifacts and report.empty:
        problems = report.warnings + report.unrecognised  # each file that was found and why it shows nothing
        unread = f" ({'; '.join(problems)})" if problems else ""
        raise NoArtifactsError(f"no recognised artifacts in {', '.join(map(str, run_dirs))}{unread}; give the "
                               "folders that detect, niah-eval, compare, languages or retmask wrote")
    return atomic_write_text(out, render_report(report, heads_listed=heads_listed, title=title)), report


__all__ = ["REPORT_FILE", "NoArtifactsError", "Report", "build_report", "collect_runs", "render_report", "write_report"]
