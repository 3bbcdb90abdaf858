"""RetMask end to end on an organism-like model: heads -> pairs -> DPO -> before/after evaluation.

``out`` is a run (:func:`headatlas.runs.open_run`): changed settings, base weights or head scores are
refused; each step resumes. ``random_control=True`` adds an arm masking as many random heads (outside the
top-K); it samples up to ``control_prompt_factor`` times the prompts to match RetMask's pair count, both arms
train on the same number of pairs, and the report holds the paired change RetMask minus control.

>>> run_retmask_pipeline(RetMaskPipelineConfig(heads="runs/rh/head_scores.json", out="runs/rm"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from ..builtins import default_builtin
from ..heads import HeadScores
from ..runs import Run, atomic_write_jsonl, open_run, read_jsonl
from ..selection import HeadSelection
from .evaluate import RetMaskEvalConfig, evaluate_models, format_table
from .pairs import PairConfig, generate_pairs

if TYPE_CHECKING:
    from .train import RetMaskTrainConfig


@dataclass
class RetMaskPipelineConfig:
    """Sizes and settings of one RetMask run; ``lr`` 2e-5 because the paper's 5e-7 moves nothing in a 3M model."""

    heads: str
    out: str
    model: str = field(default_factory=default_builtin)
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
    past_lengths: tuple[int, ...] = (1536,)
    eval_suites: tuple[str, ...] = RetMaskEvalConfig.suites
    random_control: bool = False
    random_seed: int = 0
    control_prompt_factor: int = 3  # the control samples up to this many times n_prompts to match RetMask's pairs
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_prompts < 1 or self.n_eval < 1 or self.control_prompt_factor < 1:
            raise ValueError("n_prompts, n_eval and control_prompt_factor must be >= 1")
        self.eval_suites = tuple(self.eval_suites)

    def eval_config(self) -> RetMaskEvalConfig:
        return RetMaskEvalConfig(suites=self.eval_suites, n_per_task=self.n_eval, long_lengths=tuple(self.eval_lengths),
                                 past_lengths=tuple(self.past_lengths))

    def train_config(self) -> RetMaskTrainConfig:
        from .train import RetMaskTrainConfig  # TRL: the train extra

        return RetMaskTrainConfig(learning_rate=self.lr, num_train_epochs=self.epochs, beta=self.beta,
                                  use_lora=self.lora, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                                  weight_decay=0.0,  # the demo's numbers were measured without (the paper: 0.1)
                                  gradient_checkpointing=False, logging_steps=1, seed=self.seed, merge_lora=self.lora)


def _training_prompts(generator: Any, config: RetMaskPipelineConfig, run: Run) -> list[dict[str, Any]]:
    """Long-context prompts from the *training* name pool (evaluation uses the held-out one)."""
    if run.journal.exists():
        return run.records()
    rng = random.Random(23 + config.seed)
    rows = []
    for i in range(config.n_prompts * (config.control_prompt_factor if config.random_control else 1)):
        task = "multikey" if i % 3 != 2 else "mono"  # 2/3 multi-key with distractors, 1/3 monolingual
        length = config.lengths[i % len(config.lengths)]
        ex = generator.example(task, rng, length, split="train")
        rows.append({"id": f"{task}-{i}", "prompt": ex.prompt, "task": task, "length": length, "answer": ex.answer})
    atomic_write_jsonl(run.journal, rows)
    return rows


def open_pipeline(config: RetMaskPipelineConfig, weights: str) -> Run:
    """Open ``config.out`` for this pipeline, refusing a folder made with other settings, base weights or heads."""
    scores = hashlib.sha256(json.dumps(HeadScores.load(config.heads).scores.tolist()).encode()).hexdigest()
    settings = {k: v for k, v in asdict(config).items() if k not in ("out", "heads")}
    return open_run(config.out, "retmask-pipeline", settings, journal="prompts.jsonl", discard=(),
                    fingerprints={"the base model's weights": weights, "the head scores (heads file)": scores},
                    model=config.model, seed=config.seed, heads=config.heads,
                    hint="Resuming would mix work from two runs: use another out folder, or delete it to start over.")


@dataclass
class ArmPairs:
    """What :func:`pipeline_pairs` made: per arm its heads and pair counts (``stats[arm]["train_file"]``
    names the training pairs inside ``out``), plus the base model's path, task suite and head scores."""

    out: Path
    model_path: str
    tasks: Any
    scores: HeadScores
    heads: dict[str, dict[str, Any]]  # arm -> the selection and the masked heads
    stats: dict[str, dict[str, Any]]  # arm -> n_prompts, n_pairs, dropped, n_train, train_file


