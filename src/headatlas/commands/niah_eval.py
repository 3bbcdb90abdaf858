"""``headatlas niah-eval``: NIAH accuracy with head sets masked (a thin layer over the API).

Examples::

    headatlas niah-eval --model organism --heads rh=runs/rh/head_scores.json --top-k 6 \\
        --random-seeds 3 --lengths 128,256,512 --depths 5 --out runs/niah-masked
    headatlas niah-eval --model Qwen/Qwen2.5-7B-Instruct --heads rth=runs/rth/head_scores.json \\
        --needle-lang en --target-lang de --chat-template --lengths 1000:8000:8 --out runs/qwen-niah

Rerunning the same command resumes from ``journal.jsonl``; see docs/evaluation.md.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..evaluate.niah_eval import NiahEvalConfig
from .compare import _pairs
from .errors import refusing
from .options import GridOptions, MaskingOptions, ModelOptions, option


def niah_eval_command(
    model: str = option(ModelOptions, "model", default=...),
    out: Path = typer.Option(..., "--out", help="Output directory (rerun to resume)."),
    heads: list[str] = option(MaskingOptions, "heads"),
    top_k: int | None = option(MaskingOptions, "top_k", min=1),
    random_seeds: int = option(MaskingOptions, "random_seeds", min=0),
    layer_matched: bool = option(MaskingOptions, "layer_matched"),
    mode: str = option(MaskingOptions, "mode"),
    means: str | None = option(MaskingOptions, "means"),
    lengths: str = option(GridOptions, "lengths"),
    depths: str = option(GridOptions, "depths"),
    per_cell: int = option(GridOptions, "per_cell", min=1),
    haystack: str | None = option(GridOptions, "haystack"),
    needles: str | None = option(GridOptions, "needles"),
    needle_lang: str = option(NiahEvalConfig, "needle_lang"),
    target_lang: str | None = option(NiahEvalConfig, "target_lang"),
    chat_template: bool = option(GridOptions, "chat_template"),
    max_new_tokens: int = option(NiahEvalConfig, "max_new_tokens", min=1),
    batch_size: int = option(NiahEvalConfig, "batch_size", min=1),
    share_prefix: bool = option(NiahEvalConfig, "share_prefix", "--share-prefix/--no-share-prefix"),
    device: str | None = option(ModelOptions, "device"),
    device_map: str | None = option(ModelOptions, "device_map"),
    dtype: str = option(ModelOptions, "dtype"),
    overwrite: bool = option(NiahEvalConfig, "overwrite"),
    allow_other_model: bool = option(NiahEvalConfig, "allow_other_model"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Needle-in-a-haystack exact match and ROUGE-1 per length x depth, unmasked and with head sets masked."""
    from ..evaluate.niah_eval import run_niah_eval
    from ..runs import ResumeMismatchError

    console = Console(stderr=True)
    with refusing(errors=(ValueError, FileNotFoundError)):
        config = NiahEvalConfig(
            model=model, out=str(out), heads=_pairs(heads, "--heads"), top_k=top_k, mode=mode, means=means,
            random_seeds=random_seeds, layer_matched=layer_matched, haystack=haystack,
            needles=needles, needle_lang=needle_lang, target_lang=target_lang, lengths=lengths, depths=depths,
            chat_template=chat_template, per_cell=per_cell, max_new_tokens=max_new_tokens, batch_size=batch_size,
            share_prefix=share_prefix, device=device, device_map=device_map, dtype=dtype, overwrite=overwrite,
            allow_other_model=allow_other_model,
        )  # fmt: skip
    with refusing("niah-eval", (ResumeMismatchError, ValueError)):
        result = run_niah_eval(config, progress=progress)
    typer.echo(result.files["summary"].read_text(encoding="utf-8"))
    console.print(f"wrote {out / 'cells.json'}, {out / 'summary.md'}, {out / 'heatmaps'}/")
