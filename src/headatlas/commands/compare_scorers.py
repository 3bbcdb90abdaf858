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

from ..atlas import AtlasConfig
from .errors import refusing
from .options import option


def compare_scorers_command(
    model: str = option(AtlasConfig, "model", default=...),
    out: Path = option(AtlasConfig, "out", default=...),
    scorers: str = option(AtlasConfig, "scorers"),
    lengths: str = option(AtlasConfig, "lengths"),
    depths: str = option(AtlasConfig, "depths"),
    per_cell: int = option(AtlasConfig, "per_cell", min=1),
    mode: str = option(AtlasConfig, "mode"),
    top_share: float = option(AtlasConfig, "top_share"),
    random_seeds: int = option(AtlasConfig, "random_seeds", min=1),
    niah_lengths: str = option(AtlasConfig, "niah_lengths"),
    niah_depths: str = option(AtlasConfig, "niah_depths"),
    tasks: str = option(AtlasConfig, "tasks"),
    task_n: int = option(AtlasConfig, "task_n", min=1),
    mask_mode: str = option(AtlasConfig, "mask_mode"),
    kv_budget: int = option(AtlasConfig, "kv_budget", min=0),
    kv_lengths: str = option(AtlasConfig, "kv_lengths"),
    kv_depths: str = option(AtlasConfig, "kv_depths"),
    sink: int = option(AtlasConfig, "sink", min=0),
    window: int = option(AtlasConfig, "window", min=1),
    max_new_tokens: int = option(AtlasConfig, "max_new_tokens", min=1),
    batch_size: int = option(AtlasConfig, "batch_size", min=1),
    duo_steps: int = option(AtlasConfig, "duo_steps", min=1),
    seed: int = option(AtlasConfig, "seed"),
    device: str | None = option(AtlasConfig, "device"),
    dtype: str = option(AtlasConfig, "dtype"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Score heads with every scorer, then compare: agreement, masking damage and KV retention with intervals."""
    from ..atlas import ATLAS_FILE, run_atlas

    with refusing():
        config = AtlasConfig(
            model=model, out=str(out), scorers=scorers, lengths=lengths, depths=depths, per_cell=per_cell, mode=mode,
            top_share=top_share, random_seeds=random_seeds, niah_lengths=niah_lengths, niah_depths=niah_depths,
            tasks=tasks, task_n=task_n, mask_mode=mask_mode, kv_budget=kv_budget, kv_lengths=kv_lengths,
            kv_depths=kv_depths, sink=sink, window=window, max_new_tokens=max_new_tokens, batch_size=batch_size,
            duo_steps=duo_steps, seed=seed, device=device, dtype=dtype,
        )  # fmt: skip
    console = Console(stderr=True)
    with refusing("compare-scorers"):
        result = run_atlas(config, progress=progress, console=console)
    for line in atlas_lines(result):
        typer.echo(line)
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
