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

import typer
from rich.console import Console

from ..evaluate.config import CompareConfig
from .errors import refusing
from .options import PROGRESS, from_config


@from_config(config=CompareConfig)
def compare_command(config: CompareConfig, progress: bool = PROGRESS) -> None:
    """Compare head sets on lm-eval tasks: unmasked vs top-K of each set vs random heads outside all sets."""
    from ..evaluate.compare import run_compare
    from ..runs import ResumeMismatchError

    with refusing("compare", (ResumeMismatchError, KeyError, ValueError)):
        result = run_compare(config, progress=progress)
    typer.echo(result.markdown)
    Console(stderr=True, soft_wrap=True).print(f"wrote {', '.join(str(p) for p in result.files.values())}")


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
