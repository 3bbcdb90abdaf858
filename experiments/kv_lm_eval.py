"""The built-in model's tasks as lm-eval tasks over the compressed KV cache (``kv-hf``): full vs retrieval KV
heads vs random KV heads at equal memory, with bootstrap 95 % intervals (``headatlas.stats``).

    OMP_NUM_THREADS=1 nice -n 10 python experiments/kv_lm_eval.py --heads runs/rh/head_scores.json \\
        --out runs/kv-lm-eval --limit 40 --sink 4 --window 64

One model in memory, one ``KVHFLM`` per condition (``kv_heads=all|retrieval|random`` with ``--seeds`` seeds, ``none`` with ``--windowed``),
``lm_eval.simple_evaluate`` on ``organism_{mono,cross,multihop,multikey,parametric}`` with its samples
logged; each condition's per-sample exact match goes to ``OUT/<condition>.json`` (a rerun skips
finished conditions) and the table (accuracy [95 % CI] per task, KV heads kept) is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TASKS = ["organism_mono", "organism_cross", "organism_multihop", "organism_multikey", "organism_parametric"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heads", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--sink", type=int, default=4)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--windowed", action="store_true", help="also every KV head streaming (kv_heads=none)")
    args = p.parse_args()

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from headatlas.evaluate.fixtures import TASKS_DIR
    from headatlas.kvcache.lm_eval_backend import KVHFLM
    from headatlas.model_spec import load_model
    from headatlas.stats import bootstrap_ci

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tok, _ = load_model("organism")
    tm = TaskManager(include_path=[str(TASKS_DIR)], include_defaults=False)
    conditions = [("full", {"kv_heads": "all"}), ("retrieval", {"kv_heads": "retrieval"})]
    conditions += [(f"random-s{s}", {"kv_heads": "random", "seed": s}) for s in range(args.seeds)]
    conditions += [("windowed", {"kv_heads": "none"})] if args.windowed else []
    table = {}
    for name, kv in conditions:
        path = out / f"{name}.json"
        if not path.exists():
            lm = KVHFLM.from_model(model, tok, heads=args.heads, sink=args.sink, window=args.window, batch_size=1, **kv)
            res = simple_evaluate(model=lm, tasks=TASKS, task_manager=tm, limit=args.limit, bootstrap_iters=0,
                                  log_samples=True)
            per_task = {t: [float(s["exact_match"]) for s in res["samples"][t]] for t in TASKS}
            path.write_text(json.dumps({"kv_heads_kept": lm.get_model_info()["kv_heads_kept"], "sink": args.sink,
                                        "window": args.window, "exact_match": per_task}, indent=1))
        table[name] = json.loads(path.read_text())
    print(f"| condition | KV heads kept | {' | '.join(t.removeprefix('organism_') for t in TASKS)} |")
    print("|---|---|" + "---|" * len(TASKS))
    for name, rec in table.items():
        cells = []
        for t in TASKS:
            mean, low, high = bootstrap_ci(rec["exact_match"][t])
            cells.append(f"{mean:.2f} [{low:.2f}, {high:.2f}]")
        kept = rec["kv_heads_kept"]
        print(f"| {name} | {len(kept)} ({', '.join(kept) if len(kept) <= 2 else 'all' if len(kept) == 16 else '...'}) | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
