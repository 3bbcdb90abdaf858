"""``headatlas report DIR...``: one self-contained HTML page from run directories."""

from __future__ import annotations

from pathlib import Path

import typer

from .errors import refuse


def report_command(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (detection, evaluation, RetMask, multilingual)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="HTML file to write (default: report.html in the first DIR)."),
) -> None:
    """Write report.html: head-score heatmaps, top heads, NIAH accuracy, comparisons, RetMask, sharing, metadata.

    The page is self-contained (no network): open it from disk in any browser.
    Example: headatlas report runs/organism runs/organism-eval --out runs/report.html
    """
    from ..report import NoArtifactsError, build_report

    missing = [str(d) for d in run_dirs if not d.exists()]
    if missing:
        raise typer.BadParameter(f"no such run directory: {', '.join(missing)}", param_hint="RUN_DIRS")
    try:
        path, report = build_report(run_dirs, out, require_artifacts=True)
    except NoArtifactsError as err:
        raise refuse("report", str(err)) from None
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"report written to {path}")