def pipeline_pairs(config: RetMaskPipelineConfig, console: Console | None = None) -> ArmPairs:
    """Open (or resume) the run ``config.out`` and sample every arm's pairs (:func:`make_arm_pairs`)."""
    from ..builtins import task_suite
    from ..model_spec import load_model, resolve_model_path, weights_fingerprint

    console = console or Console(stderr=True)
    model_path = resolve_model_path(config.model)
    model, tokenizer, spec = load_model(config.model, dtype="float32", device="cpu")
    tasks = task_suite(model_path)
    selections = {"retmask": HeadSelection(scores=config.heads, top_k=config.top_k)}
    if config.random_control:  # as many random heads, outside that top-K
        selections["random_control"] = dataclasses.replace(selections["retmask"], random_seed=config.random_seed)
    arms = {}
    for arm, sel in selections.items():
        heads = sel.resolve(spec.n_layers, spec.n_heads, config.model)
        arms[arm] = (heads, {**sel.to_json(), "masked": [str(h) for h in heads]})
    run = open_pipeline(config, weights_fingerprint(model))  # the heads are valid: now the folder is checked
    prompts = _training_prompts(tasks.generator, config, run)
    stats = make_arm_pairs(model, tokenizer, {arm: heads for arm, (heads, _info) in arms.items()}, prompts,
                           config, console)
    return ArmPairs(Path(config.out), model_path, tasks, HeadScores.load(config.heads),
                    {arm: info for arm, (_h, info) in arms.items()}, stats)


def run_retmask_pipeline(config: RetMaskPipelineConfig, console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) RetMask; returns the evaluation report (also in ``out/retmask_eval.json``)."""
    from .train import train_retmask  # TRL: the train extra

    console = console or Console(stderr=True)
    pairs = pipeline_pairs(config, console)
    out, model_path, pair_stats = pairs.out, pairs.model_path, pairs.stats
    trained = {}
    for arm, stats in pair_stats.items():
        model_dir = out / f"model_{arm}"
        if stats["n_train"] == 0:
            console.print(f"[yellow]retmask train ({arm}): no pair survived the filters; nothing to train[/]")
            continue
        train_retmask(model_path, out / stats["train_file"], model_dir, config.train_config())  # kept when finished
        trained[arm] = str(model_dir / "merged") if config.lora and (model_dir / "merged").exists() else str(model_dir)
        stats["training"] = training_summary(model_dir)

    report = evaluate_models(
        {"base": model_path, **trained}, config.eval_config(), scores=pairs.scores, out_dir=out, tasks=pairs.tasks,
        extra={"heads": pairs.heads, "pairs": pair_stats, "pipeline": asdict(config)},
        contrasts=[("retmask", "random_control")] if {"retmask", "random_control"} <= set(trained) else [],
    )
    console.print(format_table(report), markup=False, highlight=False)
    return report


def make_arm_pairs(model: Any, tokenizer: Any, arms: dict[str, list[Any]], prompts: list[dict[str, Any]],
                   config: RetMaskPipelineConfig, console: Console, target: int | None = None,
                   ) -> dict[str, dict[str, Any]]:
    """Pairs of every arm in ``config.out`` (``pairs_ARM.jsonl``); with a control, matched training files
    (``pairs_ARM.train.jsonl``: each arm's first ``n_train`` pairs in prompt order, ``n_train`` the smallest count).

    Each arm samples ``config.n_prompts`` prompts at a time, in the order of ``prompts``, until it has
    ``target`` pairs (default: the first arm stops after ``n_prompts``, the others aim at its count) or the
    prompts run out.
    """
    out = Path(config.out)
    cfg = PairConfig(temperature=config.temperature, max_new_tokens=config.max_new_tokens, stop=("\n",),
                     seed=config.seed, batch_size=8)
    stats: dict[str, dict[str, Any]] = {}
    for arm, heads in arms.items():
        console.print(f"retmask pairs ({arm}): masking {', '.join(map(str, heads))}")
        n = min(config.n_prompts, len(prompts))
        while True:
            found = generate_pairs(model, tokenizer, heads, prompts[:n], cfg, out / f"pairs_{arm}.jsonl")
            if target is None or found.n_pairs >= target or n >= len(prompts):
                break
            n = min(n + config.n_prompts, len(prompts))
        target = found.n_pairs if target is None else target
        sampled = found.n_pairs + sum(found.dropped.values())  # the whole journal, also on a resume
        stats[arm] = {"n_prompts": sampled, "n_pairs": found.n_pairs, "dropped": found.dropped}
    n_train = min(s["n_pairs"] for s in stats.values())
    order = {p["id"]: i for i, p in enumerate(prompts)}
    for arm, arm_stats in stats.items():
        arm_stats["n_train"], arm_stats["train_file"] = n_train, f"pairs_{arm}.jsonl"
        if len(stats) > 1:
            rows = sorted(read_jsonl(out / f"pairs_{arm}.jsonl"), key=lambda r: order[r["id"]])[:n_train]
            arm_stats["train_file"] = f"pairs_{arm}.train.jsonl"
            atomic_write_jsonl(out / arm_stats["train_file"], rows)
    return stats


def training_summary(model_dir: str | Path) -> dict[str, Any]:
    """Optimiser steps and held-out reward accuracy before/after, from ``training_curves.json``."""
    curves = json.loads((Path(model_dir) / "training_curves.json").read_text())
    held = curves.get("heldout") or {}
    return {"steps": max((r["step"] for r in curves.get("train") or []), default=0),
            **{f"heldout_reward_accuracy_{when}": (held.get(when) or {}).get("reward_accuracy")
               for when in ("before", "after")}}
