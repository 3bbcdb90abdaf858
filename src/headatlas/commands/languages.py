"""``headatlas languages``: per-language retrieval heads, their sharing, and retrieval-transition heads.

Example::

    headatlas languages --model organism --langs en,de,zh,sw --transitions en:de,en:zh --out runs/langs

Re-running the same command resumes every unfinished detection run.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..detect.config import DetectConfig
from .errors import refusing
from .options import GridOptions, ModelOptions, option


def _pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        if ":" not in item:
            raise typer.BadParameter(f"transition {item!r} must be SOURCE:TARGET, e.g. en:de")
        src, tgt = item.split(":", 1)
        pairs.append((src, tgt))
    return pairs


def languages_command(
    model: str = option(ModelOptions, "model"),
    langs: str = typer.Option("en,de,zh,sw", "--langs", help="Comma-separated languages."),
    out: Path = typer.Option(..., "--out", help="Output directory (resumed when re-run)."),
    transitions: str = typer.Option("", "--transitions", help="SOURCE:TARGET pairs for retrieval-transition heads, e.g. en:de,en:zh."),
    mode: str = option(DetectConfig, "mode", default="teacher"),
    lengths: str = option(GridOptions, "lengths", default="128,256,512,1024"),
    depths: str = option(GridOptions, "depths"),
    per_cell: int = option(GridOptions, "per_cell", min=1),
    top_k: int = typer.Option(20, "--top-k", min=1, help="K of the top-K sets compared across languages."),
    haystack: str | None = option(GridOptions, "haystack"),
    alignment: str = option(DetectConfig, "alignment"),
    batch_size: int = option(GridOptions, "batch_size", default=4, min=1),
    chat_template: bool = option(GridOptions, "chat_template"),
    device: str | None = option(ModelOptions, "device"),
    device_map: str | None = option(ModelOptions, "device_map"),
    dtype: str = option(ModelOptions, "dtype"),
    seed: int = option(GridOptions, "seed"),
) -> None:
    """Retrieval heads per language, their overlap, and retrieval-transition heads vs retrieval heads."""
    from ..model_spec import load_model
    from ..multilingual.study import language_study
    from ..niah import parse_depths, parse_lengths
    from ..prompt_sources import PromptRequest

    console = Console(stderr=True)
    with refusing():
        config = DetectConfig(mode=mode, batch_size=batch_size, seed=seed, alignment=alignment, table_rows=10)
        request = PromptRequest(lengths=parse_lengths(lengths), depths=parse_depths(depths), haystack=haystack,
                                chat_template=chat_template, per_cell=per_cell, seed=seed)
        pairs = _pairs(transitions)
    loaded, tokenizer, spec = load_model(model, dtype=dtype, device=device, device_map=device_map)
    lang_list = [x.strip() for x in langs.split(",") if x.strip()]
    with refusing("languages"):  # prompts that cannot be built (a length past the window, no chat template, ...)
        result = language_study(loaded, tokenizer, model, spec.max_positions, lang_list, out, config, request,
                                transitions=pairs, top_k=top_k, console=console)
    console.print((out / "summary.md").read_text())
    if result["failed"]:
        console.print(f"[yellow]some runs found no retrieval: {sorted(result['failed'])}[/]")
