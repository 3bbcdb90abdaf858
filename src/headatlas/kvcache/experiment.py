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
from functools import partial
from pathlib import Path
from typing import Any

from ..config import GridConfig, like, setting, split_list
from ..head_run import HeadCondition, HeadRunConfig
from ..niah.prompts import parse_depths, parse_lengths
from ..runs import track

RESULT_FILE = "kv_compress.json"
FIGURE_FILE = "kv_compress.png"


@dataclass(kw_only=True)
class KVCompressConfig(HeadRunConfig):
    """Settings of one ``kv-compress`` run (all recorded in the result)."""

    budgets: list[int] | None = setting(None, "KV heads kept whole (in total) for the score-ranked curve, e.g. "
                                        "'1,2,4,8' (default: 1, 2, 4, ... up to the KV heads holding a scored head).",
                                        parse=partial(split_list, kind=int))
    aggregate: str = setting("max", "Score of a KV head for the budgets: max | mean of its query heads.")
    per_layer: bool = setting(False, "--budgets count KV heads per layer (1 .. n_kv-1) instead of in total.")
    sink: int = setting(4, "Attention-sink tokens every streaming KV head keeps.", min=0)
    window: int = setting(64, "Recent tokens every streaming KV head keeps.", min=1)
    lengths: list[int] = like(GridConfig, "lengths", [1024, 1536, 2000], parse=parse_lengths)
    depths: list[float] = like(GridConfig, "depths", [0.0, 0.25, 0.5, 0.75, 1.0], parse=parse_depths)
    per_cell: int = like(GridConfig, "per_cell", 2)
    prefill_chunk: int = setting(256, "Prompt tokens per prefill forward.", min=1, resume=True)
    needle_counts: list[int] = setting(help="Needles a prompt, e.g. '1,4,8' (> 1: multi-key NIAH, the question asks "
                                       "one; built-in models).", factory=lambda: [1], parse=partial(split_list, kind=int))

    def __post_init__(self) -> None:
        super().__post_init__()
        from .plan import AGGREGATES

        if self.aggregate not in AGGREGATES:
            raise ValueError(f"--aggregate must be one of {AGGREGATES}")
        if bad := [b for b in self.budgets or () if b < 1]:
            raise ValueError(f"--budgets {','.join(map(str, bad))}: a budget counts KV heads kept whole, at least 1")
        if not self.needle_counts or any(n < 1 for n in self.needle_counts):
            raise ValueError(f"--needle-counts {','.join(map(str, self.needle_counts))}: give counts >= 1, e.g. 1,4,8")


@dataclass
class Condition(HeadCondition):
    """``heads``: the KV heads kept whole; ``budget``: how many; ``query_heads``: the head set they hold (retrieval)."""

    budget: int
    seed: int | None = None
    query_heads: list[Any] = field(default_factory=list)


def conditions(config: KVCompressConfig, scores: Any, n_layers: int, n_heads: int, n_kv: int,
               layers: list[int] | None = None) -> list[Condition]:
    """Every condition of the run, in run order; ``layers``: the compressible layers (default: all,
    :func:`~headatlas.kvcache.plan.compressible_layers`); KV heads of other layers are always kept whole."""
    from ..selection import HeadSelection
    from .plan import KVHead, kv_heads_of, random_kv_heads, top_kv_heads

    layers = list(range(n_layers)) if layers is None else layers
    total = len(layers) * n_kv
    everything = [KVHead(layer, g) for layer in layers for g in range(n_kv)]
    top = HeadSelection(scores=scores, top_k=config.top_k).resolve(n_layers, n_heads)
    retrieval = [k for k in kv_heads_of(top, n_heads, n_kv) if k.layer in layers]
    out = [Condition("full", "full", everything, total), Condition("windowed", "windowed", [], 0),
           Condition("retrieval", "retrieval", retrieval, len(retrieval), query_heads=top)]
    seeds = [config.seed + i for i in range(config.random_seeds)]
    out += [Condition(f"random-retrieval-s{s}", "random-retrieval", random_kv_heads(
        n_layers, n_kv, len(retrieval), s, retrieval, layers=layers), len(retrieval), s) for s in seeds]
    pl, size = ("pl", n_kv) if config.per_layer else ("", total)  # a per-layer budget counts in every layer
    budgets = config.budgets
    if budgets is None:
        from .plan import n_scored_kv_heads

        budgets = default_budgets(n_kv if config.per_layer else n_scored_kv_heads(scores, n_kv, config.aggregate), size)
    for b in sorted(set(budgets)):
        if not 0 < b < size:  # refused, never dropped: keeping every KV head is the "full" condition
            raise ValueError(f"--budgets {b}: a budget keeps 1 to {size - 1} KV heads whole"
                             f"{' in every layer' if config.per_layer else ''} (the model has {size} KV heads"
                             f"{' per layer' if config.per_layer else ''}; all of them is the full cache)")
        try:
            chosen = top_kv_heads(scores, n_kv, b, config.aggregate, config.per_layer, layers)  # type: ignore[arg-type]
        except ValueError as err:
            raise ValueError(f"--budgets {err}") from None
        kept = b * len(layers) if config.per_layer else b
        out.append(Condition(f"top-{b}{pl}", "top", chosen, kept))
        if size - b >= b:
            out += [Condition(f"random-top-{b}{pl}-s{s}", "random-top", random_kv_heads(
                n_layers, n_kv, b, s, chosen, config.per_layer, layers), kept, s) for s in seeds]
    return out


