"""``retrieval-heads niah-eval``: NIAH accuracy with head sets masked (a thin layer over the API).

Examples::

    retrieval-heads niah-eval --model organism --heads rh=runs/rh/head_scores.json --top-k 6 \\
        --random-seeds 3 --lengths 128,256,512 --depths 5 --out runs/niah-masked
    retrieval-heads niah-eval --model Qwen/Qwen2.5-7B-Instruct --heads rth=runs/rth/head_scores.json \\
        --needle-lang en --target-lang de --chat-template --lengths 1000:8000:8 --out runs/qwen-niah

Rerunning the same command resumes from ``journal.jsonl``; see docs/evaluation.md.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from .compare import _pairs


def niah_eval_command(
    model: str = typer.Option(..., "--model", help="Hub id, local checkpoint, or a built-in name (organism)."),
    out: Path = typer.Option(..., "--out", help="Output directory (rerun to resume)."),
    heads: list[str] = typer.Option([], "--heads", help="A head set NAME=head_scores.json (repeat for several)."),
    top_k: int | None = typer.Option(None, "--top-k", min=1, help="Heads masked per set, and per random control (default: 5 % of the model's heads)."),
    random_seeds: int = typer.Option(0, "--random-seeds", min=0, help="Random controls drawn outside every set's top-K."),
    layer_matched: bool = typer.Option(False, "--layer-matched", help="Random controls follow each set's per-layer head counts."),
    mode: str = typer.Option("zero", "--mode", help="zero | mean | uniform."),
    means: str | None = typer.Option(None, "--means", help="Per-head mean outputs (.pt/.safetensors) for --mode mean."),
    lengths: str = typer.Option("256,512,1024", "--lengths", help="Context lengths: 'start:stop:count' or '256,512'."),
    depths: str = typer.Option("5", "--depths", help="Needle depths: a count (ends included) or '0,0.5,1'."),
    haystack: str | None = typer.Option(None, "--haystack", help="Built-in language, folder, file, dataset:NAME or organism (default: organism for the built-in model, else --needle-lang)."),
    needles: str | None = typer.Option(None, "--needles", help="Needles JSONL (default: the built-in needles of --needle-lang)."),
    needle_lang: str = typer.Option("en", "--needle-lang", help="Language of the haystack and needles."),
    target_lang: str | None = typer.Option(None, "--target-lang", help="Cross-lingual: ask and expect the answer in this language."),
    chat_template: bool = typer.Option(False, "--chat-template", help="Wrap prompts in the tokenizer's chat template."),
    max_new_tokens: int = typer.Option(50, "--max-new-tokens", min=1, help="Most tokens generated per answer."),
    device: str | None = typer.Option(None, "--device", help="cuda, cpu ... (default: CUDA when available)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard answers of an earlier run in --out made with other settings."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Needle-in-a-haystack exact match and ROUGE-1 per length x depth, unmasked and with head sets masked."""
    from ..evaluate.compare import ResumeMismatchError
    from ..evaluate.niah_eval import NiahEvalConfig, run_niah_eval

    console = Console(stderr=True)
    try:
        config = NiahEvalConfig(
            model=model, out=str(out), heads=_pairs(heads, "--heads"), top_k=top_k, mode=mode, means=means,
            random_seeds=random_seeds, layer_matched=layer_matched, haystack=haystack,
            needles=needles, needle_lang=needle_lang, target_lang=target_lang, lengths=lengths, depths=depths,
            chat_template=chat_template, max_new_tokens=max_new_tokens, device=device, dtype=dtype,
            overwrite=overwrite,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as err:
        raise typer.BadParameter(str(err)) from err
    try:
        result = run_niah_eval(config, progress=progress)
    except (ResumeMismatchError, ValueError) as err:
        console.print("[bold red]niah-eval failed:[/]", Text(str(err)))
        raise typer.Exit(1) from None
    typer.echo(result.files["summary"].read_text(encoding="utf-8"))
    console.print(f"wrote {out / 'cells.json'}, {out / 'summary.md'}, {out / 'heatmaps'}/")
