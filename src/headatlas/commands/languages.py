"""``headatlas languages``: per-language retrieval heads, their sharing, and retrieval-transition heads.

Example::

    headatlas languages --model organism --langs en,de,zh,sw --transitions en:de,en:zh --out runs/langs

Re-running the same command resumes every unfinished detection run.
"""

from __future__ import annotations

import typer
from rich.console import Console

from ..config import ModelConfig
from ..multilingual.config import LanguagesConfig
from .errors import refusing
from .options import from_config


@from_config(model=ModelConfig, config=LanguagesConfig)
def languages_command(model: ModelConfig, config: LanguagesConfig) -> None:
    """Retrieval heads per language, their overlap, and retrieval-transition heads vs retrieval heads."""
    from pathlib import Path

    from ..detect.config import DetectConfig
    from ..model_spec import load_model
    from ..multilingual.study import language_study
    from ..niah import parse_depths, parse_lengths
    from ..prompt_sources import PromptRequest

    console = Console(stderr=True, soft_wrap=True)
    out = Path(config.out)
    with refusing():
        detect = DetectConfig(mode=config.mode, batch_size=config.batch_size, seed=config.seed,
                              alignment=config.alignment, table_rows=10)
        request = PromptRequest(lengths=parse_lengths(config.lengths), depths=parse_depths(config.depths),
                                haystack=config.haystack, needles=config.needles, chat_template=config.chat_template,
                                per_cell=config.per_cell, seed=config.seed)
    loaded, tokenizer, spec = load_model(model.model, dtype=model.dtype, device=model.device,
                                         device_map=model.device_map, attn_implementation=model.attn_implementation)
    with refusing("languages"):  # prompts that cannot be built (a length past the window, no chat template, ...)
        result = language_study(loaded, tokenizer, model.model, spec.max_positions, config.langs, out, detect,
                                request, transitions=config.transitions, top_k=config.top_k, console=console)
    typer.echo((out / "summary.md").read_text())
    if result["failed"]:
        console.print(f"[yellow]some runs found no retrieval: {sorted(result['failed'])}[/]")
