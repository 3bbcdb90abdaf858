"""RetMask vs its random-heads control with statistical power, on the built-in model (and its fourth checkpoint).

    nice -n 10 python experiments/retmask_power.py runs/retmask_power                       # everything; resumes
    nice -n 10 python experiments/retmask_power.py runs/retmask_power --steps pairs,calibrate   # a part

Per model (``--models``: the built-in model, then e.g. the fourth checkpoint rebuilt into ``runs/organism4``
by the command in docs/organism.md), in ``OUT/TAG/``:

1. ``detect``: the teacher-forced copy score (``retmask_organism.detect``) -> ``head_scores.json``; K = 5 %.
2. ``pairs``: general prompts (:func:`headatlas.retmask.general.general_prompts`: training-corpus passages
   and the prompts of every task kind, training key names, all languages, lengths 128-1024) written once
   to ``pairs/prompts.jsonl`` (``--prompt-budget`` of them); each arm (RetMask: the top-K heads zeroed;
   control: K random heads outside them) samples ``--chunk`` prompts at a time until it has
   ``--train-pairs / (1 - heldout)`` pairs (:func:`headatlas.retmask.pipeline.make_arm_pairs`); both
   arms' training files hold the same number of pairs.
3. ``calibrate``: the base model on every candidate suite (``--candidates``, ``--n-cal`` items, a seed of
   their own); the suites with base accuracy in 20-80 % are kept (``retmask.power.select_suites``) and sized
   so that the minimal detectable RetMask - control effect, pooled over seeds and suites, is <= ``--mde``
   at the sweep's paired sd (``retmask.power.eval_items_per_suite``).
4. ``train``: per seed, DPO for each arm (``SEED/model_ARM``), then the evaluation of what is trained
   (``eval/``, one journal: the base model is scored once); ``power.json`` / ``power.md`` are rewritten
   after every seed with what is in.

Every step is a run (journals, refusal of other settings): rerunning the same command resumes. Wall times
of each step go to ``OUT/TAG/timings.jsonl``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from retmask_organism import detect
from rich.console import Console

from headatlas.builtins import task_suite
from headatlas.heads import HeadScores
from headatlas.model_spec import load_model, resolve_model_path
from headatlas.retmask.evaluate import RetMaskEvalConfig, evaluate_models
from headatlas.retmask.general import composition, general_prompts
from headatlas.retmask.pipeline import RetMaskPipelineConfig, make_arm_pairs, training_summary
from headatlas.retmask.power import (
    SWEEP_PAIRED_SD,
    changed_share,
    eval_items_per_suite,
    live_gate,
    pooled_contrast,
    select_suites,
)
from headatlas.retmask.train import RetMaskTrainConfig, train_retmask
from headatlas.runs import append_jsonl, atomic_write_json, atomic_write_text, open_run, read_jsonl
from headatlas.selection import HeadSelection, concentration, share_of_heads

ARMS = ("retmask", "control")
CAL_SEED = 20_261_208  # calibration items: not the evaluation items (RetMaskEvalConfig's seed)
CANDIDATES = ("multikey@256,multikey@512,multikey@1024,multikey@1536,mono@1536,mono@1792,cross@1536,cross@1792,"
              "multihop@1536,multihop@1792")
TRAINED_LENGTH = 1024  # the organism's curriculum ends at 1024 tokens: the longest training prompt


def train_config(args: argparse.Namespace, seed: int) -> RetMaskTrainConfig:
    """The paper's schedule (warm-up, cosine decay, weight decay 0.1, 2 epochs, TRL's beta) at ``--lr``."""
    return RetMaskTrainConfig(learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0.1, weight_decay=0.1,
                              num_train_epochs=2.0, beta=0.1, per_device_train_batch_size=args.batch_size,
                              gradient_accumulation_steps=args.grad_accum, gradient_checkpointing=False,
                              logging_steps=args.logging_steps, seed=seed, heldout_fraction=args.heldout,
                              save_strategy="steps", save_steps=args.save_steps, save_total_limit=1)  # resumable


class Timer:
    """Appends ``{"step", "seconds"}`` to ``timings.jsonl`` when a step did work."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "timings.jsonl"

    def __call__(self, step: str, start: float, **extra: object) -> None:
        append_jsonl(self.path, {"step": step, "seconds": round(time.time() - start, 1), **extra})


