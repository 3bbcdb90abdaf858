"""Retrieval-transition heads vs retrieval heads on one or more organism checkpoints (issue 20, items 8 and 4).

For every model in ``--models`` (the built-in name or a local checkpoint trained
like it, e.g. the fourth, 64-head checkpoint extracted from git) this

1. scores the heads with the copy rule (retrieval heads, RH) on the ``mono``
   prompts of every language in ``--langs``, and with the transition rules
   ``--rules`` (RTH; default ``lexicon`` and ``counterfactual``) on the
   ``cross`` prompts of every ordered pair; teacher mode, the organism's own
   prompts (``prompt_sources.build_prompts``);
2. per pair: Spearman of all head scores and the top-K overlap of each rule
   with the source language's copy score (K = 5 % of heads);
3. pooled (the mean over every counted prompt of all languages / pairs):
   the top-K sets, their Jaccard index and Spearman, the per-layer histogram
   of the top-K and each layer's share of the total score, and the
   concentration of each score map (``selection.concentration``: heads
   > 0.1, top-K and top-10 share, Gini, entropy);
4. masks (zero mode, every position) the pooled RH top-K, each rule's RTH
   top-K, the RH ranks K+1..2K, and K random heads outside the top-K sets and
   every head above 0.1 (``--seeds``) on held-out
   ``--tasks`` items (``task_suite(model).make_eval_set``, greedy exact
   match) and reports each accuracy with a 95 % bootstrap interval over
   items, each change against the unmasked model and the RTH - RH
   difference with paired bootstrap intervals (``headatlas.stats``).

    nice python experiments/rth_vs_rh.py runs/rth_vs_rh --models organism,runs/organism4

Cost (both models, 80 items a task, 5 seeds): ~25 min of wall time on 2 cores shared with other jobs;
re-reading every cache: ~2 min. The fourth checkpoint: ``git show 40f56ab:src/headatlas/organism/checkpoint/FILE``
for its seven files into a folder (docs/organism.md, "RTH vs RH on two models").

Every detection run resumes (``OUT/{tag}/copy-{lang}``, ``OUT/{tag}/{rule}-{src}-{tgt}``);
masking results are cached per arm (``OUT/{tag}/masking_items.json``). Results:
``OUT/{tag}/rth_vs_rh.json`` per model and ``OUT/rth_vs_rh.md`` (all models' tables).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from scipy.stats import spearmanr

from headatlas import load_model
from headatlas.builtins import task_suite
from headatlas.detect import DetectConfig, NoRetrievalError, detect
from headatlas.heads import Head, HeadScores
from headatlas.masking import masked_heads
from headatlas.organism.tasks import generate_answers
from headatlas.prompt_sources import PromptRequest, build_prompts
from headatlas.runs import atomic_write_json, atomic_write_text, run_metadata
from headatlas.selection import concentration, layer_histogram, overlap, random_heads, share_of_heads
from headatlas.stats import bootstrap_ci, paired_bootstrap_ci


def tag_of(model: str) -> str:
    """A folder name for ``model``: the built-in name, or the checkpoint folder's name."""
    return Path(model).name or model


def pool(runs: list[HeadScores]) -> HeadScores:
    """The score over the union of the runs' prompts: each run's mean weighted by its counted prompts."""
    counted = [int(r.meta.get("counted_prompts") or 0) for r in runs]
    total = sum(counted)
    scores = sum(r.scores * c for r, c in zip(runs, counted, strict=True)) / max(total, 1)
    return HeadScores(scores, meta={"counted_prompts": total, "pooled_runs": len(runs)})


def spearman(a: HeadScores, b: HeadScores) -> float:
    """Spearman correlation of two score maps over all heads."""
    return float(spearmanr(a.scores.flatten().numpy(), b.scores.flatten().numpy()).statistic)


def layer_share(s: HeadScores) -> list[float]:
    """Each layer's share of the total (clamped) score."""
    per_layer = s.scores.clamp(min=0).sum(dim=1)
    return [round(float(x), 3) for x in per_layer / per_layer.sum().clamp(min=1e-12)]


def ci(values: list[float]) -> list[float]:
    """Mean and 95 % bootstrap interval over items, in points."""
    return [round(100 * x, 1) for x in bootstrap_ci(values)]


def paired(reference: list[float], treated: list[float]) -> list[float]:
    """Mean change ``treated - reference`` and its paired 95 % bootstrap interval, in points."""
    return [round(100 * x, 1) for x in paired_bootstrap_ci(reference, treated)]


