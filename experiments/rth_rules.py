"""Compare the three retrieval-transition rules on the built-in model (issue 20, item 7).

For every ordered pair of ``--langs`` this scores the model's heads with the
transition rules ``lexicon``, ``span`` and ``counterfactual`` on the same
cross-lingual prompts, and the copy (retrieval) score on monolingual prompts
of the source language, then prints, per pair, the Spearman correlation of
the 128 head scores and the overlap of the top-K sets (K = 5 % of the heads)
between every two rules and between each rule and the copy score.

    nice python experiments/rth_rules.py runs/rth_rules --per-cell 1   # the table in docs/multilingual.md
    nice python experiments/rth_rules.py runs/rth_rules --langs en,de --lengths 256 --depths 0.5

Cost: 4 copy runs + 36 rule runs; with ``--per-cell 1`` (9-10 prompts a run)
5.3 min of CPU (14 min on two shared cores); ``--per-cell 2`` doubles it.

Every detection run resumes (``OUT/copy-{lang}``, ``OUT/{rule}-{src}-{tgt}``);
the table is also written to ``OUT/rth_rules.json`` and ``OUT/rth_rules.md``
with the model, settings and versions.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from rich.console import Console
from scipy.stats import spearmanr

from headatlas import load_model
from headatlas.detect import DetectConfig, detect
from headatlas.heads import HeadScores
from headatlas.prompt_sources import PromptRequest, build_prompts
from headatlas.runs import atomic_write_json, atomic_write_text, run_metadata
from headatlas.selection import share_of_heads

RULES = ("lexicon", "span", "counterfactual")
COMPARISONS = [*itertools.combinations(RULES, 2), *((r, "copy") for r in RULES)]


def compare(a: HeadScores, b: HeadScores, k: int) -> tuple[float, int]:
    """Spearman correlation of two score maps (all heads) and the size of their top-``k`` intersection."""
    rho = float(spearmanr(a.scores.flatten().numpy(), b.scores.flatten().numpy()).statistic)
    return rho, len(set(a.top_k(k)) & set(b.top_k(k)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (detection runs, rth_rules.json, rth_rules.md)")
    parser.add_argument("--model", default="organism")
    parser.add_argument("--langs", default="en,de,zh,sw")
    parser.add_argument("--lengths", default="256,512,1024")
    parser.add_argument("--depths", default="0.1,0.5,0.9")
    parser.add_argument("--per-cell", type=int, default=2)
    parser.add_argument("--mode", default="teacher", choices=("teacher", "greedy"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    console = Console(stderr=True)
    langs = args.langs.split(",")
    lengths = [int(x) for x in args.lengths.split(",")]
    depths = [float(x) for x in args.depths.split(",")]
    model, tokenizer, spec = load_model(args.model, dtype="float32", device="cpu")
    k = share_of_heads(spec.n_total_heads)
    window = getattr(model.config, "max_position_embeddings", None)
    request = PromptRequest(lengths=lengths, depths=depths, per_cell=args.per_cell, seed=args.seed)
    base = DetectConfig(mode=args.mode, progress=False, table_rows=0, heatmap=False, seed=args.seed)
    started = time.time()

    def run(name: str, req: PromptRequest, cfg: DetectConfig) -> HeadScores:
        console.print(f"[bold]{name}[/]")
        return detect(model, tokenizer, build_prompts(args.model, tokenizer, window, req), cfg, args.out / name,
                      console=console)

    copy = {lang: run(f"copy-{lang}", PromptRequest(**{**vars(request), "lang": lang}), base) for lang in langs}
    rows = []
    for src, tgt in itertools.permutations(langs, 2):
        req = PromptRequest(**{**vars(request), "kind": "transition", "source_lang": src, "target_lang": tgt})
        scores = {rule: run(f"{rule}-{src}-{tgt}", req, DetectConfig(**{**vars(base), "kind": "transition",
                                                                         "alignment": rule}))
                  for rule in RULES}
        scores["copy"] = copy[src]
        row = {"pair": f"{src}>{tgt}",
               "counted": {r: scores[r].meta.get("counted_prompts") for r in RULES},
               "n_prompts": scores["span"].meta.get("n_prompts")}
        for a, b in COMPARISONS:
            rho, overlap = compare(scores[a], scores[b], k)
            row[f"{a}~{b}"] = {"spearman": rho, "top_k_overlap": overlap}
        rows.append(row)

    header = "| pair | " + " | ".join(f"{a}~{b} ρ / top-{k}" for a, b in COMPARISONS) + " |"
    lines = [header, "|" + "---|" * (len(COMPARISONS) + 1)]
    for row in rows:
        cells = [f"{row[f'{a}~{b}']['spearman']:.2f} / {row[f'{a}~{b}']['top_k_overlap']}" for a, b in COMPARISONS]
        lines.append(f"| {row['pair']} | " + " | ".join(cells) + " |")
    means = [(sum(r[f"{a}~{b}"]["spearman"] for r in rows) / len(rows),
              sum(r[f"{a}~{b}"]["top_k_overlap"] for r in rows) / len(rows)) for a, b in COMPARISONS]
    lines.append("| **mean** | " + " | ".join(f"**{rho:.2f} / {ov:.1f}**" for rho, ov in means) + " |")
    table = "\n".join(lines)
    meta = run_metadata(model=args.model, langs=langs, lengths=lengths, depths=depths, per_cell=args.per_cell,
                        mode=args.mode, seed=args.seed, top_k=k, seconds=round(time.time() - started, 1))
    atomic_write_json(args.out / "rth_rules.json", {"format": "headatlas/rth-rules", "rows": rows, "meta": meta})
    atomic_write_text(args.out / "rth_rules.md", table + "\n")
    print(table)
    print(json.dumps({"seconds": meta["seconds"], "top_k": k}))


if __name__ == "__main__":
    main()
