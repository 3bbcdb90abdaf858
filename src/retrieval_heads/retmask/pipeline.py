"""RetMask end to end on an organism-like model: heads -> pairs -> DPO -> before/after evaluation.

Every step writes into ``out`` and is skipped when its output exists, so an
interrupted run resumes. With ``random_control=True`` the same pipeline runs a
second arm whose rejected responses come from K random heads (outside the
top-K) masked — the control that the gain comes from the retrieval-head
contrast.

>>> run_retmask_pipeline(RetMaskPipelineConfig(heads="runs/rh/head_scores.json", out="runs/rm"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ..artifacts import atomic_write_json, check_or_record, read_jsonl
from ..heads import HeadScores
from ..selection import HeadSelection
from .evaluate import RetMaskEvalConfig, evaluate_models, format_table
from .pairs import PairConfig, generate_pairs
from .train import RetMaskTrainConfig, train_retmask


@dataclass
class RetMaskPipelineConfig:
    """Sizes and settings of one RetMask run on an organism-like checkpoint.

    ``lr`` defaults to 2e-5: the paper's 5e-7 was set for 8B models and
    thousands of pairs and moves nothing in a 3M-parameter model trained on a
    few dozen pairs (docs/retmask.md).
    """

    heads: str
    out: str
    model: str = "organism"
    top_k: int | None = None  # None: 5 % of all heads
    n_prompts: int = 192
    lengths: tuple[int, ...] = (512, 1024)
    max_new_tokens: int = 16
    temperature: float = 0.6
    lr: float = 2e-5
    epochs: float = 2.0
    beta: float = 0.1
    lora: bool = False
    n_eval: int = 100
    eval_lengths: tuple[int, ...] = (1024,)
    random_control: bool = False
    random_seed: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_prompts < 1 or self.n_eval < 1:
            raise ValueError("n_prompts and n_eval must be >= 1")


def _training_prompts(generator: Any, config: RetMaskPipelineConfig, out: Path) -> list[dict[str, Any]]:
    """Long-context prompts from the *training* name pool (evaluation uses the held-out one)."""
    path = out / "prompts.jsonl"
    if path.exists():
        return list(read_jsonl(path))
    rng = random.Random(23 + config.seed)
    rows = []
    for i in range(config.n_prompts):
        task = "multikey" if i % 3 != 2 else "mono"  # 2/3 multi-key with distractors, 1/3 monolingual
        length = config.lengths[i % len(config.lengths)]
        ex = generator.example(task, rng, length, split="train")
        rows.append({"id": f"{task}-{i}", "prompt": ex.prompt, "task": task, "length": length, "answer": ex.answer})
    atomic_write_json(out / "prompts.meta.json", {"n": len(rows), "seed": config.seed})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return rows


def _check_base_model(out: Path, model: str, weights: str) -> None:
    """Refuse to resume RetMask work (pairs, trained models) that was made from other base weights."""
    check_or_record(out / "base_model.json", "base", {"weights": weights}, record={"model": model},
                    what=f"RetMask pairs and models of {model}",
                    hint="Resuming would mix work from two base models: use another --out, or delete that folder to start over.")


def run_retmask_pipeline(config: RetMaskPipelineConfig, console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) RetMask; returns the evaluation report (also in ``out/retmask_eval.json``)."""
    from ..builtins import task_suite
    from ..model_spec import load_model, resolve_model_path, weights_fingerprint

    console = console or Console(stderr=True)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model_path(config.model)
    model, tokenizer, spec = load_model(config.model, dtype="float32", device="cpu")
    _check_base_model(out, str(model_path), weights_fingerprint(model))
    tasks = task_suite(model_path)
    scores = HeadScores.load(config.heads)
    selections = {"retmask": HeadSelection(scores=config.heads, top_k=config.top_k)}
    if config.random_control:  # as many random heads, outside that top-K
        selections["random_control"] = dataclasses.replace(selections["retmask"], random_seed=config.random_seed)
    arms = {}
    for arm, sel in selections.items():
        heads = sel.resolve(spec.n_layers, spec.n_heads)
        arms[arm] = (heads, {**sel.to_json(), "masked": [str(h) for h in heads]})
    prompts = _training_prompts(tasks.generator, config, out)
    pair_cfg = PairConfig(temperature=config.temperature, max_new_tokens=config.max_new_tokens, stop=("\n",),
                          seed=config.seed, batch_size=8)
    pair_stats = {}
    for arm, (heads, _info) in arms.items():
        console.print(f"retmask pairs [{arm}]: masking {', '.join(map(str, heads))}")
        stats = generate_pairs(model, tokenizer, heads, prompts, pair_cfg, out / f"pairs_{arm}.jsonl")
        pair_stats[arm] = {"n_pairs": stats.n_pairs, "dropped": stats.dropped}
    del model

    train_cfg = RetMaskTrainConfig(learning_rate=config.lr, num_train_epochs=config.epochs, beta=config.beta,
                                   use_lora=config.lora, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                                   gradient_checkpointing=False, logging_steps=1, seed=config.seed,
                                   merge_lora=config.lora)
    trained = {}
    for arm in arms:
        model_dir = out / f"model_{arm}"
        if pair_stats[arm]["n_pairs"] == 0:
            console.print(f"[yellow]retmask train [{arm}]: no pair survived the filters; nothing to train[/]")
            continue
        if not (model_dir / "retmask_run.json").exists():
            train_retmask(model_path, out / f"pairs_{arm}.jsonl", model_dir, train_cfg)
        trained[arm] = str(model_dir / "merged") if config.lora and (model_dir / "merged").exists() else str(model_dir)

    eval_cfg = RetMaskEvalConfig(suites=("multikey_long", "mono_long", "cross", "multihop", "parametric"),
                                 n_per_task=config.n_eval, long_lengths=tuple(config.eval_lengths))
    report = evaluate_models(
        {"base": model_path, **trained}, eval_cfg, scores=scores, out_dir=out, tasks=tasks,
        extra={"heads": {arm: info for arm, (_h, info) in arms.items()}, "pairs": pair_stats,
               "pipeline": asdict(config)},
    )
    console.print(format_table(report))
    return report