def per_prompt(run_dirs: list[Path], n_layers: int, n_heads: int) -> np.ndarray:
    """Each counted prompt's head scores (events / denominator), read from the runs' ``samples.jsonl``: [P, heads]."""
    rows: dict[str, np.ndarray] = {}
    for d in run_dirs:
        for line in (d / "samples.jsonl").read_text().splitlines():
            r = json.loads(line)
            if not r.get("counted"):
                continue
            v = np.zeros(n_layers * n_heads)
            for key, count in r["events"].items():
                h = Head.parse(key)
                v[h.layer * n_heads + h.head] = count / r["denominator"]
            rows[f"{d.name}|{r['prompt_id']}"] = v
    return np.stack(list(rows.values())) if rows else np.zeros((0, n_layers * n_heads))


def top_set(mat: np.ndarray, k: int) -> frozenset[int]:
    return frozenset(np.argsort(-mat.mean(axis=0), kind="stable")[:k].tolist())


def stability(rh: np.ndarray, rth: np.ndarray, k: int, n: int = 1000, seed: int = 0) -> dict:
    """Bootstrap over prompts: how often two independent resamples pick the same top-K set.

    ``rh~rth``: a resample of the copy prompts vs one of the transition prompts;
    ``rh~rh`` and ``rth~rth``: two resamples of the same prompts (the noise floor of the selection).
    """
    rng = np.random.default_rng(seed)

    def draw(m: np.ndarray) -> frozenset[int]:
        return top_set(m[rng.integers(0, len(m), len(m))], k)

    def jac(a: frozenset[int], b: frozenset[int]) -> float:
        return len(a & b) / len(a | b)

    out = {}
    for name, (a, b) in {"rh~rth": (rh, rth), "rh~rh": (rh, rh), "rth~rth": (rth, rth)}.items():
        pairs = [(draw(a), draw(b)) for _ in range(n)]
        out[name] = {"same_top_k": round(float(np.mean([x == y for x, y in pairs])), 3),
                     "mean_jaccard": round(float(np.mean([jac(x, y) for x, y in pairs])), 3)}
    return out


def layer_share_change(rh: np.ndarray, rth: np.ndarray, n_layers: int, n: int = 1000, seed: int = 0) -> list[list]:
    """Per layer: the RTH minus the RH share of the total score, with a 95 % bootstrap interval over prompts."""
    rng = np.random.default_rng(seed)

    def share(m: np.ndarray) -> np.ndarray:
        per_layer = m.mean(axis=0).reshape(n_layers, -1).sum(axis=1)
        return per_layer / max(per_layer.sum(), 1e-12)

    draws = np.stack([share(rth[rng.integers(0, len(rth), len(rth))]) - share(rh[rng.integers(0, len(rh), len(rh))])
                      for _ in range(n)])
    low, high = np.quantile(draws, [0.025, 0.975], axis=0)
    return [[round(float(d), 3), round(float(a), 3), round(float(b), 3)]
            for d, a, b in zip(share(rth) - share(rh), low, high, strict=True)]


def group_usage(mat: np.ndarray, n_heads: int, n_kv: int) -> dict[str, float]:
    """Share of prompts whose events fall mostly in each KV group ("L.gG"; "none": no event)."""
    size = n_heads // n_kv
    per_group = mat.reshape(len(mat), -1, size).sum(axis=2)  # [P, layers * kv groups]
    labels = [f"{i // n_kv}.g{i % n_kv}" if row.max() > 0 else "none" for i, row in
              zip(per_group.argmax(axis=1), per_group, strict=True)]
    return {g: round(labels.count(g) / len(labels), 3) for g in sorted(set(labels))}


