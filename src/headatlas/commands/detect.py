"""``headatlas detect``: score every head of a model on a NIAH grid (a thin layer over the API).

Examples::

    headatlas detect --model organism --out runs/organism --lengths 200:1000:5 --depths 5
    headatlas detect --model meta-llama/Llama-3.1-8B-Instruct --out runs/llama --mode teacher \\
        --lengths 1000:8000:8 --depths 10 --chat-template --batch-size 4 --dtype bfloat16
    torchrun --nproc_per_node 4 -m headatlas.cli detect --model ... --out runs/llama   # sharded

Rerunning the same command resumes; see docs/detection.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from ..config import ModelConfig, OutConfig
from ..detect.config import DetectConfig, DetectGrid
from .errors import refuse
from .options import from_config


@from_config(model=ModelConfig, grid=DetectGrid, config=DetectConfig, run=OutConfig)
def detect_command(model: ModelConfig, grid: DetectGrid, config: DetectConfig, run: OutConfig) -> None:
    """Detect retrieval heads: the retrieval score of every head over a needle-in-a-haystack grid."""
    from ..detect import DetectionError, NoRetrievalError, PromptError, detect
    from ..model_spec import load_model
    from ..niah import parse_depths, parse_lengths
    from ..prompt_sources import PromptRequest, build_prompts

    console, out = Console(stderr=True, soft_wrap=True), Path(run.out)
    try:
        request = PromptRequest(
            lengths=parse_lengths(grid.lengths) if grid.lengths else None, depths=parse_depths(grid.depths),
            kind=config.kind, lang=grid.lang, source_lang=grid.source_lang, target_lang=grid.target_lang,
            needles=grid.needles, haystack=grid.haystack, chat_template=grid.chat_template, per_cell=grid.per_cell,
            seed=config.seed,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err

    device = model.device
    if device is None and "LOCAL_RANK" in os.environ:  # torchrun / accelerate launch: one GPU per rank
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{os.environ['LOCAL_RANK']}"
    loaded, tokenizer, spec = load_model(model.model, dtype=model.dtype, device=device,
                                         attn_implementation=model.attn_implementation, device_map=model.device_map)
    try:
        prompts = build_prompts(model.model, tokenizer, spec.max_positions, request)
        console.print(f"[bold]{model.model}[/]: {spec.n_layers} layers x {spec.n_heads} heads; {config.scorer} score on "
                      f"{len(prompts)} prompts ({len(request.lengths)} lengths x {len(request.depths)} depths)")
        scores = detect(loaded, tokenizer, prompts, config, out, console=console,
                        results=Console(soft_wrap=True))  # the table to stdout, progress to stderr
    except NoRetrievalError:
        console.print("[bold red]detect failed: no prompt passed the retrieval filter (see above)[/]")
        raise typer.Exit(1) from None
    except (DetectionError, PromptError, ValueError) as err:
        raise refuse("detect", str(err)) from None
    if scores is None:
        return  # a shard without a process group: merge_shards() finishes the run
    console.print(f"wrote {out / 'head_scores.json'}, {out / 'samples.jsonl'}, {out / 'heatmap.png'}")
