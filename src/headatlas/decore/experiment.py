"""Faithfulness under knowledge conflict: base vs DeCoRe with the retrieval heads vs DeCoRe with random heads.

Items are dicts ``{"id", "prompt", "context_answer"?, "memory_answer"?}`` (the organism's conflict task,
or a JSONL file). Every answer goes to ``journal.jsonl`` (a rerun resumes); the rates of answers equal to
the context's value (faithful) and to the memorised one, with bootstrap 95 % intervals, go to
``decore.json`` (format ``headatlas/decore``) and ``decore.png``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..config import setting, split_list
from ..head_run import HeadCondition, HeadRunConfig
from ..runs import track

RESULT_FILE = "decore.json"
FIGURE_FILE = "decore.png"


@dataclass(kw_only=True)
class DecoreRunConfig(HeadRunConfig):
    """Settings of one ``decore`` run (all recorded in the result); ``source`` is set from --task/--prompts."""

    source: str = ""  # "task:conflict" or a prompts file
    alphas: list[float] = setting(help="Fixed contrast strength a; a comma list runs each.", factory=lambda: [1.0],
                                  flags=("--alpha",), parse=partial(split_list, kind=float))
    dynamic: bool = setting(False, "a = entropy of p_base (DeCoRe's dynamic rule) instead of --alpha.")
    normalise: bool = setting(False, "With --dynamic: divide the entropy by log |V|.")
    cap: float | None = setting(None, "With --dynamic: cap a at this value.", min=0, min_open=True)
    mode: str = setting("uniform", "Masking operator of the contrast stream: uniform | zero.")
    masked_prefill: bool = setting(False, "Prefill the masked stream masked too (DeCoRe: unmasked).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("uniform", "zero"):
            raise ValueError("--mode must be uniform or zero")
        if bad := [a for a in self.alphas if not math.isfinite(a)]:
            raise ValueError(f"--alpha {','.join(map(str, bad))}: the contrast strength must be a finite number")
        if not self.dynamic and not self.alphas:
            raise ValueError("--alpha: give at least one contrast strength")
        if self.cap is not None and not math.isfinite(self.cap):
            raise ValueError(f"--cap {self.cap}: the cap must be a finite number")


@dataclass
class Condition(HeadCondition):
    """``heads``: masked in the contrast stream; ``alpha``: its strength (``None``: base, or dynamic)."""

    alpha: float | None
    seed: int | None = None


def conditions(config: DecoreRunConfig, scores: Any, n_layers: int, n_heads: int) -> list[Condition]:
    """Base, then per alpha (or once, dynamic): DeCoRe with the top-K heads and with random heads per seed
    (:class:`~headatlas.selection.HeadSelection`'s random control: drawn outside the top-K)."""
    from ..selection import HeadSelection

    top = HeadSelection(scores=scores, top_k=config.top_k).resolve(n_layers, n_heads)
    randoms = {s: HeadSelection(scores=scores, top_k=config.top_k, random_seed=s).resolve(n_layers, n_heads)
               for s in range(config.seed, config.seed + config.random_seeds)}
    out = [Condition("base", "base", [], None)]
    for a in ([None] if config.dynamic else config.alphas):
        tag = "dyn" if a is None else f"a{a:g}"
        out.append(Condition(f"retrieval-{tag}", "retrieval", top, a))
        out += [Condition(f"random-{tag}-s{s}", "random", heads, a, s) for s, heads in randoms.items()]
    return out


def run_decore(config: DecoreRunConfig, items: list[dict[str, Any]], progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every condition on ``items``; return the result written to ``out/decore.json``."""
    from ..heads import HeadScores, heads_to_strings
    from ..model_spec import load_model, model_identity
    from ..prompt_sources import check_window
    from ..selection import load_scores
    from .decoding import decore_generate

    if not items:
        raise ValueError("no prompts to decode")
    HeadScores.load(config.heads)  # a corrupt file is refused before the model loads
    model, tokenizer, spec = load_model(config.model, dtype=config.dtype, device=config.device, device_map=config.device_map,
                                        attn_implementation=config.attn_implementation)
    scores = load_scores(config.heads, spec.n_layers, spec.n_heads, config.model, config.allow_other_model)
    check_window([len(tokenizer(it["prompt"], verbose=False)["input_ids"]) for it in items], spec.max_positions,
                 hint="use shorter prompts (--lengths, or shorter ones in --prompts)")
    conds = conditions(config, scores, spec.n_layers, spec.n_heads)
    top = next(c.heads for c in conds if c.kind == "retrieval")
    identity = model_identity(model)
    run = config.open_run("decore", identity["weights"], **{"prompt ids": [it["id"] for it in items]})
    done = {(r["condition"], r["id"]): r for r in run.records()}
    wanted = {(c.name, it["id"]) for c in conds for it in items}
    with track("decore", len(wanted), len(wanted & set(done)), enabled=progress) as bar:
        for c in conds:
            for it in items:
                if (c.name, it["id"]) not in done:
                    o = decore_generate(
                        model, tokenizer, [it["prompt"]], c.heads, alpha=c.alpha or 0.0,
                        dynamic=config.dynamic and c.kind != "base", normalise=config.normalise, cap=config.cap,
                        mode=config.mode, masked_prefill=config.masked_prefill, max_new_tokens=config.max_new_tokens,
                    )[0]  # fmt: skip
                    rec = {"condition": c.name, "id": it["id"], "answer": o.text,
                           "faithful": _match(o.text, it.get("context_answer")),
                           "memorised": _match(o.text, it.get("memory_answer")),
                           "mean_alpha": sum(o.alphas) / len(o.alphas) if o.alphas else None}
                    run.append(rec)
                    done[(c.name, it["id"])] = rec
                    bar.advance()
    result = config.write_result("decore", RESULT_FILE, identity, summarize(conds, items, done),
                                 heads=heads_to_strings(top), n_items=len(items))
    if result["scored"]:
        plot_rates(result, Path(config.out) / FIGURE_FILE)
    return result


def _match(answer: str, expected: str | None) -> float | None:
    return None if expected is None else float(answer.strip() == str(expected).strip())


def summarize(conds: list[Condition], items: list[dict[str, Any]], done: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """Faithful and memorised rates per condition (bootstrap 95 %), random controls pooled over seeds."""
    from ..stats import bootstrap_ci

    def rates(recs: list[dict[str, Any]]) -> dict[str, Any]:
        row: dict[str, Any] = {"n": len(recs)}
        for key in ("faithful", "memorised"):
            vals = [r[key] for r in recs if r[key] is not None]
            if vals:
                mean, low, high = bootstrap_ci(vals)
                row[key] = {"rate": mean, "ci95": [low, high]}
        return row

    rows = []
    for c in conds:
        recs = [done[(c.name, it["id"])] for it in items]
        rows.append({"name": c.name, "kind": c.kind, "alpha": c.alpha, "seed": c.seed,
                     "heads": [str(h) for h in c.heads], **rates(recs)})
    pooled = {}
    for c in conds:
        if c.kind == "random":
            group = c.name.rsplit("-s", 1)[0]
            pooled.setdefault(group, []).extend(done[(c.name, it["id"])] for it in items)
    random_pooled = {g: rates(recs) for g, recs in pooled.items()}
    scored = any("faithful" in r for r in rows)
    return {"n_items": len(items), "conditions": rows, "random_pooled": random_pooled, "scored": scored}


def plot_rates(result: dict[str, Any], path: str | Path) -> Path:
    """Faithful-answer rate with 95 % intervals: base, DeCoRe (retrieval heads), DeCoRe (random heads, pooled)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bars = [(r["name"], r["faithful"]) for r in result["conditions"] if r["kind"] != "random" and "faithful" in r]
    bars += [(f"{g} (pooled)", v["faithful"]) for g, v in result["random_pooled"].items() if "faithful" in v]
    fig = Figure(figsize=(max(4.0, 1.1 * len(bars)), 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = range(len(bars))
    means = [b[1]["rate"] for b in bars]
    err = [[m - b[1]["ci95"][0] for m, b in zip(means, bars, strict=True)],
           [b[1]["ci95"][1] - m for m, b in zip(means, bars, strict=True)]]
    ax.bar(xs, means, yerr=err, capsize=4, color=["C0" if n == "base" else "C3" if "retrieval" in n else "grey"
                                                  for n, _ in bars])
    ax.set_xticks(list(xs), [b[0] for b in bars], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("answers = the context's value")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"DeCoRe on knowledge conflicts ({Path(str(result.get('meta', {}).get('model', ''))).name})", fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