def score_model(name: str, args: argparse.Namespace, console: Console) -> dict:
    out = args.out / tag_of(name)
    model, tokenizer, spec = load_model(name, dtype="float32", device="cpu")
    k = share_of_heads(spec.n_total_heads)
    window = getattr(model.config, "max_position_embeddings", None)
    request = PromptRequest(lengths=args.lengths, depths=args.depths, per_cell=args.per_cell, seed=args.seed)
    base = DetectConfig(mode="teacher", progress=False, table_rows=0, heatmap=False, seed=args.seed)

    def run(run_name: str, req: PromptRequest, cfg: DetectConfig) -> HeadScores | None:
        console.print(f"[bold]{tag_of(name)}/{run_name}[/]")
        try:
            return detect(model, tokenizer, build_prompts(name, tokenizer, window, req), cfg, out / run_name,
                          console=console)
        except NoRetrievalError as err:  # no prompt counted: say so, leave the run out of the pool
            console.print(f"[red]{run_name}: {err}[/]")
            return None

    copy = {lang: run(f"copy-{lang}", PromptRequest(**{**vars(request), "lang": lang}), base) for lang in args.langs}
    trans: dict[str, dict[str, HeadScores | None]] = {rule: {} for rule in args.rules}
    pairs = []
    for src, tgt in itertools.permutations(args.langs, 2):
        req = PromptRequest(**{**vars(request), "kind": "transition", "source_lang": src, "target_lang": tgt})
        for rule in args.rules:
            cfg = DetectConfig(**{**vars(base), "kind": "transition", "alignment": rule})
            trans[rule][f"{src}>{tgt}"] = run(f"{rule}-{src}-{tgt}", req, cfg)
        row: dict = {"pair": f"{src}>{tgt}"}
        for rule in args.rules:
            s, c = trans[rule][f"{src}>{tgt}"], copy[src]
            row[rule] = None if s is None or c is None else {
                "counted": s.meta.get("counted_prompts"), "spearman_vs_copy": round(spearman(s, c), 3),
                "top_k_overlap_vs_copy": len(set(s.top_k(k)) & set(c.top_k(k))),
                "top_k": [str(h) for h in s.top_k(k)], "copy_top_k": [str(h) for h in c.top_k(k)]}
        pairs.append(row)

    rh = pool([s for s in copy.values() if s is not None])
    pooled = {"copy": rh, **{rule: pool([s for s in runs.values() if s is not None]) for rule, runs in trans.items()}}
    for name_, s in pooled.items():  # e.g. for `--heads OUT/{tag}/pooled-copy.json` of retmask or compare
        s.meta.update(model=name, score=name_, pooled_over=args.langs)
        s.save(out / f"pooled-{name_}.json")
    tops = {name_: s.top_k(k) for name_, s in pooled.items()}
    summary = {}
    for name_, s in pooled.items():
        summary[name_] = {
            "counted_prompts": s.meta["counted_prompts"],
            "top_k": [[str(h), round(s[h], 3)] for h in tops[name_]],
            "next": [[str(h), round(s[h], 3)] for h, _ in s.ranked()[k:k + 3]],
            "layer_histogram_top_k": layer_histogram(tops[name_], spec.n_layers),
            "mean_layer_top_k": round(sum(h.layer for h in tops[name_]) / k, 2),
            "layer_share_of_score": layer_share(s),
            "concentration_top_k": {key: round(v, 4) for key, v in concentration(s, top=k).items()},
            "concentration_top_10": round(concentration(s, top=10)["top_10_share"], 4),
        }
        if name_ != "copy":
            summary[name_]["vs_copy"] = {**{key: round(v, 3) for key, v in overlap(tops[name_], tops["copy"]).items()},
                                         "spearman": round(spearman(s, rh), 3)}
    rh_mat = per_prompt([out / f"copy-{lang}" for lang in args.langs if copy[lang] is not None], spec.n_layers,
                        spec.n_heads)
    summary["copy"]["kv_group_of_prompt"] = group_usage(rh_mat, spec.n_heads, spec.n_kv_heads)
    for rule, runs in trans.items():
        mat = per_prompt([out / f"{rule}-{p.replace('>', '-')}" for p, s in runs.items() if s is not None],
                         spec.n_layers, spec.n_heads)
        check = float(np.abs(mat.mean(axis=0) - pooled[rule].scores.flatten().numpy()).max())
        summary[rule]["kv_group_of_prompt"] = group_usage(mat, spec.n_heads, spec.n_kv_heads)
        summary[rule]["selection_stability"] = stability(rh_mat, mat, k, seed=args.seed)
        summary[rule]["layer_share_minus_rh"] = layer_share_change(rh_mat, mat, spec.n_layers, seed=args.seed)
        summary[rule]["recomputed_max_abs_diff"] = check  # per-prompt scores vs the pooled detect scores
    if len(args.rules) == 2:
        a, b = args.rules
        summary["rules_agree"] = {**overlap(tops[a], tops[b]), "spearman": round(spearman(pooled[a], pooled[b]), 3)}
    masking = mask_arms(model, tokenizer, name, spec, k, pooled, args, out, console)
    return {"model": name, "n_heads": spec.n_total_heads, "k": k, "pairs": pairs, "pooled": summary,
            "masking": masking}


