"""``headatlas decore``: contrastive decoding against the retrieval-masked model (DeCoRe).

Examples::

    headatlas decore --model organism --heads runs/rh/head_scores.json --task conflict --n 60 \\
        --alpha 1,4 --random-seeds 3 --out runs/decore
    headatlas decore --model M --heads head_scores.json --prompts prompts.jsonl --dynamic --out runs/d

``--prompts`` is JSONL: ``{"prompt": ..., "id"?: ..., "context_answer"?: ..., "memory_answer"?: ...}``.
Rerunning the same command resumes from ``journal.jsonl``; see docs/decore.md.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ..config import GridConfig, like
from ..decore.experiment import DecoreRunConfig
from .errors import refusing
from .options import PROGRESS, from_config

TASKS = ("conflict",)


@dataclass(kw_only=True)
class DecoreTaskGrid:
    """The context lengths of a built-in ``--task`` (the prompts' own lengths otherwise)."""

    lengths: str = like(GridConfig, "lengths", "512,1024", help="Context lengths of --task's prompts.")


def _items(task: str | None, prompts: Path | None, model: str, n: int, lengths: list[int], seed: int) -> list[dict[str, Any]]:
    """Resolve ``--task`` (built-in model only) or read ``--prompts``."""
    if (task is None) == (prompts is None):
        raise typer.BadParameter("give exactly one of --task or --prompts")
    if task is not None:
        if task not in TASKS:
            raise typer.BadParameter(f"--task must be one of {TASKS}")
        from ..builtins import builtin_for
        from ..model_spec import resolve_model_path

        builtin = builtin_for(model)
        if builtin is None or builtin.conflict is None:
            raise typer.BadParameter("--task conflict needs a built-in model with a conflict task (or a checkpoint "
                                     "trained like one)")
        return builtin.conflict(resolve_model_path(model), n, seed, lengths)
    items = []
    for i, line in enumerate(prompts.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise typer.BadParameter(f"--prompts {prompts}: line {i + 1} is not JSON ({err})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise typer.BadParameter(f"--prompts {prompts}: line {i + 1} has no string 'prompt'")
        items.append({"id": str(row.get("id", i)), **row})
    return items


@from_config(config=DecoreRunConfig, grid=DecoreTaskGrid)
def decore_command(
    config: DecoreRunConfig,
    grid: DecoreTaskGrid,
    task: str | None = typer.Option(None, "--task", help="A built-in task: conflict (knowledge conflicts, built-in model)."),
    prompts: Path | None = typer.Option(None, "--prompts", exists=True, dir_okay=False, help="JSONL of prompts (see the module docs)."),
    n: int = typer.Option(60, "--n", min=1, help="Prompts of --task."),
    progress: bool = PROGRESS,
) -> None:
    """Faithful-answer rates of base decoding and DeCoRe (retrieval heads vs random heads), with 95 % intervals."""
    from ..decore.experiment import FIGURE_FILE, RESULT_FILE, run_decore
    from ..niah.prompts import parse_lengths

    with refusing():
        config = dataclasses.replace(config, source=f"task:{task}" if task else str(prompts))
        items = _items(task, prompts, config.model, n, parse_lengths(grid.lengths), config.seed)
    with refusing("decore"):
        result = run_decore(config, items, progress=progress)
    rows = result["conditions"] + [{"name": f"{g} (pooled)", **v} for g, v in result["random_pooled"].items()]
    for row in rows:
        f, m = row.get("faithful"), row.get("memorised")
        if f:
            typer.echo(f"{row['name']:<24} faithful {f['rate']:.3f} [{f['ci95'][0]:.3f}, {f['ci95'][1]:.3f}]"
                       + (f"  memorised {m['rate']:.3f}" if m else ""))
    out = Path(config.out)
    Console(stderr=True, soft_wrap=True).print(f"wrote {out / RESULT_FILE}" + (f", {out / FIGURE_FILE}" if result["scored"] else ""))
