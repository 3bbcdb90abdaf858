"""NIAH exact match against KV memory: the retrieval KV heads kept whole vs budgets, random KV heads and the full cache.

Conditions (the same prompts through :func:`~headatlas.generation.generate` over a :class:`HeadSplitCache`):

- ``full``: every KV head kept (equal to the normal cache bit for bit);
- ``windowed``: no KV head kept (every head sink + window);
- ``retrieval``: the KV heads holding the top-K heads of the score file (``any`` rule);
- ``random-retrieval``: as many KV heads, drawn outside them (one per seed);
- ``top-B``: the B KV heads with the best aggregated (max/mean) score, for each budget B
  (in total, or with ``per_layer`` in every layer: ``top-Bpl``);
- ``random-top-B``: B KV heads drawn outside the top-B ones (one per seed; per layer with ``per_layer``).

With ``needle_counts`` beyond 1, every condition also runs multi-needle prompts (RULER's multi-key NIAH:
N needles of the same relation, the question asks one; from the built-in model's prompt source), and
each row reports tokens per second (prompt and answer tokens over the generation's wall time) beside
accuracy and memory.

Answers go to ``journal.jsonl`` (a rerun resumes); the result to ``kv_compress.json`` and ``kv_compress.png``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runs import HeadCondition, HeadRunConfig, track
from .plan import KVHead

RESULT_FILE = "kv_compress.json"
FIGURE_FILE = "kv_compress.png"


@dataclass(kw_only=True)
class KVCompressConfig(HeadRunConfig):
    """Settings of one ``kv-compress`` run (all recorded in the result)."""

    budgets: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    aggregate: str = "max"
    per_layer: bool = False  # budgets count KV heads per layer instead of in total
    sink: int = 4
    window: int = 64
    lengths: list[int] = field(default_factory=lambda: [1024, 1536, 2000])
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    per_cell: int = 2
    prefill_chunk: int = 256
    needle_counts: list[int] = field(default_factory=lambda: [1])  # needles a prompt (> 1: multi-key NIAH)

    def __post_init__(self) -> None:
        from .plan import AGGREGATES

        if self.aggregate not in AGGREGATES:
            raise ValueError(f"--aggregate must be one of {AGGREGATES}")
        if not self.needle_counts or any(n < 1 for n in self.needle_counts):
            raise ValueError(f"--needle-counts {','.join(map(str, self.needle_counts))}: give counts >= 1, e.g. 1,4,8")


@dataclass
class Condition(HeadCondition):
    """``heads``: the KV heads kept whole; ``budget``: how many; ``query_heads``: the head set they hold (retrieval)."""

    budget: int
    seed: int | None = None
    query_heads: list[Any] = field(default_factory=list)


def conditions(config: KVCompressConfig, scores: Any, n_layers: int, n_heads: int, n_kv: int) -> list[Condition]:
    """Every condition of the run, in run order."""
    from ..selection import HeadSelection
    from .plan import kv_heads_of, random_kv_heads, top_kv_heads

    total = n_layers * n_kv
    everything = [KVHead(layer, g) for layer in range(n_layers) for g in range(n_kv)]
    top = HeadSelection(scores=scores, top_k=config.top_k).resolve(n_layers, n_heads)
    retrieval = kv_heads_of(top, n_heads, n_kv)
    out = [Condition("full", "full", everything, total), Condition("windowed", "windowed", [], 0),
           Condition("retrieval", "retrieval", retrieval, len(retrieval), query_heads=top)]
    seeds = [config.seed + i for i in range(config.random_seeds)]
    out += [Condition(f"random-retrieval-s{s}", "random-retrieval", random_kv_heads(n_layers, n_kv, len(retrieval), s,
                                                                                  retrieval), len(retrieval), s)
            for s in seeds]
    pl, size = ("pl", n_kv) if config.per_layer else ("", total)  # a per-layer budget counts in every layer
    for b in sorted(set(config.budgets)):
        if not 0 < b < size:
            continue
        chosen = top_kv_heads(scores, n_kv, b, config.aggregate, config.per_layer)  # type: ignore[arg-type]
        kept = b * n_layers if config.per_layer else b
        out.append(Condition(f"top-{b}{pl}", "top", chosen, kept))
        if size - b >= b:
            out += [Condition(f"random-top-{b}{pl}-s{s}", "random-top",
                              random_kv_heads(n_layers, n_kv, b, s, chosen, config.per_layer), kept, s) for s in seeds]
    return out


def n_of(prompt: Any) -> int:
    """Needles in a prompt (the built-in prompt source records it; a haystack prompt has one)."""
    return int((getattr(prompt, "meta", {}) or {}).get("n_needles", 1))


def expected_answer(prompt: Any) -> str:
    """What an exact-match answer must be: the organism's expected answer, or the needle's (target) answer."""
    meta = getattr(prompt, "meta", {}) or {}
    return str(meta.get("expected_answer") or prompt.needle.target_answer or prompt.needle.answer).strip()


def run_kv_compress(config: KVCompressConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the experiment; return the result written to ``out/kv_compress.json``."""
    from ..generation import StopTokens, generate
    from ..heads import HeadScores, heads_to_strings
    from ..model_spec import load_model, model_identity
    from ..prompt_sources import PromptRequest, build_prompts
    from .attention import compressed_attention
    from .cache import HeadSplitCache
    from .plan import full_per_layer

    scores = HeadScores.load(config.heads)
    model, tokenizer, spec = load_model(config.model, dtype=config.dtype, device=config.device)
    scores.check_model(spec.n_layers, spec.n_heads, config.model)
    conds = conditions(config, scores, spec.n_layers, spec.n_heads, spec.n_kv_heads)
    prompts = []
    for n_needles in sorted(set(config.needle_counts)):
        group = build_prompts(config.model, tokenizer, spec.max_positions, PromptRequest(
            lengths=config.lengths, depths=config.depths, per_cell=config.per_cell, seed=config.seed,
            n_needles=n_needles))
        prompts += group
    identity = model_identity(model)
    run = config.open_run("kv-compress", identity["weights"])
    done = {(r["condition"], r["prompt_id"]): r for r in run.records()}
    stops = StopTokens.from_tokenizer(model, tokenizer)
    stops = StopTokens(stops.eos, stops.newline, stops.blank)  # a newline ends an answer only once it has begun
    wanted = {(c.name, p.meta["prompt_id"]) for c in conds for p in prompts}
    with track("kv-compress", len(wanted), len(wanted & set(done)), enabled=progress) as bar:
        for cond in conds:
            full = full_per_layer(cond.heads, spec.n_layers)
            for p in prompts:
                pid = p.meta["prompt_id"]
                if (cond.name, pid) not in done:
                    cache = HeadSplitCache(full, spec.n_kv_heads, config.sink, config.window)
                    start = time.perf_counter()
                    with compressed_attention(model):  # chunked prefill: the prompt is read with the compressed cache
                        o = generate(model, [p.input_ids], config.max_new_tokens, stops, cache=cache,
                                     prefill_chunk=config.prefill_chunk)
                    seconds = time.perf_counter() - start
                    tokens = o.tokens[0, : int(o.n_tokens[0])].tolist()
                    text = tokenizer.decode(tokens, skip_special_tokens=True).split("\n", 1)[0].strip()
                    record = {"condition": cond.name, "prompt_id": pid, "length": len(p.input_ids),
                              "answer": text, "expected": expected_answer(p), "kv_bytes": cache.peak_bytes,
                              "needles": n_of(p), "seconds": seconds,
                              "tokens_per_s": (len(p.input_ids) + len(tokens)) / seconds}
                    record["correct"] = float(text == record["expected"])
                    run.append(record)
                    done[(cond.name, pid)] = record
                    bar.advance()
    top = next(c for c in conds if c.kind == "retrieval").query_heads
    counts = sorted({n_of(p) for p in prompts})
    summary = summarize(conds, [p for p in prompts if n_of(p) == counts[0]], done)
    if len(counts) > 1:  # per needle count, the same summary (the top level is the smallest count's)
        summary["by_needles"] = {str(n): summarize(conds, [p for p in prompts if n_of(p) == n], done) for n in counts}
    result = config.write_result("kv-compress", RESULT_FILE, identity, summary, top_heads=heads_to_strings(top))
    plot_curve(result, Path(config.out) / FIGURE_FILE)
    return result


