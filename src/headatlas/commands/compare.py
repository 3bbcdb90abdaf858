"""``headatlas compare`` and ``headatlas lm-eval`` (thin layers over :mod:`headatlas.evaluate`).

Examples::

    headatlas compare --model organism --heads rh=runs/rh/head_scores.json \\
        --heads rth=runs/rth/head_scores.json --top-k 6 --random-seeds 5 \\
        --tasks organism_mono,organism_cross --out runs/compare --limit 100
    headatlas compare --model meta-llama/Llama-3.1-8B-Instruct --heads rh=... --heads rth=... \\
        --tasks mgsm_native_cot_de,mmlu_prox_de_math,mlqa_de_de,xquad_de --out runs/llama-compare
    headatlas lm-eval run --model masked-hf \\
        --model_args pretrained=organism,heads=runs/rth/head_scores.json,top_k=6 --tasks organism_mono

Rerunning the same ``compare`` command resumes; see docs/evaluation.md.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..evaluate.compare import CompareConfig
from .errors import refusing
from .options import MaskingOptions, ModelOptions, option


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
    model: str = option(ModelOptions, "model", default=...),
    heads: list[str] = option(MaskingOptions, "heads"),
    tasks: str = option(CompareConfig, "tasks"),
    out: Path = typer.Option(..., "--out", help="Output directory (rerun to resume)."),
    top_k: int | None = option(MaskingOptions, "top_k", min=1),
    random_seeds: int = option(MaskingOptions, "random_seeds", default=5, min=0),
    layer_matched: bool = option(MaskingOptions, "layer_matched"),
    mode: str = option(MaskingOptions, "mode"),
    means: str | None = option(MaskingOptions, "means"),
    limit: float | None = option(CompareConfig, "limit"),
    include_path: list[str] = option(CompareConfig, "include_path"),
    num_fewshot: int | None = option(CompareConfig, "num_fewshot"),
    gen_kwargs: str | None = typer.Option(None, "--gen-kwargs", help="lm-eval generation overrides, e.g. 'max_gen_toks=256'."),
    metric: list[str] = typer.Option([], "--metric", help="TASK=METRIC,FILTER to score a task by (repeatable)."),
    batch_size: int = option(CompareConfig, "batch_size", min=1),
    device: str | None = option(ModelOptions, "device"),
    device_map: str | None = option(ModelOptions, "device_map"),
    dtype: str = option(ModelOptions, "dtype"),
    seed: int = option(CompareConfig, "seed"),
    bootstrap: int = option(CompareConfig, "n_bootstrap", "--bootstrap", min=1),
    overwrite: bool = option(CompareConfig, "overwrite"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Compare head sets on lm-eval tasks: unmasked vs top-K of each set vs random heads outside all sets."""
    from ..evaluate.compare import run_compare
    from ..runs import ResumeMismatchError

    console = Console(stderr=True)
    with refusing(errors=(ValueError, FileNotFoundError)):
        gen = {}
        if gen_kwargs:
            from lm_eval.utils import simple_parse_args_string

            gen = simple_parse_args_string(gen_kwargs)
        config = CompareConfig(
            model=model, tasks=[t.strip() for t in tasks.split(",") if t.strip()], out=str(out),
            heads=_pairs(heads, "--heads"), top_k=top_k, mode=mode, means=means, random_seeds=random_seeds,
            layer_matched=layer_matched, include_path=include_path, limit=limit, num_fewshot=num_fewshot,
            gen_kwargs=gen, metrics=_pairs(metric, "--metric"), batch_size=batch_size, device=device,
            device_map=device_map, dtype=dtype, seed=seed, n_bootstrap=bootstrap, overwrite=overwrite,
        )  # fmt: skip
    with refusing("compare", (ResumeMismatchError, KeyError, ValueError)):
        result = run_compare(config, progress=progress)
    typer.echo(result.markdown)
    console.print(f"wrote {', '.join(str(p) for p in result.files.values())}")


def lm_eval_command(ctx: typer.Context) -> None:
    """Run lm-eval's own CLI with the masked-hf, decore-hf and kv-hf backends registered (all arguments are lm-eval's)."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    from ..decore import lm_eval_backend as _decore  # noqa: F401 - registers "decore-hf"
    from ..evaluate import lm_eval_backend  # noqa: F401 - registers "masked-hf"
    from ..kvcache import lm_eval_backend as _kv  # noqa: F401 - registers "kv-hf"

    sys.argv = ["headatlas lm-eval", *ctx.args]
    cli_evaluate()


LM_EVAL_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
"""Register with ``app.command("lm-eval", context_settings=LM_EVAL_CONTEXT)(lm_eval_command)``
so that every argument, ``--help`` included, reaches lm-eval."""
