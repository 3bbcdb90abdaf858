"""``headatlas demo``: the whole pipeline on the built-in model, offline (``make demo``)."""

from __future__ import annotations

import typer

from ..demo import DemoConfig
from .options import from_config


@from_config(config=DemoConfig)
def demo_command(
    config: DemoConfig,
    quick: bool = typer.Option(False, "--quick", help="Smaller grids and fewer items (a ~3-minute smoke run)."),
) -> None:
    """Detect RH and RTH, compare masked conditions, run a short RetMask, and write report.html."""
    from ..demo import QUICK, config_from_overrides, run_demo
    from ..runs import ResumeMismatchError

    out = config.out
    if quick:
        config = config_from_overrides(config, **QUICK)
    try:
        report = run_demo(config)
    except FileNotFoundError as err:
        typer.secho(f"demo: {err}", fg="red", err=True)
        raise typer.Exit(2) from None
    except ResumeMismatchError as err:  # e.g. results of an older built-in model in the same folder
        typer.secho(f"demo: {err}\n{out} holds results made with another model or other settings (an older "
                    f"built-in model, say); nothing was changed. Use --out NEW, or delete {out} to start over.",
                    fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(str(report))
