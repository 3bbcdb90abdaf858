"""``retrieval-heads retmask``: ablate, pairs, train, evaluate (a thin layer over :mod:`retrieval_heads.retmask`).

::

    retrieval-heads retmask ablate   --model organism --heads runs/detect/head_scores.json --top-k 8 --out runs/ablated
    retrieval-heads retmask pairs    --model organism --heads runs/detect/head_scores.json --top-k 8 \\
                                     --prompts prompts.jsonl --out runs/pairs.jsonl
    retrieval-heads retmask train    --model organism --pairs runs/pairs.jsonl --out runs/retmask --lora
    retrieval-heads retmask evaluate --base organism --tuned runs/retmask --heads runs/detect/head_scores.json \\
                                     --out runs/retmask_eval
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

retmask_app = typer.Typer(
    help="RetMask: DPO with the retrieval-heads-ablated model's responses as the rejected ones.",
    no_args_is_help=True,
)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model: hub id, local path or 'organism'.")]
HeadsOpt = Annotated[Path, typer.Option("--heads", help="head_scores.json written by detect.", exists=True)]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="Mask the K best-scoring heads (default: 5 % of all heads).")]
ThresholdOpt = Annotated[float | None, typer.Option("--threshold", help="Mask heads scoring above T (paper: 0.1).")]
RandomOpt = Annotated[
    int | None,
    typer.Option("--random-control", help="Control: mask as many random heads (outside the selection), this seed."),
]


def _load_heads(model_name: str, heads_file: Path, top_k: int | None, threshold: float | None,
                random_control: int | None):  # noqa: ANN202
    from ..heads import HeadScoreFileError
    from ..model_spec import load_model
    from ..selection import HeadSelection

    try:
        selection = HeadSelection(scores=heads_file, top_k=top_k, threshold=threshold, random_seed=random_control)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    model, tokenizer, spec = load_model(model_name)
    try:
        heads = selection.resolve(spec.n_layers, spec.n_heads)
    except HeadScoreFileError as err:
        raise typer.BadParameter(str(err)) from err
    if not heads:
        raise typer.BadParameter("the selection is empty: no head passes --threshold")
    return model, tokenizer, heads, {**selection.to_json(), "masked": [str(h) for h in heads]}


@retmask_app.command("ablate")
def ablate(
    model: ModelOpt,
    heads: HeadsOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the ablated checkpoint.")],
    top_k: TopKOpt = None,
    threshold: ThresholdOpt = None,
    random_control: RandomOpt = None,
) -> None:
    """Save a checkpoint with the selected heads zeroed in the output projection (any engine can serve it)."""
    from ..masking import save_ablated_model

    loaded, tokenizer, chosen, info = _load_heads(model, heads, top_k, threshold, random_control)
    save_ablated_model(loaded, chosen, out, tokenizer, extra_meta={"selection": info})
    typer.echo(f"ablated checkpoint ({len(chosen)} heads zeroed: {', '.join(map(str, chosen))}) -> {out}")


@retmask_app.command("pairs")
def pairs(
    model: ModelOpt,
    heads: HeadsOpt,
    prompts: Annotated[str, typer.Option("--prompts", help="JSONL of {prompt|messages}, or dataset:NAME[:split].")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output pairs JSONL (also the resume journal).")],
    top_k: TopKOpt = None,
    threshold: ThresholdOpt = None,
    random_control: RandomOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per response.")] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (paper: 0.6).")] = 0.6,
    top_p: Annotated[float, typer.Option(help="Nucleus mass (paper: 1.0).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Base seed; each prompt's seed derives from it.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call.")] = 8,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable), e.g. --stop '\\n'.")] = None,
    independent_seeds: Annotated[
        bool, typer.Option(help="Sample chosen and rejected with different random streams.")
    ] = False,
    max_prompt_tokens: Annotated[int | None, typer.Option(help="Drop longer prompts.")] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N prompts.")] = None,
    engine: Annotated[str, typer.Option(help="transformers or vllm.")] = "transformers",
) -> None:
    """Sample chosen (original) and rejected (heads zeroed) responses; write TRL preference pairs."""
    from ..artifacts import ResumeMismatchError
    from ..retmask.pairs import PairConfig, generate_pairs, load_prompts

    stops = tuple(s.encode().decode("unicode_escape") for s in (stop or []))  # "\\n" on a shell -> newline
    config = PairConfig(
        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
        stop=stops, same_seed_for_both=not independent_seeds, max_prompt_tokens=max_prompt_tokens, engine=engine,
    )
    records = load_prompts(prompts, limit=limit)
    loaded, tokenizer, chosen, info = _load_heads(model, heads, top_k, threshold, random_control)
    try:
        stats = generate_pairs(loaded, tokenizer, chosen, records, config, out)
    except ResumeMismatchError as err:  # the journal at --out holds other heads, settings or weights
        typer.secho(f"retmask pairs: {err}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"{stats.n_pairs} pairs from {stats.n_prompts} prompts ({stats.n_resumed} resumed); "
        f"dropped {stats.n_dropped}: {json.dumps(stats.dropped)} -> {out}"
    )


@retmask_app.command("train")
def train(
    model: ModelOpt,
    pairs: Annotated[Path, typer.Option("--pairs", help="Pairs JSONL from `retmask pairs`.", exists=True)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    lora: Annotated[bool, typer.Option("--lora/--full", help="LoRA adapter or full fine-tuning (paper).")] = False,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (paper: 5e-7).")] = 5e-7,
    epochs: Annotated[float, typer.Option("--epochs", help="Epochs (paper: 2).")] = 2.0,
    beta: Annotated[float, typer.Option(help="DPO beta (paper: 0.1).")] = 0.1,
    loss_type: Annotated[str, typer.Option(help="TRL DPO loss (paper: sigmoid).")] = "sigmoid",
    batch_size: Annotated[int, typer.Option(help="Pairs per device per micro-batch.")] = 4,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimiser step.")] = 4,
    max_length: Annotated[int | None, typer.Option(help="Max prompt+response tokens (default: no cut).")] = None,
    max_steps: Annotated[int, typer.Option(help="Stop after N steps (> 0 overrides --epochs).")] = -1,
    warmup_ratio: Annotated[float, typer.Option(help="Warm-up fraction of the steps.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 42,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 32,
    lora_targets: Annotated[str, typer.Option(help="'all-linear' or comma-separated module names.")] = "all-linear",
    merge_lora: Annotated[bool, typer.Option(help="Also save the merged model in OUT/merged.")] = False,
    bf16: Annotated[str, typer.Option(help="auto, true or false.")] = "auto",
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations (long prompts).")] = True,
    dpo_overrides: Annotated[str, typer.Option(help="Other DPOConfig fields as JSON, e.g. '{\"save_strategy\": \"epoch\"}'.")] = "",
) -> None:
    """DPO on the pairs with TRL (full or LoRA); under `accelerate launch` on as many GPUs as it gives."""
    from ..retmask.train import RetMaskTrainConfig, train_retmask

    config = RetMaskTrainConfig(
        loss_type=loss_type, beta=beta, max_length=max_length, learning_rate=lr, warmup_ratio=warmup_ratio,
        num_train_epochs=epochs, max_steps=max_steps, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum, use_lora=lora, lora_r=lora_r, lora_alpha=lora_alpha,
        lora_target_modules=lora_targets, merge_lora=merge_lora, seed=seed, bf16=bf16,
        gradient_checkpointing=gradient_checkpointing, dpo_overrides=dpo_overrides,  # type: ignore[arg-type]
    )
    result = train_retmask(model, pairs, out, config)
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    first, last = (f"{losses[0]:.4f}", f"{losses[-1]:.4f}") if losses else ("-", "-")
    typer.echo(f"trained on {result.n_pairs} pairs; DPO loss {first} -> {last}; saved to {result.out_dir}")


@retmask_app.command("evaluate")
def evaluate(
    base: Annotated[str, typer.Option("--base", help="Base model: path, hub id or 'organism'.")],
    tuned: Annotated[list[str], typer.Option("--tuned", help="Tuned model dir, or NAME=DIR (repeatable).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for retmask_eval.json.")],
    heads: Annotated[Path | None, typer.Option("--heads", help="head_scores.json (for the concentration stats).")] = None,
    n: Annotated[int, typer.Option("--n", help="Held-out examples per suite.")] = 200,
    seed: Annotated[int, typer.Option(help="Held-out seed (not the training prompts' seed).")] = 20_260_707,
    long_lengths: Annotated[str, typer.Option(help="Comma-separated lengths of the *_long suites.")] = "1024",
    suites: Annotated[str, typer.Option(help="Comma-separated suites.")] = "multikey_long,mono_long,cross,multihop,parametric",
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = 8,
) -> None:
    """Exact-match accuracy of base and tuned models on the built-in tasks, next to the head-score concentration."""
    from ..heads import HeadScores
    from ..retmask.evaluate import RetMaskEvalConfig, evaluate_models, format_table

    models: dict[str, str] = {"base": base}
    for i, item in enumerate(tuned):
        name, sep, path = item.partition("=")
        models[name if sep else (f"tuned{i + 1}" if len(tuned) > 1 else "retmask")] = path if sep else item
    config = RetMaskEvalConfig(
        suites=tuple(s.strip() for s in suites.split(",") if s.strip()), n_per_task=n, seed=seed,
        long_lengths=tuple(int(x) for x in long_lengths.split(",") if x.strip()), batch_size=batch_size,
    )
    scores = HeadScores.load(heads) if heads is not None else None
    report = evaluate_models(models, config, scores=scores, out_dir=out)
    typer.echo(format_table(report))
    if report["concentration"]:
        typer.echo("head-score concentration: " + json.dumps({k: round(v, 4) for k, v in report["concentration"].items()}))
    typer.echo(f"-> {Path(out) / 'retmask_eval.json'}")
