"""``headatlas decore``: contrastive decoding against the retrieval-masked model (DeCoRe).

Examples::

    headatlas decore --model organism --heads runs/rh/head_scores.json --task conflict --n 60 \\
        --alpha 1,4 --random-seeds 3 --out runs/decore
    headatlas decore --model M --heads head_scores.json --prompts prompts.jsonl --dynamic --out runs/d

``--prompts`` is JSONL: ``{"prompt": ..., "id"?: ..., "context_answer"?: ..., "memory_answer"?: ...}``.
Rerunning the same command resumes from ``journal.jsonl``; see docs/decore.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ..runs import HeadRunConfig
from .errors import refusing
from .options import GridOptions, ModelOptions, option

TASKS = ("conflict",)


def _items(task: str | None, prompts: Path | None, model: str, n: int, lengths: list[int], seed: int) -> list[dict[str, Any]]:
    """Resolve ``--task`` (built-in model only) or read ``--prompts``."""
    if (task is None) == (prompts is None):
        raise typer.BadParameter("give exactly one of --task or --prompts")
    if task is not None:
        if task not in TASKS:
            raise typer.BadParameter(f"--task must be one of {TASKS}")
        from ..builtins import builtin_for
        from ..model_spec import resolve_model_path
        from ..organism.conflict import conflict_prompts
        from ..organism.tasks import organism_generator

        if builtin_for(model) is None:
            raise typer.BadParameter("--task conflict needs the built-in model (or a checkpoint trained like it)")
        gen = organism_generator(resolve_model_path(model))
        return [it.to_json() for it in conflict_prompts(n, seed, lengths, generator=gen)]
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


def decore_command(
    model: str = option(ModelOptions, "model", default=...),
    device: str | None = option(ModelOptions, "device"),
    dtype: str = option(ModelOptions, "dtype"),
    heads: Path = option(HeadRunConfig, "heads", exists=True, dir_okay=False),
    out: Path = typer.Option(..., "--out", help="Output directory (rerun to resume)."),
    task: str | None = typer.Option(None, "--task", help="A built-in task: conflict (knowledge conflicts, built-in model)."),
    prompts: Path | None = typer.Option(None, "--prompts", exists=True, dir_okay=False, help="JSONL of prompts (see the module docs)."),
    n: int = typer.Option(60, "--n", min=1, help="Prompts of --task."),
    lengths: str = option(GridOptions, "lengths", default="512,1024"),
    top_k: int | None = option(HeadRunConfig, "top_k", min=1),
    alpha: str = typer.Option("1", "--alpha", help="Fixed contrast strength a; a comma list runs each."),
    dynamic: bool = typer.Option(False, "--dynamic", help="a = entropy of p_base (DeCoRe's dynamic rule) instead of --alpha."),
    normalise: bool = typer.Option(False, "--normalise", help="With --dynamic: divide the entropy by log |V|."),
    cap: float | None = typer.Option(None, "--cap", help="With --dynamic: cap a at this value."),
    mode: str = typer.Option("uniform", "--mode", help="Masking operator of the contrast stream: uniform | zero."),
    masked_prefill: bool = typer.Option(False, "--masked-prefill", help="Prefill the masked stream masked too (DeCoRe: unmasked)."),
    random_seeds: int = option(HeadRunConfig, "random_seeds", min=0),
    seed: int = option(HeadRunConfig, "seed"),
    max_new_tokens: int = option(HeadRunConfig, "max_new_tokens", min=1),
    overwrite: bool = option(HeadRunConfig, "overwrite"),
    allow_other_model: bool = option(HeadRunConfig, "allow_other_model"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Faithful-answer rates of base decoding and DeCoRe (retrieval heads vs random heads), with 95 % intervals."""
    from ..decore.experiment import FIGURE_FILE, RESULT_FILE, DecoreRunConfig, run_decore
    from ..niah.prompts import parse_lengths

    with refusing():
        config = DecoreRunConfig(
            model=model, heads=str(heads), out=str(out), source=f"task:{task}" if task else str(prompts), top_k=top_k,
            alphas=[float(a) for a in alpha.split(",") if a.strip()], dynamic=dynamic, normalise=normalise, cap=cap,
            mode=mode, masked_prefill=masked_prefill, random_seeds=random_seeds, seed=seed,
            max_new_tokens=max_new_tokens, device=device, dtype=dtype, overwrite=overwrite,
            allow_other_model=allow_other_model,
        )  # fmt: skip
        items = _items(task, prompts, model, n, parse_lengths(lengths), seed)
    with refusing("decore"):
        result = run_decore(config, items, progress=progress)
    rows = result["conditions"] + [{"name": f"{g} (pooled)", **v} for g, v in result["random_pooled"].items()]
    for row in rows:
        f, m = row.get("faithful"), row.get("memorised")
        if f:
            typer.echo(f"{row['name']:<24} faithful {f['rate']:.3f} [{f['ci95'][0]:.3f}, {f['ci95'][1]:.3f}]"
                       + (f"  memorised {m['rate']:.3f}" if m else ""))
    Console(stderr=True).print(f"wrote {out / RESULT_FILE}" + (f", {out / FIGURE_FILE}" if result["scored"] else ""))
