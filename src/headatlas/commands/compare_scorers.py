"""``headatlas compare-scorers``: every head scorer on one model, with agreement, masking and KV tests.

Example::

    headatlas compare-scorers --model organism --out runs/atlas

Rerunning the same command resumes (each scorer's detection, the masked answers, the KV answers);
see docs/atlas.md.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..atlas_config import AtlasConfig
from .errors import refusing
from .options import PROGRESS, from_config


@from_config(config=AtlasConfig)
def compare_scorers_command(config: AtlasConfig, progress: bool = PROGRESS) -> None:
    """Score heads with every scorer, then compare: agreement, masking damage and KV retention with intervals."""
    from ..atlas import ATLAS_FILE, run_atlas

    console = Console(stderr=True)
    with refusing("compare-scorers"):
        result = run_atlas(config, progress=progress, console=console)
    for line in atlas_lines(result):
        typer.echo(line)
    out = Path(config.out)
    console.print(f"wrote {out / ATLAS_FILE}, {out / 'heatmaps.png'}, {out / 'agreement.png'}, {out / 'validity.png'}")


def atlas_lines(result: dict) -> list[str]:
    """The atlas table as text: per scorer, the change each test shows against its reference, [95 % CI]."""
    tests = [(task, rows) for task, rows in result["masking"].items()]
    if result.get("kv"):
        tests.append(("kv", result["kv"]["niah"]))
    lines = [f"K = {result['k']} of {result['n_heads_total']} heads; changes vs unmasked (masking) or the full cache (kv)"]
    for name in [*result["scorers"], "random"]:
        cells = []
        for task, rows in tests:
            r = rows.get(name)
            cells.append(f"{task} {r['delta']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" if r else f"{task} -")
        lines.append(f"{name:<10} " + "  ".join(cells))
    return lines