def default_budgets(n_ranked: int, size: int) -> list[int]:
    """The budgets when none are given: 1, 2, 4, ... below ``n_ranked`` (the KV heads that hold a scored head;
    per layer, the layer's KV heads) and ``n_ranked`` itself, every one below ``size`` (all KV heads: the full cache).

    >>> default_budgets(6, 16), default_budgets(16, 16), default_budgets(4, 4)
    ([1, 2, 4, 6], [1, 2, 4, 8, 15], [1, 2, 3])
    """
    top = min(n_ranked, size - 1)
    return sorted({2**i for i in range(top.bit_length()) if 2**i < top} | ({top} if top >= 1 else set()))


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
    from ..selection import load_scores
    from .attention import compressed_attention
    from .hybrid import make_split_cache
    from .plan import compressible_layers, full_per_layer

    HeadScores.load(config.heads)  # a corrupt file is refused before the model loads
    model, tokenizer, spec = load_model(config.model, dtype=config.dtype, device=config.device, device_map=config.device_map,
                                        attn_implementation=config.attn_implementation)
    scores = load_scores(config.heads, spec.n_layers, spec.n_heads, config.model, config.allow_other_model)
    layers = compressible_layers(spec)  # refuses MLA and recurrent-state models in one line, before any write
    whole = {i: spec.n_kv_heads for i in range(spec.n_layers) if i not in layers}  # sliding/chunked: kept as is
    conds = conditions(config, scores, spec.n_layers, spec.n_heads, spec.n_kv_heads, layers)
    prompts = []
    for n_needles in sorted(set(config.needle_counts)):
        prompts += build_prompts(config.model, tokenizer, spec.max_positions, PromptRequest(
            lengths=config.lengths, depths=config.depths, per_cell=config.per_cell, seed=config.seed,
            n_needles=n_needles))
    identity = model_identity(model)
    run = config.open_run("kv-compress", identity["weights"])
    done = {(r["condition"], r["prompt_id"]): r for r in run.records()}
    stops = StopTokens.from_tokenizer(model, tokenizer)
    stops = StopTokens(stops.eos, stops.newline, stops.blank)  # a newline ends an answer only once it has begun
    wanted = {(c.name, p.meta["prompt_id"]) for c in conds for p in prompts}
    with track("kv-compress", len(wanted), len(wanted & set(done)), enabled=progress) as bar:
        for cond in conds:
            full = full_per_layer(cond.heads, spec.n_layers, whole)
            for p in prompts:
                pid = p.meta["prompt_id"]
                if (cond.name, pid) not in done:
                    cache = make_split_cache(spec, model.config, full, config.sink, config.window)
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
    result = config.write_result("kv-compress", RESULT_FILE, identity, summary, top_heads=heads_to_strings(top),
                                 compressed_layers=layers,
                                 kept_whole_layers={str(i): spec.layer_kinds[i] for i in whole})
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
