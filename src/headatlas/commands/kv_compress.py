"""``headatlas kv-compress``: NIAH exact match against KV memory with the retrieval KV heads kept whole.

Example::

    headatlas kv-compress --model organism --heads runs/rh/head_scores.json --budgets 1,2,4,8 \\
        --sink 4 --window 64 --lengths 1024,1536,2000 --out runs/kv

Rerunning the same command resumes from ``journal.jsonl``; see docs/kv-compression.md.
"""

from __future__ import annotations

import typer
from rich.console import Console

from ..kvcache.experiment import KVCompressConfig
from .errors import refusing
from .options import PROGRESS, from_config


@from_config(config=KVCompressConfig)
def kv_compress_command(config: KVCompressConfig, progress: bool = PROGRESS) -> None:
    """Keep the KV heads holding the retrieval heads whole, stream the rest (sink + window): accuracy vs KV memory."""
    from ..kvcache.experiment import FIGURE_FILE, RESULT_FILE, run_kv_compress

    with refusing("kv-compress"):
        result = run_kv_compress(config, progress=progress)
    for n, summary in result.get("by_needles", {"1": result}).items():
        for row in summary["conditions"]:
            speed = f"  {row['tokens_per_s']:7.0f} tok/s" if row.get("tokens_per_s") else ""
            typer.echo(f"{n:>2} needle(s) {row['name']:<22} acc {row['accuracy']:.3f}  KV {row['kv_bytes'] / 2**20:8.2f} "
                       f"MiB ({100 * row['kv_share']:5.1f} %){speed}")
    Console(stderr=True, soft_wrap=True).print(f"wrote {config.out}/{RESULT_FILE}, {config.out}/{FIGURE_FILE}")
