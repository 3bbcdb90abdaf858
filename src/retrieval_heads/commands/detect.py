"""``retrieval-heads detect``: score every head of a model on a NIAH grid (a thin layer over the API).

Examples::

    retrieval-heads detect --model organism --out runs/organism --lengths 200:1000:5 --depths 5
    retrieval-heads detect --model meta-llama/Llama-3.1-8B-Instruct --out runs/llama --mode teacher \\
        --lengths 1000:8000:8 --depths 10 --chat-template --batch-size 4 --dtype bfloat16
    torchrun --nproc_per_node 4 -m retrieval_heads.cli detect --model ... --out runs/llama   # sharded

Rerunning the same command resumes; see docs/detection.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text


def detect_command(
    model: str = typer.Option(..., "--model", help="Hub id, local checkpoint, or a built-in name (organism)."),
    out: Path = typer.Option(..., "--out", help="Output directory (resumed when it holds the same run)."),
    kind: str = typer.Option("retrieval", "--kind", help="retrieval (copy events) | transition (needle in --source-lang, answer in --target-lang)."),
    source_lang: str | None = typer.Option(None, "--source-lang", help="Transition: language of the needle (and haystack)."),
    target_lang: str | None = typer.Option(None, "--target-lang", help="Transition: language the answer is asked in."),
    alignment: str = typer.Option("lexicon", "--alignment", help="Transition: lexicon (aligned word pairs) | span (pivot-free)."),
    lexicon: str | None = typer.Option(None, "--lexicon", help="Transition: multilingual lexicon JSONL (default: built-in CLDR)."),
    per_cell: int = typer.Option(3, "--per-cell", min=1, help="Built-in model: prompts per length x depth cell."),
    mode: str = typer.Option("greedy", "--mode", help="greedy (decode and score) | teacher (one forward over prompt + answer)."),
    lengths: str | None = typer.Option(None, "--lengths", help="Context lengths: 'start:stop:count' or '1000,2000' (default: 1000:8000:8 scaled to fit the model's window)."),
    depths: str = typer.Option("10", "--depths", help="Needle depths: a count (evenly spaced, ends included) or '0,0.5,1'."),
    needles: str | None = typer.Option(None, "--needles", help="Needles JSONL file (default: the built-in needles of --lang)."),
    haystack: str | None = typer.Option(None, "--haystack", help="Built-in language, a directory or file, dataset:NAME[:CONFIG], or organism (default: organism for the built-in model, else --lang)."),
    lang: str = typer.Option("en", "--lang", help="Language of the haystack and needles."),
    chat_template: bool = typer.Option(False, "--chat-template", help="Wrap prompts in the tokenizer's chat template."),
    batch_size: str = typer.Option("auto", "--batch-size", help="Prompts per forward, or auto: what the GPU's free memory holds (1 on CPU). Results do not depend on it."),
    share_prefix: bool = typer.Option(True, "--share-prefix/--no-share-prefix", help="Run the prefix that prompts of one haystack share once (same scores)."),
    dedup: bool = typer.Option(False, "--dedup", help="Count each answer position once per head and prompt (score <= 1)."),
    max_new_tokens: int = typer.Option(50, "--max-new-tokens", min=1, help="Greedy mode: most tokens decoded."),
    rouge_threshold: float = typer.Option(0.5, "--rouge-threshold", help="A prompt counts above this ROUGE-1 recall (teacher: token accuracy)."),
    seed: int = typer.Option(0, "--seed", help="Seed (recorded in the outputs)."),
    table_rows: int = typer.Option(20, "--table-rows", min=0, help="Rows of the top-heads table printed at the end."),
    device: str | None = typer.Option(None, "--device", help="cuda, cuda:1, cpu ... (default: CUDA when available)."),
    device_map: str | None = typer.Option(None, "--device-map", help="auto: split a model larger than one GPU over the GPUs and CPU (accelerate); replaces --device."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16."),
    attn_implementation: str | None = typer.Option(None, "--attn-implementation", help="Backend to wrap: sdpa (default), eager, flash_attention_2."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with ETA."),
) -> None:
    """Detect retrieval heads: the retrieval score of every head over a needle-in-a-haystack grid."""
    from ..detect import DetectConfig, DetectionError, NoRetrievalError, PromptError, detect
    from ..model_spec import load_model
    from ..niah import parse_depths, parse_lengths
    from ..prompt_sources import PromptRequest, build_prompts

    console = Console(stderr=True)
    try:
        config = DetectConfig(
            kind=kind, alignment=alignment, lexicon=lexicon,
            mode=mode, max_new_tokens=max_new_tokens, rouge_threshold=rouge_threshold, dedup=dedup,
            batch_size=batch_size, share_prefix=share_prefix, seed=seed, table_rows=table_rows, progress=progress,
        )
        request = PromptRequest(
            lengths=parse_lengths(lengths) if lengths else None, depths=parse_depths(depths), kind=kind, lang=lang,
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
        console.print(f"[bold]{model}[/]: {spec.n_layers} layers x {spec.n_heads} heads; {kind} score on "
                      f"{len(prompts)} prompts ({len(request.lengths)} lengths x {len(request.depths)} depths)")
        scores = detect(loaded, tokenizer, prompts, config, out, console=console)
    except NoRetrievalError:
        console.print("[bold red]detect failed: no prompt passed the retrieval filter (see above)[/]")
        raise typer.Exit(1) from None
    except (DetectionError, PromptError, ValueError) as err:
        console.print("[bold red]detect failed:[/]", Text(str(err)))
        raise typer.Exit(1) from None
    if scores is None:
        return  # a shard without a process group: merge_shards() finishes the run
    console.print(f"wrote {out / 'head_scores.json'}, {out / 'samples.jsonl'}, {out / 'heatmap.png'}")
