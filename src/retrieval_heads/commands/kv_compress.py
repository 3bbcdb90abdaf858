"""``retrieval-heads kv-compress``: NIAH exact match against KV memory with the retrieval KV heads kept whole.

Example::

    retrieval-heads kv-compress --model organism --heads runs/rh/head_scores.json --budgets 1,2,4,8 \\
        --sink 4 --window 64 --lengths 1024,1536,2000 --out runs/kv

Rerunning the same command resumes from ``journal.jsonl``; see docs/kv-compression.md.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text


def kv_compress_command(
    model: str = typer.Option(..., "--model", help="Hub id, local checkpoint, or a built-in name (organism)."),
    heads: Path = typer.Option(..., "--heads", help="head_scores.json of the model (from `detect`)."),
    out: Path = typer.Option(..., "--out", help="Output directory (rerun to resume)."),
    top_k: int | None = typer.Option(None, "--top-k", min=1, help="Retrieval heads whose KV heads stay whole (default: 5 % of heads)."),
    budgets: str = typer.Option("1,2,4,8", "--budgets", help="KV heads kept whole (in total) for the score-ranked curve, e.g. '1,2,4,8'."),
    per_layer: bool = typer.Option(False, "--per-layer", help="--budgets count KV heads per layer (1 .. n_kv-1) instead of in total."),
    aggregate: str = typer.Option("max", "--aggregate", help="Score of a KV head for the budgets: max | mean of its query heads."),
    sink: int = typer.Option(4, "--sink", min=0, help="Attention-sink tokens every streaming KV head keeps."),
    window: int = typer.Option(64, "--window", min=1, help="Recent tokens every streaming KV head keeps."),
    lengths: str = typer.Option("1024,1536,2000", "--lengths", help="Context lengths: 'start:stop:count' or '1024,2000'."),
    depths: str = typer.Option("5", "--depths", help="Needle depths: a count (ends included) or '0,0.5,1'."),
    per_cell: int = typer.Option(2, "--per-cell", min=1, help="Prompts per length x depth cell."),
    random_seeds: int = typer.Option(3, "--random-seeds", min=0, help="Random KV-head controls per budget."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompts and the first random control."),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", min=1, help="Most tokens generated per answer."),
    prefill_chunk: int = typer.Option(256, "--prefill-chunk", min=1, help="Prompt tokens per prefill forward."),
    device: str | None = typer.Option(None, "--device", help="cuda, cpu ... (default: CUDA when available)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard answers of an earlier run in --out made with other settings."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Keep the KV heads holding the retrieval heads whole, stream the rest (sink + window): accuracy vs KV memory."""
    from ..heads import HeadScoreFileError
    from ..kvcache.experiment import FIGURE_FILE, RESULT_FILE, KVCompressConfig, run_kv_compress
    from ..kvcache.plan import AGGREGATES
    from ..niah.prompts import parse_depths, parse_lengths
    from ..runs import ResumeMismatchError

    console = Console(stderr=True)
    if aggregate not in AGGREGATES:
        raise typer.BadParameter(f"--aggregate must be one of {AGGREGATES}")
    if not heads.is_file():
        raise typer.BadParameter(f"--heads {heads}: no such file")
    try:
        config = KVCompressConfig(
            model=model, heads=str(heads), out=str(out), top_k=top_k,
            budgets=[int(b) for b in budgets.split(",") if b.strip()], aggregate=aggregate, per_layer=per_layer, sink=sink,
            window=window, lengths=parse_lengths(lengths), depths=parse_depths(depths), per_cell=per_cell,
            random_seeds=random_seeds, seed=seed, max_new_tokens=max_new_tokens, prefill_chunk=prefill_chunk,
            device=device, dtype=dtype, overwrite=overwrite,
        )  # fmt: skip
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    try:
        result = run_kv_compress(config, progress=progress)
    except (ResumeMismatchError, HeadScoreFileError, ValueError) as err:
        console.print("[bold red]kv-compress failed:[/]", Text(str(err)))
        raise typer.Exit(1) from None
    for row in result["conditions"]:
        typer.echo(f"{row['name']:<22} acc {row['accuracy']:.3f}  KV {row['kv_bytes'] / 2**20:8.2f} MiB "
                   f"({100 * row['kv_share']:5.1f} %)")
    console.print(f"wrote {out / RESULT_FILE}, {out / FIGURE_FILE}")
