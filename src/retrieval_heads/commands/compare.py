"""``retrieval-heads compare`` and ``retrieval-heads lm-eval`` (thin layers over :mod:`retrieval_heads.evaluate`).

Examples::

    retrieval-heads compare --model organism --heads rh=runs/rh/head_scores.json \\
        --heads rth=runs/rth/head_scores.json --top-k 6 --random-seeds 5 \\
        --tasks organism_mono,organism_cross --out runs/compare --limit 100
    retrieval-heads compare --model meta-llama/Llama-3.1-8B-Instruct --heads rh=... --heads rth=... \\
        --tasks mgsm_native_cot_de,mmlu_prox_de_math,mlqa_de_de,xquad_de --out runs/llama-compare
    retrieval-heads lm-eval run --model masked-hf \\
        --model_args pretrained=organism,heads=runs/rth/head_scores.json,top_k=6 --tasks organism_mono

Rerunning the same ``compare`` command resumes; see docs/evaluation.md.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name or not rest:
            raise typer.BadParameter(f"{what} must be NAME=VALUE, got {v!r}")
        if name in out:
            raise typer.BadParameter(f"{what}: {name!r} given twice")
        out[name] = rest
    return out


def compare_command(
    model: str = typer.Option(..., "--model", help="Hub id, local checkpoint, or a built-in name (organism)."),
    heads: list[str] = typer.Option([], "--heads", help="A head set NAME=head_scores.json (repeat for several)."),
    tasks: str = typer.Option(..., "--tasks", help="Comma-separated lm-eval task or group names."),
    out: Path = typer.Option(..., "--out", help="Output directory (rerun to resume)."),
    top_k: int | None = typer.Option(None, "--top-k", min=1, help="Heads masked per set, and per random control (default: 5 % of the model's heads)."),
    random_seeds: int = typer.Option(5, "--random-seeds", min=0, help="Random controls (seeds 0..n-1), drawn outside every set's top-K."),
    layer_matched: bool = typer.Option(False, "--layer-matched", help="Random controls follow each set's per-layer head counts."),
    mode: str = typer.Option("zero", "--mode", help="zero | mean | uniform."),
    means: str | None = typer.Option(None, "--means", help="Per-head mean outputs (.pt/.safetensors) for --mode mean."),
    limit: float | None = typer.Option(None, "--limit", help="Items per task (or a fraction < 1)."),
    include_path: list[str] = typer.Option([], "--include-path", help="Extra lm-eval task folder (repeatable), e.g. benchmark fixtures."),
    num_fewshot: int | None = typer.Option(None, "--num-fewshot", help="Override the tasks' few-shot count."),
    gen_kwargs: str | None = typer.Option(None, "--gen-kwargs", help="lm-eval generation overrides, e.g. 'max_gen_toks=256'."),
    metric: list[str] = typer.Option([], "--metric", help="TASK=METRIC,FILTER to score a task by (repeatable)."),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="lm-eval batch size."),
    device: str | None = typer.Option(None, "--device", help="cuda, cpu ... (default: CUDA when available)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16."),
    seed: int = typer.Option(1234, "--seed", help="Seed of lm-eval and of the bootstrap."),
    bootstrap: int = typer.Option(2000, "--bootstrap", min=1, help="Bootstrap resamples."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute cells that were made with other settings."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Compare head sets on lm-eval tasks: unmasked vs top-K of each set vs random heads outside all sets."""
    from ..evaluate.compare import CompareConfig, ResumeMismatchError, run_compare

    console = Console(stderr=True)
    try:
        gen = {}
        if gen_kwargs:
            from lm_eval.utils import simple_parse_args_string

            gen = simple_parse_args_string(gen_kwargs)
        config = CompareConfig(
            model=model, tasks=[t.strip() for t in tasks.split(",") if t.strip()], out=str(out),
            heads=_pairs(heads, "--heads"), top_k=top_k, mode=mode, means=means, random_seeds=random_seeds,
            layer_matched=layer_matched, include_path=include_path, limit=limit, num_fewshot=num_fewshot,
            gen_kwargs=gen, metrics=_pairs(metric, "--metric"), batch_size=batch_size, device=device,
            dtype=dtype, seed=seed, n_bootstrap=bootstrap, overwrite=overwrite,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as err:
        raise typer.BadParameter(str(err)) from err
    try:
        result = run_compare(config, progress=progress)
    except (ResumeMismatchError, KeyError, ValueError) as err:
        console.print("[bold red]compare failed:[/]", Text(str(err)))
        raise typer.Exit(1) from None
    typer.echo(result.markdown)
    console.print(f"wrote {', '.join(str(p) for p in result.files.values())}")


def lm_eval_command(ctx: typer.Context) -> None:
    """Run lm-eval's own CLI with the masked-hf backend registered (all arguments are lm-eval's)."""
    from ..evaluate.lm_eval_backend import main

    main(list(ctx.args))


LM_EVAL_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
"""Register with ``app.command("lm-eval", context_settings=LM_EVAL_CONTEXT)(lm_eval_command)``
so that every argument, ``--help`` included, reaches lm-eval."""
