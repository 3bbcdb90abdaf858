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

from ..detect.config import DetectConfig
from .errors import refuse
from .options import GridOptions, ModelOptions, option


def detect_command(
    model: str = option(ModelOptions, "model", default=...),
    out: Path = typer.Option(..., "--out", help="Output directory (resumed when it holds the same run)."),
    scorer: str = option(DetectConfig, "scorer"),
    kind: str = option(DetectConfig, "kind"),
    source_lang: str | None = typer.Option(None, "--source-lang", help="Transition: language of the needle (and haystack)."),
    target_lang: str | None = typer.Option(None, "--target-lang", help="Transition: language the answer is asked in."),
    alignment: str = option(DetectConfig, "alignment"),
    lexicon: str | None = option(DetectConfig, "lexicon"),
    per_cell: int = option(GridOptions, "per_cell", default=3, min=1),
    mode: str = option(DetectConfig, "mode"),
    lengths: str | None = option(GridOptions, "lengths", default=None),  # None: default_lengths(window)
    depths: str = option(GridOptions, "depths", default="10"),
    needles: str | None = option(GridOptions, "needles"),
    haystack: str | None = option(GridOptions, "haystack"),
    lang: str = typer.Option("en", "--lang", help="Language of the haystack and needles."),
    chat_template: bool = option(GridOptions, "chat_template"),
    batch_size: str = option(DetectConfig, "batch_size"),
    share_prefix: bool = option(DetectConfig, "share_prefix", "--share-prefix/--no-share-prefix"),
    dedup: bool = option(DetectConfig, "dedup"),
    max_new_tokens: int = option(DetectConfig, "max_new_tokens", min=1),
    rouge_threshold: float = option(DetectConfig, "rouge_threshold"),
    seed: int = option(DetectConfig, "seed"),
    table_rows: int = option(DetectConfig, "table_rows", min=0),
    device: str | None = option(ModelOptions, "device"),
    device_map: str | None = option(ModelOptions, "device_map"),
    dtype: str = option(ModelOptions, "dtype"),
    attn_implementation: str | None = option(ModelOptions, "attn_implementation"),
    progress: bool = option(DetectConfig, "progress", "--progress/--no-progress"),
    null_query: str = option(DetectConfig, "null_query"),
    repeats: int = option(DetectConfig, "repeats", min=1),
    repeat_tokens: int = option(DetectConfig, "repeat_tokens", min=0),
    duo_steps: int = option(DetectConfig, "duo_steps", min=1),
    duo_sink: int = option(DetectConfig, "duo_sink", min=0),
    duo_window: int = option(DetectConfig, "duo_window", min=0),
    duo_reg: float = option(DetectConfig, "duo_reg"),
    duo_lr: float = option(DetectConfig, "duo_lr"),
) -> None:
    """Detect retrieval heads: the retrieval score of every head over a needle-in-a-haystack grid."""
    from ..detect import DetectionError, NoRetrievalError, PromptError, detect
    from ..model_spec import load_model
    from ..niah import parse_depths, parse_lengths
    from ..prompt_sources import PromptRequest, build_prompts

    console = Console(stderr=True)
    try:
        config = DetectConfig(
            scorer=scorer, kind=kind, alignment=alignment, lexicon=lexicon, null_query=null_query, repeats=repeats,
            repeat_tokens=repeat_tokens, duo_steps=duo_steps, duo_sink=duo_sink, duo_window=duo_window,
            duo_reg=duo_reg, duo_lr=duo_lr,
            mode=mode, max_new_tokens=max_new_tokens, rouge_threshold=rouge_threshold, dedup=dedup,
            batch_size=batch_size, share_prefix=share_prefix, seed=seed, table_rows=table_rows, progress=progress,
        )
        request = PromptRequest(
            lengths=parse_lengths(lengths) if lengths else None, depths=parse_depths(depths), kind=config.kind, lang=lang,
            source_lang=source_lang, target_lang=target_lang, needles=needles, haystack=haystack,
            chat_template=chat_template, per_cell=per_cell, seed=seed,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err

    if device is None and "LOCAL_RANK" in os.environ:  # torchrun / accelerate launch: one GPU per rank
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{os.environ['LOCAL_RANK']}"
    loaded, tokenizer, spec = load_model(model, dtype=dtype, device=device, attn_implementation=attn_implementation,
                                         device_map=device_map)
    try:
        prompts = build_prompts(model, tokenizer, spec.max_positions, request)
        console.print(f"[bold]{model}[/]: {spec.n_layers} layers x {spec.n_heads} heads; {config.scorer} score on "
                      f"{len(prompts)} prompts ({len(request.lengths)} lengths x {len(request.depths)} depths)")
        scores = detect(loaded, tokenizer, prompts, config, out, console=console)
    except NoRetrievalError:
        console.print("[bold red]detect failed: no prompt passed the retrieval filter (see above)[/]")
        raise typer.Exit(1) from None
    except (DetectionError, PromptError, ValueError) as err:
        raise refuse("detect", str(err)) from None
    if scores is None:
        return  # a shard without a process group: merge_shards() finishes the run
    console.print(f"wrote {out / 'head_scores.json'}, {out / 'samples.jsonl'}, {out / 'heatmap.png'}")