def mask_arms(model, tokenizer, name: str, spec, k: int, pooled: dict[str, HeadScores],  # noqa: ANN001
              args: argparse.Namespace, out: Path, console: Console) -> dict:
    """Per-item exact match of each arm on each task; cached in ``masking_items.json`` as it goes.

    The random heads are drawn outside every top-K set and every head scoring above 0.1 in any score map.
    """
    tops = {n: s.top_k(k) for n, s in pooled.items()}
    suite = task_suite(name)
    cache_path = out / "masking_items.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    exclude = sorted(set().union(*map(set, tops.values()), *(s.above(0.1) for s in pooled.values())))
    ranked = [h for h, _ in pooled["copy"].ranked()]
    arms: dict[str, list[Head]] = {"unmasked": [], "rh": tops["copy"], "rh-next": ranked[k:2 * k]}
    arms.update({f"rth-{rule}": tops[rule] for rule in args.rules})
    arms.update({f"random-{s}": random_heads(spec.n_layers, spec.n_heads, k, s, exclude=exclude) for s in args.seeds})
    result: dict = {"arms": {a: [str(h) for h in heads] for a, heads in arms.items()}, "tasks": {}}
    for task in args.tasks:
        items = suite.make_eval_set(task, args.n_items, seed=args.eval_seed)
        per_arm: dict[str, list[float]] = {}
        for arm, heads in arms.items():
            key = f"{task}|{arm}|{','.join(map(str, heads))}|{args.n_items}|{args.eval_seed}"
            if key not in cache:
                console.print(f"{tag_of(name)} masking {task} {arm} {[str(h) for h in heads]}")
                same = next((a for a, h in arms.items() if a in per_arm and set(h) == set(heads)), None)
                if same is not None:  # the same head set as an arm already run: the same answers
                    cache[key] = per_arm[same]
                else:
                    with masked_heads(model, heads, mode="zero"):
                        preds = generate_answers(model, tokenizer, items)
                    cache[key] = [float(p == ex.answer.strip()) for p, ex in zip(preds, items, strict=True)]
                atomic_write_json(cache_path, cache)
            per_arm[arm] = cache[key]
        rand = list(np.mean([per_arm[f"random-{s}"] for s in args.seeds], axis=0))
        base = per_arm["unmasked"]
        row: dict = {"n_items": len(items), "unmasked": ci(base)}
        for arm in ["rh", "rh-next", *(f"rth-{r}" for r in args.rules)]:
            row[arm] = {"acc": ci(per_arm[arm]), "change": paired(base, per_arm[arm])}
        row["random"] = {"acc": ci(rand), "change": paired(base, rand),
                         "per_seed": [round(100 * float(np.mean(per_arm[f"random-{s}"])), 1) for s in args.seeds]}
        row["rh-next_minus_rh"] = paired(per_arm["rh"], per_arm["rh-next"])
        for rule in args.rules:
            row[f"rth-{rule}_minus_rh"] = paired(per_arm["rh"], per_arm[f"rth-{rule}"])
        result["tasks"][task] = row
    return result