def make_pairs(args, tag_dir: Path, model_name: str, console: Console, timer: Timer) -> dict:  # noqa: ANN001
    """Steps 1-2: heads, general prompts, both arms' pairs; returns the arms' stats and heads."""
    t0 = time.time()
    model, tokenizer, spec = load_model(model_name, dtype="float32", device="cpu")
    path = resolve_model_path(model_name)
    heads_file = detect(model, tokenizer, path, args.n_detect, tag_dir)
    k = share_of_heads(spec.n_total_heads)
    sel = HeadSelection(scores=heads_file, top_k=k)
    arms = {"retmask": sel.resolve(spec.n_layers, spec.n_heads),
            "control": HeadSelection(scores=heads_file, top_k=k, random_seed=0).resolve(spec.n_layers, spec.n_heads)}
    pairs_dir = tag_dir / "pairs"
    target = -(-args.train_pairs * 10 // round(10 * (1 - args.heldout)))  # train_pairs / (1 - heldout), rounded up
    settings = {"model": model_name, "prompt_budget": args.prompt_budget, "lengths": args.lengths,
                "chunk": args.chunk, "target_pairs": target, "k": k, "seed": 0, "max_new_tokens": 16,
                "temperature": 0.6}
    run = open_run(pairs_dir, "retmask-power-pairs", settings, journal="prompts.jsonl", discard=(),
                   hint="Use another OUT, or delete it to start over.")
    if run.journal.exists():
        prompts = list(read_jsonl(run.journal))
    else:
        prompts = general_prompts(task_suite(path), args.prompt_budget, seed=0, lengths=args.lengths)
        for row in prompts:
            run.append(row)
    cfg = RetMaskPipelineConfig(heads=str(heads_file), out=str(pairs_dir), model=model_name, top_k=k,
                                n_prompts=args.chunk, max_new_tokens=16, temperature=0.6)
    stats = make_arm_pairs(model, tokenizer, arms, prompts, cfg, console, target=target)
    by_id = {p["id"]: p for p in prompts}
    for arm, arm_stats in stats.items():
        arm_stats["composition"] = composition(read_jsonl(pairs_dir / arm_stats["train_file"]), by_id)
        arm_stats["masked"] = [str(h) for h in arms[arm]]
    timer("pairs", t0, pairs={a: s["n_pairs"] for a, s in stats.items()})
    return {"stats": stats, "heads_file": str(heads_file), "k": k, "path": path}


def calibrate(args, tag_dir: Path, path: str, timer: Timer) -> dict:  # noqa: ANN001
    """Step 3: base accuracy on the candidates; the suites with headroom and their size."""
    t0 = time.time()
    cands = tuple(args.candidates.split(","))
    report = evaluate_models({"base": path}, RetMaskEvalConfig(suites=cands, n_per_task=args.n_cal, seed=CAL_SEED),
                             out_dir=tag_dir / "calibrate", tasks=task_suite(path))
    base = {s: report["results"]["base"][s]["accuracy"] for s in cands}
    suites = select_suites(base, max_suites=args.max_suites, past=TRAINED_LENGTH)
    n = args.n_eval or (eval_items_per_suite(SWEEP_PAIRED_SD, args.mde, len(args.seeds), len(suites)) if suites else 0)
    timer("calibrate", t0)
    return {"base_accuracy": base, "suites": suites, "n_per_suite": n}


def evaluate(args, tag_dir: Path, path: str, plan: dict, trained: dict[int, dict[str, str]]) -> dict:  # noqa: ANN001
    models = {"base": path, **{f"s{s}/{arm}": d for s, arms in trained.items() for arm, d in arms.items()}}
    suites = tuple(plan["suites"]) + ("parametric",)  # parametric: the regression check, not pooled
    cfg = RetMaskEvalConfig(suites=suites, n_per_task=plan["n_per_suite"])
    return evaluate_models(models, cfg, out_dir=tag_dir / "eval", tasks=task_suite(path),
                           contrasts=[(f"s{s}/retmask", f"s{s}/control") for s in trained])


def journal_items(tag_dir: Path) -> tuple[dict, dict]:
    items: dict = {}
    answers: dict = {}
    for row in read_jsonl(tag_dir / "eval" / "retmask_eval.jsonl"):
        items.setdefault(row["model"], {})[row["suite"]] = row["items"]
        answers.setdefault(row["model"], {})[row["suite"]] = row.get("answers") or [None] * len(row["items"])
    return items, answers


def summarise(tag: str, tag_dir: Path, pairs: dict, plan: dict, trained: dict, report: dict | None) -> dict:
    """The powered table's row of one model: pooled contrasts, MDE, live gate, concentration."""
    scores = HeadScores.load(pairs["heads_file"])
    conc = concentration(scores, top=pairs["k"])
    conc["top_share"] = conc[f"top_{pairs['k']}_share"]  # the top-K share, K = the masked heads
    summary = {"model": tag, "k": pairs["k"], "concentration": conc, "pairs": pairs["stats"], "plan": plan,
               "seeds": sorted(trained)}
    if report is None or not trained:
        return summary
    items, answers = journal_items(tag_dir)
    seeds = sorted(trained)
    r = [f"s{s}/retmask" for s in seeds]
    c = [f"s{s}/control" for s in seeds]
    suites = plan["suites"]
    summary["retmask_minus_control"] = pooled_contrast(items, r, c, suites)
    summary["retmask_minus_base"] = pooled_contrast(items, r, ["base"] * len(r), suites)
    summary["control_minus_base"] = pooled_contrast(items, c, ["base"] * len(c), suites)
    summary["per_suite"] = {s: {m: report["results"][m][s] for m in report["results"]} for s in (*suites, "parametric")}
    summary["training"] = {arm: {s: training_summary(tag_dir / f"s{s}" / f"model_{arm}") for s in seeds} for arm in ARMS}
    changed = {arm: changed_share(answers, "base", [f"s{s}/{arm}" for s in seeds], suites) for arm in ARMS}
    summary["changed_answers"] = changed
    summary["live"] = live_gate({arm: [summary["training"][arm][s]["heldout_reward_accuracy_after"] for s in seeds]
                                 for arm in ARMS}, changed)
    return summary


def pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def table(summaries: list[dict]) -> str:
    lines = ["| model | Gini | top-K share | pairs R / C (prompts) | seeds | suites (base %) | items | "
             "R - base [95 %] | C - base [95 %] | R - C [95 %] | MDE (80 % power) | held-out acc R / C | "
             "answers changed R / C | live |", "|" + "---|" * 14]
    for s in summaries:
        st = s["pairs"]
        plan = s["plan"]
        base = plan.get("base_accuracy", {})
        suites = ", ".join(f"{x} ({100 * base.get(x, float('nan')):.0f})" for x in plan.get("suites", []))
        cells = [s["model"], f"{s['concentration']['gini']:.3f}", f"{s['concentration']['top_share']:.2f}",
                 f"{st['retmask']['n_pairs']} ({st['retmask']['n_prompts']}) / {st['control']['n_pairs']} "
                 f"({st['control']['n_prompts']})", ",".join(map(str, s["seeds"])) or "-", suites]
        if "retmask_minus_control" in s:
            rc = s["retmask_minus_control"]
            tr = s["training"]
            cells += [str(rc["n_items"]),
                      *(f"{pts(s[k]['delta'])} [{pts(s[k]['delta_low'])}, {pts(s[k]['delta_high'])}]"
                        for k in ("retmask_minus_base", "control_minus_base", "retmask_minus_control")),
                      f"{100 * rc['mde']:.1f} pts",
                      " / ".join(",".join(f"{v['heldout_reward_accuracy_after']:.2f}" for v in tr[a].values())
                                 for a in ARMS),
                      " / ".join(f"{100 * v:.1f} %" if v is not None else "-" for v in s["changed_answers"].values()),
                      "yes" if s["live"]["live"] else "no: " + "; ".join(s["live"]["reasons"])]
        else:
            cells += ["-"] * 8
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output folder (not committed); re-running resumes")
    ap.add_argument("--models", default="organism,runs/organism4", help="comma-separated; TAG = folder name")
    ap.add_argument("--steps", default="pairs,calibrate,train", help="which steps to run (each needs the previous)")
    ap.add_argument("--seeds", default="0,1,2", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--train-pairs", type=int, default=1000, help="pairs each arm trains on (a share is held out)")
    ap.add_argument("--heldout", type=float, default=0.1, help="held-out share of the pairs")
    ap.add_argument("--prompt-budget", type=int, default=6000, help="general prompts an arm may sample")
    ap.add_argument("--chunk", type=int, default=250, help="prompts sampled at a time")
    ap.add_argument("--lengths", default="128,256,512,1024", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--n-detect", type=int, default=60)
    ap.add_argument("--candidates", default=CANDIDATES)
    ap.add_argument("--n-cal", type=int, default=30, help="calibration items per candidate suite")
    ap.add_argument("--max-suites", type=int, default=4)
    ap.add_argument("--mde", type=float, default=0.03, help="target minimal detectable effect (share)")
    ap.add_argument("--n-eval", type=int, default=0, help="items per suite (0: sized for --mde)")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--logging-steps", type=int, default=5)
    ap.add_argument("--save-steps", type=int, default=25, help="checkpoint every N optimiser steps (a resume "
                    "goes on from the last)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = set(args.steps.split(","))
    console = Console(stderr=True)
    summaries = []
    for model_name in args.models.split(","):
        tag = Path(model_name).name
        tag_dir = args.out / tag
        tag_dir.mkdir(parents=True, exist_ok=True)
        timer = Timer(tag_dir)
        pairs = make_pairs(args, tag_dir, model_name, console, timer)
        plan: dict = {}
        trained: dict[int, dict[str, str]] = {}
        report = None
        if "calibrate" in steps or "train" in steps:
            plan = calibrate(args, tag_dir, pairs["path"], timer)
            console.print(f"{tag}: suites {plan['suites']} x {plan['n_per_suite']} items")
        if "train" in steps and plan.get("suites"):
            for seed in args.seeds:
                t0 = time.time()
                trained[seed] = {}
                for arm in ARMS:
                    model_dir = tag_dir / f"s{seed}" / f"model_{arm}"
                    train_retmask(pairs["path"], tag_dir / "pairs" / pairs["stats"][arm]["train_file"], model_dir,
                                  train_config(args, seed))
                    trained[seed][arm] = str(model_dir)
                timer("train", t0, seed=seed)
                t0 = time.time()
                report = evaluate(args, tag_dir, pairs["path"], plan, trained)
                timer("evaluate", t0, seed=seed)
                summary = summarise(tag, tag_dir, pairs, plan, trained, report)
                atomic_write_json(tag_dir / "power.json", summary)
        summaries.append(summarise(tag, tag_dir, pairs, plan, trained, report))
        atomic_write_json(tag_dir / "power.json", summaries[-1])
    text = table(summaries)
    atomic_write_json(args.out / "power.json", {"models": summaries})
    atomic_write_text(args.out / "power.md", text + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    main()
