"""``headatlas kv-compress``: NIAH exact match against KV memory with the retrieval KV heads kept whole.

Example::

    headatlas kv-compress --model organism --heads runs/rh/head_scores.json --budgets 1,2,4,8 \\
        --sink 4 --window 64 --lengths 1024,1536,2000 --out runs/kv

Rerunning the same command resumes from ``journal.jsonl``; see docs/kv-compression.md.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..runs import HeadRunConfig
from .errors import refusing
from .options import GridOptions, ModelOptions, option


def _counts(text: str) -> list[int]:
    """``--needle-counts`` as integers; one line naming the option and value otherwise."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give needle counts as integers, e.g. 1,4,8",
                                 param_hint="--needle-counts") from None


def kv_compress_command(
    model: str = option(ModelOptions, "model", default=...),
    device: str | None = option(ModelOptions, "device"),
    dtype: str = option(ModelOptions, "dtype"),
    heads: Path = option(HeadRunConfig, "heads", exists=True, dir_okay=False),
    out: Path = typer.Option(..., "--out", help="Output directory (rerun to resume)."),
    top_k: int | None = option(HeadRunConfig, "top_k", min=1),
    budgets: str = typer.Option("1,2,4,8", "--budgets", help="KV heads kept whole (in total) for the score-ranked curve, e.g. '1,2,4,8'."),
    per_layer: bool = typer.Option(False, "--per-layer", help="--budgets count KV heads per layer (1 .. n_kv-1) instead of in total."),
    aggregate: str = typer.Option("max", "--aggregate", help="Score of a KV head for the budgets: max | mean of its query heads."),
    sink: int = typer.Option(4, "--sink", min=0, help="Attention-sink tokens every streaming KV head keeps."),
    window: int = typer.Option(64, "--window", min=1, help="Recent tokens every streaming KV head keeps."),
    lengths: str = option(GridOptions, "lengths", default="1024,1536,2000"),
    depths: str = option(GridOptions, "depths"),
    per_cell: int = option(GridOptions, "per_cell", min=1),
    random_seeds: int = option(HeadRunConfig, "random_seeds", min=0),
    seed: int = option(HeadRunConfig, "seed"),
    max_new_tokens: int = option(HeadRunConfig, "max_new_tokens", min=1),
    prefill_chunk: int = typer.Option(256, "--prefill-chunk", min=1, help="Prompt tokens per prefill forward."),
    needle_counts: str = typer.Option("1", "--needle-counts", help="Needles a prompt, e.g. '1,4,8' (> 1: multi-key NIAH, the question asks one; built-in models)."),
    overwrite: bool = option(HeadRunConfig, "overwrite"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Keep the KV heads holding the retrieval heads whole, stream the rest (sink + window): accuracy vs KV memory."""
    from ..kvcache.experiment import FIGURE_FILE, RESULT_FILE, KVCompressConfig, run_kv_compress
    from ..niah.prompts import parse_depths, parse_lengths

    with refusing():
        config = KVCompressConfig(
            model=model, heads=str(heads), out=str(out), top_k=top_k,
            budgets=[int(b) for b in budgets.split(",") if b.strip()], aggregate=aggregate, per_layer=per_layer, sink=sink,
            window=window, lengths=parse_lengths(lengths), depths=parse_depths(depths), per_cell=per_cell,
            random_seeds=random_seeds, seed=seed, max_new_tokens=max_new_tokens, prefill_chunk=prefill_chunk,
            device=device, dtype=dtype, overwrite=overwrite, needle_counts=_counts(needle_counts),
        )  # fmt: skip
    with refusing("kv-compress"):
        result = run_kv_compress(config, progress=progress)
    for n, summary in result.get("by_needles", {"1": result}).items():
        for row in summary["conditions"]:
            speed = f"  {row['tokens_per_s']:7.0f} tok/s" if row.get("tokens_per_s") else ""
            typer.echo(f"{n:>2} needle(s) {row['name']:<22} acc {row['accuracy']:.3f}  KV {row['kv_bytes'] / 2**20:8.2f} "
                       f"MiB ({100 * row['kv_share']:5.1f} %){speed}")
    Console(stderr=True).print(f"wrote {out / RESULT_FILE}, {out / FIGURE_FILE}")
