"""``headatlas retmask``: ablate, pairs, train, evaluate (a thin layer over :mod:`headatlas.retmask`).

    headatlas retmask pairs --model organism --heads runs/detect/head_scores.json --prompts p.jsonl --out pairs.jsonl
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import ModelConfig
from ..retmask.evaluate import RetMaskEvalConfig
from ..retmask.pairs import PairConfig
from ..retmask.train import (  # TRL: the group is mounted lazily (cli.LAZY_GROUPS)
    TUNED_FIELDS,
    RetMaskTrainConfig,
)
from .options import option

retmask_app = typer.Typer(
    help="RetMask: DPO with the retrieval-heads-ablated model's responses as the rejected ones.",
    no_args_is_help=True,
)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help=ModelConfig.__dataclass_fields__["model"].metadata["help"])]
HeadsOpt = Annotated[Path, typer.Option("--heads", help="head_scores.json written by detect.", exists=True)]
AllowOtherOpt = Annotated[bool, typer.Option("--allow-other-model", help="Use --heads made for another model of the same shape.")]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="Mask the K best-scoring heads (default: 5 % of all heads).")]
ThresholdOpt = Annotated[float | None, typer.Option("--threshold", help="Mask heads scoring above T (paper: 0.1).")]
RandomOpt = Annotated[
    int | None,
    typer.Option("--random-control", help="Control: mask as many random heads (outside the selection), this seed."),
]


@contextmanager
def _models_found(*names: str) -> Iterator[None]:
    """Turn a loader's OSError about a model that exists nowhere into the one-line ModelNotFoundError."""
    from ..model_spec import model_not_found, resolve_model_path

    try:
        yield
    except OSError as err:
        missing = [n for n in names if not Path(resolve_model_path(n)).exists()]
        if missing:
            raise model_not_found(missing[0]) from err
        raise


def _load_heads(model_name: str, heads_file: Path, top_k: int | None, threshold: float | None,
                random_control: int | None, allow_other_model: bool = False):  # noqa: ANN202
    from ..model_spec import load_model
    from ..selection import HeadSelection

    try:
        selection = HeadSelection(scores=heads_file, top_k=top_k, threshold=threshold, random_seed=random_control,
                                  allow_other_model=allow_other_model)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    model, tokenizer, spec = load_model(model_name)
    heads = selection.resolve(spec.n_layers, spec.n_heads, model_name)  # a score file of another shape or model: refused in one line
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
    allow_other_model: AllowOtherOpt = False,
) -> None:
    """Save a checkpoint with the selected heads zeroed in the output projection (any engine can serve it)."""
    from ..masking import save_ablated_model

    loaded, tokenizer, chosen, info = _load_heads(model, heads, top_k, threshold, random_control, allow_other_model)
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
    allow_other_model: AllowOtherOpt = False,
    max_new_tokens: int = option(PairConfig, "max_new_tokens", min=1),
    temperature: float = option(PairConfig, "temperature"),
    top_p: float = option(PairConfig, "top_p"),
    seed: int = option(PairConfig, "seed"),
    batch_size: int = option(PairConfig, "batch_size", min=1),
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable), e.g. --stop '\\n'.")] = None,
    independent_seeds: Annotated[
        bool, typer.Option(help="Sample chosen and rejected with different random streams.")
    ] = False,
    max_prompt_tokens: int | None = option(PairConfig, "max_prompt_tokens"),
    limit: Annotated[int | None, typer.Option(help="Use only the first N prompts.")] = None,
    engine: str = option(PairConfig, "engine"),
) -> None:
    """Sample chosen (original) and rejected (heads zeroed) responses; write TRL preference pairs."""
    from ..retmask.pairs import generate_pairs, load_prompts

    stops = tuple(s.encode().decode("unicode_escape") for s in (stop or []))  # "\\n" on a shell -> newline
    config = PairConfig(
        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
        stop=stops, same_seed_for_both=not independent_seeds, max_prompt_tokens=max_prompt_tokens, engine=engine,
    )
    records = load_prompts(prompts, limit=limit)
    loaded, tokenizer, chosen, info = _load_heads(model, heads, top_k, threshold, random_control, allow_other_model)
    stats = generate_pairs(loaded, tokenizer, chosen, records, config, out)  # a refused resume: exit 2 (errors.py)
    typer.echo(
        f"{stats.n_pairs} pairs from {stats.n_prompts} prompts ({stats.n_resumed} resumed); "
        f"dropped {stats.n_dropped}: {json.dumps(stats.dropped)} -> {out}"
    )