def summarize(conds: list[Condition], prompts: list[Any], done: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """Per-condition accuracy (bootstrap 95 % interval), mean peak KV bytes, and the random controls averaged over seeds."""
    import statistics

    from ..stats import bootstrap_ci

    rows = []
    for c in conds:
        recs = [done[(c.name, p.meta["prompt_id"])] for p in prompts]
        acc, low, high = bootstrap_ci([r["correct"] for r in recs])
        kv = sum(r["kv_bytes"] for r in recs) / len(recs)
        speed = [r["tokens_per_s"] for r in recs if "tokens_per_s" in r]  # journals before 2026-12-08 lack it
        rows.append({"name": c.name, "kind": c.kind, "budget": c.budget, "seed": c.seed,
                     "kv_heads": [str(k) for k in c.heads], "accuracy": acc, "ci95": [low, high],
                     "kv_bytes": kv, "n": len(recs), "needles": recs[0].get("needles", 1) if recs else 1,
                     "tokens_per_s": statistics.median(speed) if speed else None})
    full = next(r for r in rows if r["kind"] == "full")
    for r in rows:
        r["kv_share"] = r["kv_bytes"] / full["kv_bytes"]
    controls: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["kind"].startswith("random"):
            controls.setdefault(r["name"].rsplit("-s", 1)[0], []).append(r)
    averaged = {k: {"accuracy": sum(x["accuracy"] for x in v) / len(v), "per_seed": [x["accuracy"] for x in v],
                    "kv_bytes": sum(x["kv_bytes"] for x in v) / len(v)} for k, v in controls.items()}
    retrieval = next(r for r in rows if r["kind"] == "retrieval")
    headline = {
        "full_accuracy": full["accuracy"], "retrieval_accuracy": retrieval["accuracy"],
        "random_retrieval_accuracy": averaged.get("random-retrieval", {}).get("accuracy"),
        "windowed_accuracy": next(r for r in rows if r["kind"] == "windowed")["accuracy"],
        "retrieval_kv_share": retrieval["kv_share"], "full_kv_bytes": full["kv_bytes"],
        "retrieval_kv_bytes": retrieval["kv_bytes"],
    }
    return {"n_prompts": len(prompts), "conditions": rows, "random_controls": averaged, "headline": headline}


def plot_curve(result: dict[str, Any], path: str | Path) -> Path:
    """Accuracy vs KV memory (share of the full cache): budgets, their random controls, retrieval, windowed, full."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = result["conditions"]
    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    top = sorted([r for r in rows if r["kind"] in ("top", "full", "windowed")], key=lambda r: r["kv_share"])
    ax.plot([r["kv_share"] for r in top], [r["accuracy"] for r in top], "o-", label="top-B KV heads by score")
    rand = result["random_controls"]
    pts = [(v["kv_bytes"] / result["headline"]["full_kv_bytes"], v["accuracy"]) for v in rand.values()]
    if pts:
        ax.plot(*zip(*sorted(pts), strict=True), "s--", color="grey", label="random KV heads (mean over seeds)")
    ret = next(r for r in rows if r["kind"] == "retrieval")
    ax.plot([ret["kv_share"]], [ret["accuracy"]], "*", ms=14, color="C3", label="retrieval KV heads (any rule)")
    ax.set_xlabel("KV memory (share of the full cache)")
    ax.set_ylabel("NIAH exact match")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(loc="lower right", fontsize=8)
    meta = result.get("meta", {}).get("settings", {})
    ax.set_title(f"{Path(str(result.get('meta', {}).get('model', ''))).name}: sink {meta.get('sink')}, window {meta.get('window')}",
                 fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
