"""``headatlas demo``: the whole pipeline on the built-in model, offline (``make demo``)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..demo import DemoConfig
from .options import option


def demo_command(
    out: Path = option(DemoConfig, "out", default=Path("runs/demo")),
    model: str = option(DemoConfig, "model"),
    quick: bool = typer.Option(False, "--quick", help="Smaller grids and fewer items (a ~3-minute smoke run)."),
    retmask: bool = option(DemoConfig, "retmask", "--retmask/--no-retmask"),
    steps: str = option(DemoConfig, "steps", default=",".join(DemoConfig.steps)),
) -> None:
    """Detect RH and RTH, compare masked conditions, run a short RetMask, and write report.html."""
    from ..demo import config_from_overrides, run_demo
    from ..runs import ResumeMismatchError

    overrides: dict = {"out": str(out), "model": model, "retmask": retmask,
                       "steps": tuple(s.strip() for s in steps.split(",") if s.strip())}
    if quick:
        overrides.update(lengths=(256, 512), depths=3, per_cell=1, random_seeds=2, compare_limit=10,
                         niah_lengths=(256, 512), retmask_prompts=16, retmask_eval=10, langs=("en", "de"))
    try:
        report = run_demo(config_from_overrides(**overrides))
    except FileNotFoundError as err:
        typer.secho(f"demo: {err}", fg="red", err=True)
        raise typer.Exit(2) from None
    except ResumeMismatchError as err:  # e.g. results of an older built-in model in the same folder
        typer.secho(f"demo: {err}\n{out} holds results made with another model or other settings (an older "
                    f"built-in model, say); nothing was changed. Use --out NEW, or delete {out} to start over.",
                    fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(str(report))