def markdown(results: list[dict], rules: list[str]) -> str:
    lines = []
    for res in results:
        k, p = res["k"], res["pooled"]
        lines += [f"### {res['model']} ({res['n_heads']} heads, K = {k})", "",
                  "| score | prompts counted | top-K (score) | next | top-K per layer | layer share of score | "
                  "heads > 0.1 | top-K share | top-10 share | Gini | vs RH: Jaccard / ρ |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name in ["copy", *rules]:
            s = p[name]
            c = s["concentration_top_k"]
            vs = f"{s['vs_copy']['jaccard']:.2f} / {s['vs_copy']['spearman']:.2f}" if "vs_copy" in s else "-"
            lines.append(f"| {'RH (copy)' if name == 'copy' else 'RTH ' + name} | {s['counted_prompts']} | "
                         + ", ".join(f"{h} ({v:.2f})" for h, v in s["top_k"]) + " | "
                         + ", ".join(f"{h} ({v:.2f})" for h, v in s["next"]) + f" | {s['layer_histogram_top_k']} | "
                         f"{s['layer_share_of_score']} | {c['n_above_0.1']} | {c[f'top_{k}_share']:.2f} | "
                         f"{s['concentration_top_10']:.2f} | {c['gini']:.3f} | {vs} |")
        lines += ["", "| pair | RH top-K (source language) | " + " | ".join(f"{r} top-K" for r in rules) + " | "
                  + " | ".join(f"{r}~copy ρ / top-{k}" for r in rules) + " |",
                  "|---|---|" + "---|" * (2 * len(rules))]
        for row in res["pairs"]:
            done = [r for r in rules if row[r] is not None]
            copy_top = " ".join(row[done[0]]["copy_top_k"]) if done else "-"
            heads = [" ".join(row[r]["top_k"]) if row[r] else "-" for r in rules]
            cells = [f"{row[r]['spearman_vs_copy']:.2f} / {row[r]['top_k_overlap_vs_copy']}" if row[r] else "-"
                     for r in rules]
            lines.append(f"| {row['pair']} | {copy_top} | " + " | ".join(heads + cells) + " |")
        lines += ["", "| task (items) | unmasked | RH top-K | " + " | ".join(f"RTH-{r} top-K" for r in rules)
                  + " | RH ranks K+1..2K | random K (mean of seeds) | " + " | ".join(f"RTH-{r} − RH" for r in rules)
                  + " |", "|---|---|---|" + "---|" * len(rules) + "---|---|" + "---|" * len(rules)]

        def fmt(arm: dict) -> str:
            a, d = arm["acc"], arm["change"]
            return f"{a[0]:.1f} ({d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}])"

        for task, row in res["masking"]["tasks"].items():
            lines.append(f"| {task} ({row['n_items']}) | {row['unmasked'][0]:.1f} [{row['unmasked'][1]:.1f}, "
                         f"{row['unmasked'][2]:.1f}] | {fmt(row['rh'])} | "
                         + " | ".join(fmt(row[f"rth-{r}"]) for r in rules) + f" | {fmt(row['rh-next'])} | "
                         f"{fmt(row['random'])} | "
                         + " | ".join("{:+.1f} [{:+.1f}, {:+.1f}]".format(*row[f"rth-{r}_minus_rh"]) for r in rules)
                         + " |")
        lines += ["", "Which KV group carries each counted prompt (share of prompts; the group holding most of its "
                  "events) and the bootstrap stability of the top-K set over prompts (1000 resamples):", ""]
        lines.append(f"- RH (copy): {p['copy']['kv_group_of_prompt']}")
        for r in rules:
            st = p[r]["selection_stability"]
            lines.append(f"- RTH {r}: {p[r]['kv_group_of_prompt']}; same top-K (mean Jaccard): RH vs RTH "
                         f"{st['rh~rth']['same_top_k']:.2f} ({st['rh~rth']['mean_jaccard']:.2f}), RH vs RH "
                         f"{st['rh~rh']['same_top_k']:.2f} ({st['rh~rh']['mean_jaccard']:.2f}), RTH vs RTH "
                         f"{st['rth~rth']['same_top_k']:.2f} ({st['rth~rth']['mean_jaccard']:.2f}); layer share of "
                         "score minus RH's (95 % CI): " + ", ".join(f"L{i} {d:+.2f} [{a:+.2f}, {b:+.2f}]"
                                                                   for i, (d, a, b) in enumerate(p[r]["layer_share_minus_rh"])))
        arms = res["masking"]["arms"]
        lines += ["", "Arms: " + "; ".join(f"{a}: {' '.join(h) or '-'}" for a, h in arms.items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (detection runs, masking cache, rth_vs_rh.json/.md)")
    parser.add_argument("--models", default="organism", help="comma-separated: built-in name or checkpoint folders")
    parser.add_argument("--langs", default="en,de,zh,sw")
    parser.add_argument("--rules", default="lexicon,counterfactual")
    parser.add_argument("--lengths", default="256,512,1024")
    parser.add_argument("--depths", default="0.1,0.5,0.9")
    parser.add_argument("--per-cell", type=int, default=1)
    parser.add_argument("--tasks", default="mono,cross,multihop")
    parser.add_argument("--n-items", type=int, default=60)
    parser.add_argument("--eval-seed", type=int, default=1)
    parser.add_argument("--seeds", default="0,1,2,3,4", help="random-heads control seeds")
    parser.add_argument("--seed", type=int, default=0, help="prompt seed of the detection runs")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.langs, args.rules, args.tasks = args.langs.split(","), args.rules.split(","), args.tasks.split(",")
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.depths = [float(x) for x in args.depths.split(",")]
    args.seeds = [int(x) for x in args.seeds.split(",")]
    console = Console(stderr=True)
    started = time.time()
    results = []
    for name in args.models.split(","):
        res = score_model(name, args, console)
        res["meta"] = run_metadata(model=name, langs=args.langs, rules=args.rules, lengths=args.lengths,
                                   depths=args.depths, per_cell=args.per_cell, tasks=args.tasks,
                                   n_items=args.n_items, eval_seed=args.eval_seed, seeds=args.seeds,
                                   seconds=round(time.time() - started, 1))
        atomic_write_json(args.out / tag_of(name) / "rth_vs_rh.json", res)
        results.append(res)
    table = markdown(results, args.rules)
    atomic_write_text(args.out / "rth_vs_rh.md", table + "\n")
    print(table)
    print(json.dumps({"seconds": round(time.time() - started, 1)}))


if __name__ == "__main__":
    main()
