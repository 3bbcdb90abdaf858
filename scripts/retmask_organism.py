"""RetMask end to end on the built-in model, with a random-heads control, on CPU.

    python scripts/retmask_organism.py --out runs/retmask_organism
    python scripts/retmask_organism.py --out /tmp/rm --n-prompts 32 --n-eval 24   # a quick look

Cost on 2 shared CPU cores (a 6 x 16-head organism, measured while another
training run shared the cores): sampling ~1.3 s per prompt and arm at 1024
tokens; DPO ~5 s per pair and epoch at 1024 tokens (policy forward+backward
on chosen and rejected plus the reference forward); evaluation ~0.9 s per
example and model. The defaults (192 prompts at 512/1024 tokens, 2 epochs,
100 held-out examples per suite) therefore take roughly 7 min of sampling,
2 x 15-25 min of DPO and 20 min of evaluation; idle cores roughly halve that.

Steps (each writes into ``--out`` and is skipped when its output exists, so an
interrupted run resumes):

1. detect: a teacher-forced retrieval (copy) score per head on held-out
   ``mono`` prompts the model answers correctly
   (:func:`retrieval_heads.organism.measure.head_scores`) -> ``head_scores.json``;
   K = ``--k`` heads (default: 5 % of all heads).
2. pairs: long-context *training-split* prompts (multi-key with distractors
   and monolingual retrieval at 512 and 1024 tokens); chosen = the model,
   rejected = the model with the top-K heads zeroed (``pairs_retmask.jsonl``),
   and the control with K random heads outside the top-K zeroed
   (``pairs_random.jsonl``). Responses stop at the newline that ends an answer.
3. DPO with TRL for each pair set (``model_retmask/``, ``model_random/``).
   The paper's lr of 5e-7 was set for 8B models and thousands of pairs; for
   this 3M-parameter model and a few hundred pairs it moves nothing, so the
   default here is ``--lr 2e-5`` (everything else: the paper's settings).
4. evaluate base vs RetMask vs control on held-out examples (another seed and
   the held-out key names): multikey and mono at the longest length, cross,
   multihop, parametric -> ``retmask_eval.json`` and the table printed.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch

from retrieval_heads.artifacts import atomic_write_json, read_jsonl
from retrieval_heads.heads import HeadScores
from retrieval_heads.model_spec import load_model, resolve_model_path
from retrieval_heads.retmask import (
    PairConfig,
    RetMaskEvalConfig,
    RetMaskTrainConfig,
    choose_heads,
    evaluate_models,
    format_table,
    generate_pairs,
    train_retmask,
)
from retrieval_heads.retmask.pairs import stats_path

DETECT_SEED, PROMPT_SEED, EVAL_SEED = 11, 23, 20_260_707


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def organism_tasks(model_path: str) -> SimpleNamespace:
    """The organism's task API bound to the checkpoint's own lexicon and tokenizer."""
    from retrieval_heads.organism import tasks

    gen = tasks.organism_generator(model_path)
    return SimpleNamespace(make_eval_set=partial(tasks.make_eval_set, generator=gen),
                           exact_match_accuracy=tasks.exact_match_accuracy, generator=gen)


def detect(model, tokenizer, tasks, args, out: Path) -> HeadScores:  # noqa: ANN001
    path = out / "head_scores.json"
    if path.exists():
        return HeadScores.load(path)
    from retrieval_heads.organism.measure import head_scores
    from retrieval_heads.organism.tasks import generate_answers

    examples = tasks.make_eval_set("mono", n=args.n_detect, seed=DETECT_SEED, lengths=(256, 512, 1024))
    answers = generate_answers(model, tokenizer, examples)
    correct = [a == ex.answer.strip() for a, ex in zip(answers, examples, strict=True)]
    scores, counted = head_scores(model, tokenizer, examples, correct, kind="retrieval")
    log(f"detect: {counted}/{len(examples)} prompts answered correctly and counted")
    result = HeadScores(scores, {"model": args.model, "method": "teacher-forced copy score (organism.measure)",
                                 "task": "mono", "lengths": [256, 512, 1024], "n_prompts": len(examples),
                                 "n_counted": counted, "seed": DETECT_SEED})
    result.save(path)
    return result


def training_prompts(tasks, args, out: Path) -> list[dict]:  # noqa: ANN001
    """Long-context prompts from the *training* key-name pool (evaluation uses the held-out one)."""
    path = out / "prompts.jsonl"
    if path.exists():
        return list(read_jsonl(path))
    rng = random.Random(PROMPT_SEED)
    rows = []
    for i in range(args.n_prompts):
        task = "multikey" if i % 3 != 2 else "mono"  # 2/3 multi-key with distractors, 1/3 monolingual
        length = args.lengths[i % len(args.lengths)]
        ex = tasks.generator.example(task, rng, length, split="train")
        rows.append({"id": f"{task}-{i}", "prompt": ex.prompt, "task": task, "length": length, "answer": ex.answer})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return rows


def pair_accuracy(pairs_path: Path, prompts: list[dict]) -> dict[str, float]:
    """How often chosen / rejected hold the right answer (kept pairs), a view of what DPO is taught."""
    answers = {p["id"]: p["answer"].strip() for p in prompts}
    rows = list(read_jsonl(pairs_path))
    if not rows:
        return {}
    return {
        "chosen_correct": sum(r["chosen"].strip() == answers[r["id"]] for r in rows) / len(rows),
        "rejected_correct": sum(r["rejected"].strip() == answers[r["id"]] for r in rows) / len(rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/retmask_organism")
    ap.add_argument("--model", default="organism", help="the built-in model, or a checkpoint trained like it")
    ap.add_argument("--k", type=int, default=None, help="heads to mask (default: 5%% of all heads)")
    ap.add_argument("--n-detect", type=int, default=60)
    ap.add_argument("--n-prompts", type=int, default=192)
    ap.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[512, 1024])
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--independent-seeds", action="store_true", help="chosen/rejected from different random streams")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lora", action="store_true", help="LoRA instead of full fine-tuning (the paper's)")
    ap.add_argument("--n-eval", type=int, default=100)
    ap.add_argument("--eval-lengths", type=lambda s: [int(x) for x in s.split(",")], default=[1024])
    ap.add_argument("--random-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model_path = resolve_model_path(args.model)
    model, tokenizer, spec = load_model(args.model, device="cpu")
    tasks = organism_tasks(model_path)

    scores = detect(model, tokenizer, tasks, args, out)
    k = args.k or max(1, math.ceil(0.05 * spec.n_total_heads))
    retrieval, info = choose_heads(scores, top_k=k)
    control, cinfo = choose_heads(scores, top_k=k, random_control_seed=args.random_seed)
    log(f"top-{k} heads: {', '.join(map(str, retrieval))}; control: {', '.join(map(str, control))}")
    log("concentration: " + json.dumps({k_: round(v, 3) for k_, v in info["concentration"].items()}))

    prompts = training_prompts(tasks, args, out)
    pair_cfg = PairConfig(temperature=args.temperature, max_new_tokens=args.max_new_tokens, stop=("\n",), seed=0,
                          batch_size=8, same_seed_for_both=not args.independent_seeds)
    arms = {"retmask": retrieval, "random": control}
    pair_stats = {}
    for arm, heads in arms.items():
        path = out / f"pairs_{arm}.jsonl"
        t = time.time()
        stats = generate_pairs(model, tokenizer, heads, prompts, pair_cfg, path, progress=False)
        pair_stats[arm] = {"n_pairs": stats.n_pairs, "dropped": stats.dropped, **pair_accuracy(path, prompts)}
        log(f"pairs[{arm}]: {stats.n_pairs} kept, dropped {stats.dropped} ({time.time() - t:.0f}s) "
            f"{json.dumps(pair_stats[arm])}")
    del model

    train_cfg = RetMaskTrainConfig(learning_rate=args.lr, num_train_epochs=args.epochs, beta=args.beta,
                                   use_lora=args.lora, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                                   gradient_checkpointing=False, logging_steps=1, seed=0)
    trained = {}
    for arm in arms:
        model_dir = out / f"model_{arm}"
        if pair_stats[arm]["n_pairs"] == 0:
            log(f"train[{arm}]: no pairs survived the filters; nothing to train")
            continue
        if not (model_dir / "retmask_run.json").exists():
            t = time.time()
            result = train_retmask(model_path, out / f"pairs_{arm}.jsonl", model_dir, train_cfg)
            curve = [h["loss"] for h in result.log_history if "loss" in h] or [float("nan")]
            acc = [h["rewards/accuracies"] for h in result.log_history if "rewards/accuracies" in h] or [float("nan")]
            log(f"train[{arm}]: {result.n_pairs} pairs, {len(curve)} steps, DPO loss {curve[0]:.4f} -> "
                f"{curve[-1]:.4f}, reward accuracy (last) {acc[-1]:.2f} ({time.time() - t:.0f}s)")
        trained[arm] = str(model_dir)

    eval_cfg = RetMaskEvalConfig(suites=("multikey_long", "mono_long", "cross", "multihop", "parametric"),
                                 n_per_task=args.n_eval, seed=EVAL_SEED, long_lengths=tuple(args.eval_lengths))
    t = time.time()
    report = evaluate_models(
        {"base": model_path, **{("random_control" if a == "random" else a): d for a, d in trained.items()}}, eval_cfg,
        scores=scores, out_dir=out, tasks=tasks,
        extra={"heads": {"retmask": info, "random_control": cinfo}, "pairs": pair_stats,
               "train_config": train_cfg.__dict__, "script_args": vars(args)},
    )
    log(f"evaluate: {time.time() - t:.0f}s; total {time.time() - started:.0f}s")
    print()
    print(format_table(report))
    print()
    print("head-score concentration:", json.dumps({k_: round(v, 3) for k_, v in report["concentration"].items()}))
    print("pairs:", json.dumps(pair_stats))
    atomic_write_json(out / "summary.json", {"results": report["results"], "pairs": pair_stats,
                                             "concentration": report["concentration"], "k": k,
                                             "pair_stats_files": [str(stats_path(out / f"pairs_{a}.jsonl")) for a in arms],
                                             "seconds": time.time() - started})


if __name__ == "__main__":
    main()
