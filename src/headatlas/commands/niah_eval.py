"""``headatlas niah-eval``: NIAH accuracy with head sets masked (a thin layer over the API).

Examples::

    headatlas niah-eval --model organism --heads rh=runs/rh/head_scores.json --top-k 6 \\
        --random-seeds 3 --lengths 128,256,512 --depths 5 --out runs/niah-masked
    headatlas niah-eval --model Qwen/Qwen2.5-7B-Instruct --heads rth=runs/rth/head_scores.json \\
        --lang en --target-lang de --chat-template --lengths 1000:8000:8 --out runs/qwen-niah

Rerunning the same command resumes from ``journal.jsonl``; see docs/evaluation.md.
"""

from __future__ import annotations

import typer
from rich.console import Console

from ..evaluate.config import NiahEvalConfig
from .errors import refusing
from .options import PROGRESS, from_config


@from_config(config=NiahEvalConfig)
def niah_eval_command(config: NiahEvalConfig, progress: bool = PROGRESS) -> None:
    """Needle-in-a-haystack exact match and ROUGE-1 per length x depth, unmasked and with head sets masked."""
    from ..evaluate.niah_eval import run_niah_eval
    from ..runs import ResumeMismatchError

    with refusing("niah-eval", (ResumeMismatchError, ValueError)):
        result = run_niah_eval(config, progress=progress)
    typer.echo(result.files["summary"].read_text(encoding="utf-8"))
    out = result.files["summary"].parent
    Console(stderr=True, soft_wrap=True).print(f"wrote {out / 'cells.json'}, {out / 'summary.md'}, {out / 'heatmaps'}/")
