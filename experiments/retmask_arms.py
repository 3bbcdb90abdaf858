"""RetMask vs its random-heads control on the built-in model: a sweep, with paired bootstrap intervals.

    python experiments/retmask_arms.py runs/retmask_arms            # the sweep (resumes; ~1 h on 2 busy shared cores)
    python experiments/retmask_arms.py runs/retmask_arms --configs lr3e-4 --seeds 0,1,2   # one config, 3 seeds

1. detect: the teacher-forced copy score of ``experiments/retmask_organism.py``
   -> ``OUT/head_scores.json``; K = 5 % of the heads.
2. pairs, ONCE per arm (:func:`headatlas.retmask.pipeline.pipeline_pairs`,
   run folder ``OUT/pairs``): RetMask masks the top-K heads, the control K random
   heads outside them (``HeadSelection(random_seed=0)``) and samples more prompts
   until it has as many pairs; both arms' training files hold the same number of
   pairs, in prompt order. Temperature 0.6, identical and empty pairs dropped.
3. per config and training seed: DPO on the first ``pairs`` pairs of each arm
   (same settings, same steps) -> ``OUT/configs/NAME-sSEED/model_{retmask,control}``.
4. evaluate on the held-out suites (``OUT/eval``, one journal: the base model is
   scored once); per suite the paired change from the base and RetMask minus
   control, each with a paired bootstrap 95 % interval over items.

Each finished run writes ``OUT/configs/RUN/row.json``; the table gathers every row in OUT (so two
processes may share OUT with disjoint ``--configs``): ``OUT/sweep.json`` and ``OUT/sweep.md`` (also printed).
A config "wins" when RetMask - control has an interval above 0 on a retrieval
suite while parametric recall stays within 2 points of the base.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from retmask_organism import detect

from headatlas.model_spec import load_model, resolve_model_path
from headatlas.retmask.evaluate import RetMaskEvalConfig, evaluate_models
from headatlas.retmask.pipeline import RetMaskPipelineConfig, pipeline_pairs, training_summary
from headatlas.retmask.train import RetMaskTrainConfig, train_retmask
from headatlas.runs import atomic_write_json, atomic_write_text, read_jsonl
from headatlas.selection import share_of_heads

ARMS = {"retmask": "retmask", "control": "random_control"}  # name in the sweep -> the pipeline's arm
# name: (lr, beta, epochs, pairs, lora); the base row of the paper's settings is lr 5e-7 (moves nothing here)
CONFIGS = {
    "lr2e-5": (2e-5, 0.1, 2, 32, False),
    "lr1e-4": (1e-4, 0.1, 2, 32, False),
    "lr3e-4": (3e-4, 0.1, 2, 32, False),
    "lr1e-3": (1e-3, 0.1, 2, 32, False),
    "lora-lr1e-3": (1e-3, 0.1, 2, 32, True),
    "lora-lr3e-3": (3e-3, 0.1, 2, 32, True),
    "lr3e-4-b0.5": (3e-4, 0.5, 2, 32, False),
    "lr3e-4-b0.02": (3e-4, 0.02, 2, 32, False),
    "lr3e-4-ep4": (3e-4, 0.1, 4, 32, False),
    "lr3e-4-n16": (3e-4, 0.1, 2, 16, False),
    "lr1e-3-n16": (1e-3, 0.1, 2, 16, False),
    "lora-lr3e-3-n16": (3e-3, 0.1, 2, 16, True),
}
RETRIEVAL = ("multikey_long", "mono_past", "cross_past", "multihop_past", "mono_long", "multikey_past")


def train_config(name: str, seed: int) -> RetMaskTrainConfig:
    lr, beta, epochs, _pairs, lora = CONFIGS[name]
    return RetMaskTrainConfig(learning_rate=lr, beta=beta, num_train_epochs=epochs, use_lora=lora, weight_decay=0.0,
                              per_device_train_batch_size=4, gradient_accumulation_steps=2,
                              gradient_checkpointing=False, logging_steps=1, seed=seed, heldout_fraction=0.2)


def subset(pairs_dir: Path, train_file: str, n: int, dest: Path) -> tuple[Path, int]:
    """The first ``n`` pairs (prompt order) of an arm's matched training file, written to ``dest``."""
    rows = list(read_jsonl(pairs_dir / train_file))[:n]
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(dest, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return dest, len(rows)


def answer_check(pairs_dir: Path, stats: dict) -> dict:
    """Per arm's training pairs: how many chosen / rejected responses are the right answer, and the tasks."""
    answers = {r["id"]: (r["answer"].strip(), r["task"]) for r in read_jsonl(pairs_dir / "prompts.jsonl")}
    out = {}
    for arm, arm_stats in stats.items():
        rows = list(read_jsonl(pairs_dir / arm_stats["train_file"]))
        tasks = [answers[r["id"]][1] for r in rows]
        out[arm] = {"pairs": len(rows), "chosen_right": sum(r["chosen"].strip() == answers[r["id"]][0] for r in rows),
                    "rejected_right": sum(r["rejected"].strip() == answers[r["id"]][0] for r in rows),
                    "tasks": {t: tasks.count(t) for t in sorted(set(tasks))}}
    return out


def row_of(run: str, report: dict, summaries: dict) -> dict:
    res, contrast = report["results"], report["contrasts"][f"{run}/retmask - {run}/control"]
    suites = list(res["base"])
    row = {"run": run, "steps": {a: summaries[a]["steps"] for a in ARMS},
           "heldout_reward_accuracy": {a: summaries[a]["heldout_reward_accuracy_after"] for a in ARMS},
           "base": {s: res["base"][s]["accuracy"] for s in suites},
           **{a: {s: {k: res[f"{run}/{a}"][s][k] for k in ("accuracy", "delta", "delta_low", "delta_high")}
                  for s in suites} for a in ARMS},
           "retmask_minus_control": contrast}
    param = row["retmask"].get("parametric", {}).get("delta", 0.0)
    row["wins"] = [s for s in suites if s in RETRIEVAL and contrast[s]["delta_low"] > 0] if abs(param) <= 0.02 else []
    return row


def pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def table(rows: list[dict]) -> str:
    suites = [s for s in rows[0]["base"]]
    head = ["run", "lr", "beta", "epochs", "LoRA", "pairs", "steps", "held-out acc (R/C)",
            *[f"{s}: R-base / C-base / R-C [95 %]" for s in suites]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cfg = r["config"]
        cells = [r["run"], f"{cfg['lr']:g}", f"{cfg['beta']:g}", f"{cfg['epochs']:g}", "yes" if cfg["lora"] else "no",
                 str(r["pairs"]), f"{r['steps']['retmask']}/{r['steps']['control']}",
                 " / ".join(f"{v:.2f}" if v is not None else "-" for v in r["heldout_reward_accuracy"].values())]
        for s in suites:
            c = r["retmask_minus_control"][s]
            cells.append(f"{pts(r['retmask'][s]['delta'])} / {pts(r['control'][s]['delta'])} / "
                         f"{pts(c['delta'])} [{pts(c['delta_low'])}, {pts(c['delta_high'])}]")
        lines.append("| " + " | ".join(cells) + " |")
    base = rows[0]["base"]
    lines.append("")
    lines.append("base accuracy: " + ", ".join(f"{s} {100 * base[s]:.1f}" for s in suites))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output folder (not committed); re-running resumes")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names of CONFIGS")
    ap.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    ap.add_argument("--n-prompts", type=int, default=48, help="RetMask's pair prompts (the control samples more)")
    ap.add_argument("--lengths", default="256,512", help="context lengths of the pair prompts")
    ap.add_argument("--n-eval", type=int, default=40, help="held-out items per suite")
    ap.add_argument("--suites", default="multikey_long,parametric")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, spec = load_model("organism", device="cpu")
    heads = detect(model, tokenizer, resolve_model_path("organism"), 60, out)
    del model
    pairs = pipeline_pairs(RetMaskPipelineConfig(
        heads=str(heads), out=str(out / "pairs"), top_k=share_of_heads(spec.n_total_heads), n_prompts=args.n_prompts,
        lengths=tuple(int(x) for x in args.lengths.split(",")), random_control=True, control_prompt_factor=8))
    check = answer_check(pairs.out, pairs.stats)
    print(json.dumps({"pairs": pairs.stats, "answers": check}, indent=1), flush=True)
    eval_cfg = RetMaskEvalConfig(suites=tuple(args.suites.split(",")), n_per_task=args.n_eval)
    for name in args.configs.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            run = f"{name}-s{seed}"
            folder = out / "configs" / run
            models, summaries, n = {}, {}, 0
            for arm, pipeline_arm in ARMS.items():
                stats = pairs.stats[pipeline_arm]
                path, n = subset(pairs.out, stats["train_file"], CONFIGS[name][3], folder / f"pairs_{arm}.jsonl")
                train_retmask(pairs.model_path, path, folder / f"model_{arm}", train_config(name, seed))
                models[f"{run}/{arm}"] = str(folder / f"model_{arm}")
                summaries[arm] = training_summary(folder / f"model_{arm}")
            report = evaluate_models({"base": pairs.model_path, **models}, eval_cfg, out_dir=out / "eval",
                                     tasks=pairs.tasks, contrasts=[(f"{run}/retmask", f"{run}/control")])
            atomic_write_json(folder / "retmask_eval.json", report)
            atomic_write_json(folder / "row.json", {**row_of(run, report, summaries), "pairs": n, "config": dict(zip(
                ("lr", "beta", "epochs", "pairs", "lora"), CONFIGS[name], strict=True))})
            rows = [json.loads(f.read_text()) for name_ in CONFIGS for f in sorted((out / "configs").glob(f"{name_}-s*/row.json"))]
            atomic_write_json(out / "sweep.json", {"pairs": pairs.stats, "answers": check, "heads": pairs.heads,
                                                   "rows": rows})
            atomic_write_text(out / "sweep.md", table(rows) + "\n")
            print(table(rows), flush=True)
    wins = [(r["run"], r["wins"]) for r in rows if r["wins"]]
    print(f"configs where RetMask beats the control (interval > 0, parametric within 2 points): {wins or 'none'}")


if __name__ == "__main__":
    main()