def _train_option(name: str) -> inspect.Parameter:
    """The ``retmask train`` option of a tuned :class:`RetMaskTrainConfig` field: its default, its help."""
    f = RetMaskTrainConfig.__dataclass_fields__[name]
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if isinstance(default, list):  # loss_type: one loss on the command line
        default = default[0]
    kind = int | None if default is None else type(default)
    flag = "--" + name.replace("_", "-")
    flags = (f"{flag}/--no-{flag[2:]}",) if kind is bool else (flag,)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                             default=option(RetMaskTrainConfig, name, *flags, default=default))


def train(
    model: ModelOpt,
    pairs: Annotated[Path, typer.Option("--pairs", help="Pairs JSONL from `retmask pairs`.", exists=True)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    **settings: Any,
) -> None:
    """DPO on the pairs with TRL (full or LoRA); under `accelerate launch` on as many GPUs as it gives."""
    from ..retmask.train import train_retmask

    config = RetMaskTrainConfig(**settings)
    with _models_found(model):
        result = train_retmask(model, pairs, out, config)
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    first, last = (f"{losses[0]:.4f}", f"{losses[-1]:.4f}") if losses else ("-", "-")
    typer.echo(f"trained on {result.n_pairs} pairs; DPO loss {first} -> {last}; saved to {result.out_dir}")


_hints = typing.get_type_hints(train, include_extras=True)
_params = [p.replace(annotation=_hints[p.name]) for p in inspect.signature(train).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
train.__signature__ = inspect.Signature([*_params, *(_train_option(n) for n in TUNED_FIELDS)])  # type: ignore[attr-defined]
retmask_app.command("train")(train)


@retmask_app.command("evaluate")
def evaluate(
    base: Annotated[str, typer.Option("--base", help="Base model: path, hub id or 'organism'.")],
    tuned: Annotated[list[str], typer.Option("--tuned", help="Tuned model dir, or NAME=DIR (repeatable).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for retmask_eval.json.")],
    heads: Annotated[Path | None, typer.Option("--heads", help="head_scores.json (for the concentration stats).")] = None,
    n: int = option(RetMaskEvalConfig, "n_per_task", "--n", min=1),
    seed: int = option(RetMaskEvalConfig, "seed"),
    long_lengths: str = option(RetMaskEvalConfig, "long_lengths", default=",".join(map(str, RetMaskEvalConfig.long_lengths))),
    past_lengths: str = option(RetMaskEvalConfig, "past_lengths", default=",".join(map(str, RetMaskEvalConfig.past_lengths))),
    contrast: Annotated[list[str] | None, typer.Option(
        "--contrast", help="A,B: the paired change A - B of two tuned models, with its interval (repeatable).")] = None,
    suites: str = option(RetMaskEvalConfig, "suites", default=",".join(RetMaskEvalConfig.suites)),
    batch_size: int = option(RetMaskEvalConfig, "batch_size", min=1),
) -> None:
    """Exact-match accuracy of base and tuned models on the built-in tasks, next to the head-score concentration."""
    from ..heads import HeadScores
    from ..retmask.evaluate import evaluate_models, format_table

    models: dict[str, str] = {"base": base}
    for i, item in enumerate(tuned):
        name, sep, path = item.partition("=")
        models[name if sep else (f"tuned{i + 1}" if len(tuned) > 1 else "retmask")] = path if sep else item
    def items(text: str) -> tuple[str, ...]:
        return tuple(s.strip() for s in text.split(",") if s.strip())

    config = RetMaskEvalConfig(suites=items(suites), n_per_task=n, seed=seed, batch_size=batch_size,
                               long_lengths=tuple(map(int, items(long_lengths))),
                               past_lengths=tuple(map(int, items(past_lengths))))
    pairs = [tuple(c.split(",")) for c in contrast or []]
    if any(len(c) != 2 for c in pairs):
        raise typer.BadParameter("give two model names: --contrast retmask,random", param_hint="--contrast")
    scores = HeadScores.load(heads) if heads is not None else None
    with _models_found(*models.values()):
        report = evaluate_models(models, config, scores=scores, out_dir=out, contrasts=pairs)
    typer.echo(format_table(report))
    if report["concentration"]:
        typer.echo("head-score concentration: " + json.dumps({k: round(v, 4) for k, v in report["concentration"].items()}))
    typer.echo(f"-> {Path(out) / 'retmask_eval.json'}")
