"""``retrieval-heads languages``: per-language retrieval heads, their sharing, and retrieval-transition heads.

Example::

    retrieval-heads languages --model organism --langs en,de,zh,sw --transitions en:de,en:zh --out runs/langs

Re-running the same command resumes every unfinished detection run.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def _pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        if ":" not in item:
            raise typer.BadParameter(f"transition {item!r} must be SOURCE:TARGET, e.g. en:de")
        src, tgt = item.split(":", 1)
        pairs.append((src, tgt))
    return pairs


def languages_command(
    model: str = typer.Option("organism", "--model", help="Hub id, local checkpoint, or organism."),
    langs: str = typer.Option("en,de,zh,sw", "--langs", help="Comma-separated languages."),
    out: Path = typer.Option(..., "--out", help="Output directory (resumed when re-run)."),
    transitions: str = typer.Option("", "--transitions", help="SOURCE:TARGET pairs for retrieval-transition heads, e.g. en:de,en:zh."),
    mode: str = typer.Option("teacher", "--mode", help="greedy | teacher."),
    lengths: str = typer.Option("128,256,512,1024", "--lengths", help="Context lengths."),
    depths: str = typer.Option("5", "--depths", help="Needle depths (count or list)."),
    per_cell: int = typer.Option(2, "--per-cell", min=1, help="Built-in model: prompts per length x depth cell."),
    top_k: int = typer.Option(20, "--top-k", min=1, help="K of the top-K sets compared across languages."),
    haystack: str | None = typer.Option(None, "--haystack", help="Haystack source (default: organism or each language)."),
    alignment: str = typer.Option("lexicon", "--alignment", help="Transition alignment: lexicon | span."),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    chat_template: bool = typer.Option(False, "--chat-template"),
    device: str | None = typer.Option(None, "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Retrieval heads per language, their overlap, and retrieval-transition heads vs retrieval heads."""
    from ..detect import DetectConfig
    from ..model_spec import load_model
    from ..multilingual.study import language_study
    from ..niah import parse_depths, parse_lengths
    from ..prompt_sources import PromptRequest

    console = Console(stderr=True)
    try:
        config = DetectConfig(mode=mode, batch_size=batch_size, seed=seed, alignment=alignment, table_rows=10)
        request = PromptRequest(lengths=parse_lengths(lengths), depths=parse_depths(depths), haystack=haystack,
                                chat_template=chat_template, per_cell=per_cell, seed=seed)
        pairs = _pairs(transitions)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    loaded, tokenizer, spec = load_model(model, dtype=dtype, device=device)
    lang_list = [x.strip() for x in langs.split(",") if x.strip()]
    result = language_study(loaded, tokenizer, model, spec.max_positions, lang_list, out, config, request,
                            transitions=pairs, top_k=top_k, console=console)
    console.print((out / "summary.md").read_text())
    if result["failed"]:
        console.print(f"[yellow]some runs found no retrieval: {sorted(result['failed'])}[/]")
