"""``compare-scorers``: every scorer on one model, judged by what masking and KV compression show.

For each scorer (:mod:`headatlas.detect.scorers`) the run detects its score matrix (``scores/NAME/``, a
normal resumable detection run), then:

- **agreement** with every other scorer: Spearman's rank correlation over all heads, and the Jaccard
  overlap of the top-K sets (K = ``top_share`` of the heads, 5 %);
- **masking**: NIAH exact match (:func:`headatlas.evaluate.niah_eval.evaluate_niah`) and, on a built-in
  model, the exact match of its task suite (``builtins.task_suite``: cross-lingual, multi-hop,
  parametric) with the scorer's top-K heads masked, against ``random_seeds`` sets of K random heads drawn
  outside the union of every scorer's top-K (one shared pool, :func:`~headatlas.evaluate.conditions.
  build_conditions`); paired bootstrap 95 % intervals (:mod:`headatlas.stats`) per item;
- **KV compression**: NIAH exact match keeping the scorer's top-B KV heads whole and every other KV head
  sink + window (:mod:`headatlas.kvcache`, the prompt read through the compressed cache), at equal
  memory for every scorer, against the full cache, no kept head and B random KV heads.

Files: ``atlas.json`` (stamped ``headatlas/atlas``), ``heatmaps.png``, ``agreement.png``,
``validity.png``; journals under ``niah/``, ``tasks/`` and ``kv/`` (a rerun resumes each).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .atlas_config import AtlasConfig
from .heads import Head, HeadScores, heads_to_strings
from .runs import open_run, track
from .stats import paired_bootstrap_ci

ATLAS_FILE = "atlas.json"


# ---- agreement ------------------------------------------------------------------------------------------
def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (1-based)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties averaged; 0 when either side is constant).

    >>> spearman([1, 2, 3, 4], [10, 20, 30, 40]), spearman([1, 2, 3], [3, 2, 1])
    (1.0, -1.0)
    """
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def jaccard(a: Sequence[Head], b: Sequence[Head]) -> float:
    """|A & B| / |A | B| of two head sets.

    >>> jaccard([Head(0, 0), Head(0, 1)], [Head(0, 1), Head(1, 1)])
    0.3333333333333333
    """
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def agreement(scores: dict[str, HeadScores], k: int) -> dict[str, Any]:
    """Spearman over heads and top-``k`` Jaccard for every pair of scorers (square matrices, scorer order)."""
    names = list(scores)
    flat = {n: scores[n].scores.flatten().tolist() for n in names}
    tops = {n: scores[n].top_k(k) for n in names}
    return {"scorers": names, "k": k,
            "spearman": [[round(spearman(flat[a], flat[b]), 4) for b in names] for a in names],
            "jaccard": [[round(jaccard(tops[a], tops[b]), 4) for b in names] for a in names]}


# ---- effects with intervals ----------------------------------------------------------------------------------
def effect(reference: Sequence[float], treated: Sequence[float], seed: int = 0) -> dict[str, float]:
    """Mean of ``treated``, and ``treated - reference`` with its paired bootstrap 95 % interval."""
    mean, low, high = paired_bootstrap_ci(list(reference), list(treated), seed=seed)
    return {"score": round(float(np.mean(treated)), 4), "delta": round(mean, 4), "ci_low": round(low, 4),
            "ci_high": round(high, 4), "n": len(treated)}


def judge(per_item: dict[str, list[float]], names: Sequence[str], random_names: Sequence[str],
          reference: str) -> dict[str, Any]:
    """Per scorer: its change against ``reference``, the random sets' (items averaged over seeds), and the
    scorer's difference from random (paired over items: negative = the scorer's heads hurt more)."""
    rand = np.mean([per_item[r] for r in random_names], axis=0).tolist() if random_names else None
    out: dict[str, Any] = {reference: {"score": round(float(np.mean(per_item[reference])), 4),
                                       "n": len(per_item[reference])}}
    if rand is not None:
        out["random"] = {**effect(per_item[reference], rand), "seeds": len(random_names)}
    for name in names:
        if name in per_item:
            row = effect(per_item[reference], per_item[name])
            if rand is not None:
                vs = effect(rand, per_item[name])
                row.update(vs_random=vs["delta"], vs_random_ci_low=vs["ci_low"], vs_random_ci_high=vs["ci_high"])
            out[name] = row
    return out


# ---- the run -------------------------------------------------------------------------------------------------
def _prompts(config: AtlasConfig, tokenizer: Any, spec: Any, lengths: str, depths: str, kind: str = "retrieval",
             per_cell: int | None = None) -> list[Any]:
    from .niah import parse_depths, parse_lengths
    from .prompt_sources import PromptRequest, build_prompts

    extra = {"source_lang": "en", "target_lang": "de"} if kind == "transition" else {}
    request = PromptRequest(lengths=parse_lengths(lengths), depths=parse_depths(depths), kind=kind, lang="en",
                            per_cell=per_cell or config.per_cell, seed=config.seed, **extra)
    return build_prompts(config.model, tokenizer, spec.max_positions, request)


def detect_all(config: AtlasConfig, model: Any, tokenizer: Any, spec: Any, console: Any = None
               ) -> tuple[dict[str, HeadScores], dict[str, str]]:
    """Each scorer's head scores (a detection run under ``out/scores/NAME``); scorers that could not run, why."""
    from .detect import DetectConfig, DetectionError, PromptError, detect

    scores, skipped = {}, {}
    for name in config.scorer_names():
        kind = "transition" if name == "transition" else "retrieval"
        try:
            prompts = _prompts(config, tokenizer, spec, config.lengths, config.depths, kind)
            cfg = DetectConfig(scorer=name, mode=config.mode, seed=config.seed, duo_steps=config.duo_steps,
                               progress=False, table_rows=0)
            result = detect(model, tokenizer, prompts, cfg, Path(config.out) / "scores" / name, console=console)
        except (DetectionError, PromptError, ValueError) as err:
            skipped[name] = str(err).splitlines()[0]
            continue
        if result is not None:
            scores[name] = result
    return scores, skipped


def _task_items(config: AtlasConfig, model: Any, tokenizer: Any, conditions: Sequence[Any], progress: bool
                ) -> dict[str, dict[str, list[float]]]:
    """Built-in model: per task and condition, 1/0 per example (journal ``tasks/journal.jsonl``)."""
    from .builtins import task_suite
    from .masking import masked_heads

    wanted = [t.strip() for t in config.tasks.split(",") if t.strip()]
    if not wanted:
        return {}
    try:
        suite = task_suite(config.model)
    except ValueError:
        return {}
    tasks = [t for t in wanted if t in suite.tasks]
    run = open_run(Path(config.out) / "tasks", "atlas-tasks", {"--tasks": tasks, "--task-n": config.task_n,
                   "--seed": config.seed, "--mask-mode": config.mask_mode}, model=config.model)
    done = {(r["task"], r["condition"], r["heads"]): r["correct"] for r in run.records()}
    out: dict[str, dict[str, list[float]]] = {}
    with track("atlas tasks", len(tasks) * len(conditions), enabled=progress) as bar:
        for task in tasks:
            examples = suite.make_eval_set(task, config.task_n, config.seed)
            for cond in conditions:
                key = (task, cond.name, ",".join(heads_to_strings(cond.heads)))
                if key not in done:
                    with masked_heads(model, cond.heads, mode=config.mask_mode):
                        correct = [float(c) for c in suite.answers_correct(model, tokenizer, examples, config.batch_size)]
                    run.append({"task": task, "condition": cond.name, "heads": key[2], "correct": correct})
                    done[key] = correct
                out.setdefault(task, {})[cond.name] = done[key]
                bar.advance()
    return out


def _niah_items(config: AtlasConfig, model: Any, tokenizer: Any, spec: Any, conditions: Sequence[Any],
                progress: bool) -> dict[str, list[float]]:
    """NIAH exact match per prompt under every condition (``niah/``, :func:`evaluate_niah`)."""
    from .evaluate.niah_eval import evaluate_niah
    from .runs import read_jsonl

    prompts = _prompts(config, tokenizer, spec, config.niah_lengths, config.niah_depths, per_cell=2)
    out = Path(config.out) / "niah"
    evaluate_niah(model, tokenizer, prompts, conditions, out, mode=config.mask_mode,
                  max_new_tokens=config.max_new_tokens, progress=progress, batch_size=config.batch_size,
                  settings={"--lengths": config.niah_lengths, "--depths": config.niah_depths, "--seed": config.seed})
    by = {(r["condition"], r["prompt_id"]): float(r["exact_match"]) for r in read_jsonl(out / "journal.jsonl")}
    ids = [p.meta["prompt_id"] for p in prompts]
    return {c.name: [by[(c.name, pid)] for pid in ids] for c in conditions}


def _kv_items(config: AtlasConfig, model: Any, tokenizer: Any, spec: Any, scores: dict[str, HeadScores],
              progress: bool) -> tuple[dict[str, list[float]], dict[str, list[str]]]:
    """Exact match per prompt with each scorer's top-B KV heads kept whole (``kv/journal.jsonl``)."""
    from .generation import StopTokens, generate
    from .kvcache.attention import compressed_attention
    from .kvcache.cache import HeadSplitCache
    from .kvcache.experiment import expected_answer
    from .kvcache.plan import KVHead, full_per_layer, random_kv_heads, top_kv_heads

    n_kv, budget = spec.n_kv_heads, config.kv_budget
    kept: dict[str, list[Any]] = {"full": [KVHead(layer, g) for layer in range(spec.n_layers) for g in range(n_kv)],
                                  "windowed": []}
    kept.update({name: top_kv_heads(s, n_kv, budget, "max") for name, s in scores.items()})
    union = {h for name in scores for h in kept[name]}
    kept.update({f"random-s{seed}": random_kv_heads(spec.n_layers, n_kv, budget, seed, union)
                 for seed in range(config.random_seeds)})
    prompts = _prompts(config, tokenizer, spec, config.kv_lengths, config.kv_depths, per_cell=2)
    run = open_run(Path(config.out) / "kv", "atlas-kv", {"--kv-budget": budget, "--sink": config.sink,
                   "--window": config.window, "--kv-lengths": config.kv_lengths, "--kv-depths": config.kv_depths,
                   "--max-new-tokens": config.max_new_tokens, "--seed": config.seed}, model=config.model)
    done = {(r["condition"], r["prompt_id"], r["heads"]): r["correct"] for r in run.records()}
    stops = StopTokens.from_tokenizer(model, tokenizer)
    stops = StopTokens(stops.eos, stops.newline, stops.blank)
    out: dict[str, list[float]] = {}
    with track("atlas kv", len(kept) * len(prompts), enabled=progress) as bar:
        for name, heads in kept.items():
            label = ",".join(str(h) for h in heads)
            row = []
            for p in prompts:
                key = (name, p.meta["prompt_id"], label)
                if key not in done:
                    cache = HeadSplitCache(full_per_layer(heads, spec.n_layers), n_kv, config.sink, config.window)
                    with compressed_attention(model):
                        o = generate(model, [p.input_ids], config.max_new_tokens, stops, cache=cache, prefill_chunk=256)
                    text = tokenizer.decode(o.tokens[0, : int(o.n_tokens[0])].tolist(), skip_special_tokens=True)
                    correct = float(text.split("\n", 1)[0].strip() == expected_answer(p))
                    run.append({"condition": name, "prompt_id": key[1], "heads": label, "correct": correct})
                    done[key] = correct
                row.append(done[key])
                bar.advance()
            out[name] = row
    return out, {name: [str(h) for h in heads] for name, heads in kept.items()}


def discard_atlas(out: Path) -> None:
    """Delete what a ``compare-scorers`` run wrote in ``out`` (its sub-runs, results and figures)."""
    import shutil

    for sub in ("scores", "niah", "tasks", "kv"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for name in (ATLAS_FILE, "heatmaps.png", "agreement.png", "validity.png"):
        (out / name).unlink(missing_ok=True)


def run_atlas(config: AtlasConfig, model: Any = None, tokenizer: Any = None, progress: bool = True,
              console: Any = None) -> dict[str, Any]:
    """Run (or resume) the atlas; write ``atlas.json`` and its figures; return the result."""
    from .evaluate.conditions import build_conditions
    from .model_spec import ModelSpec, load_model, model_identity
    from .runs import atomic_write_json, run_metadata, stamp
    from .selection import share_of_heads

    if model is None:
        model, tokenizer, spec = load_model(config.model, dtype=config.dtype, device=config.device,
                                            device_map=config.device_map,
                                            attn_implementation=config.attn_implementation)
    spec = ModelSpec.from_model(model)
    out = Path(config.out)
    if config.overwrite:  # start over: the earlier run's detections, answers and results go
        discard_atlas(out)
    scores, skipped = detect_all(config, model, tokenizer, spec, console)
    if not scores:
        raise ValueError(f"no scorer produced scores: {skipped}")
    k = share_of_heads(spec.n_layers * spec.n_heads, config.top_share)
    conditions = build_conditions(scores, k, config.random_seeds, spec.n_layers, spec.n_heads)
    names = list(scores)
    random_names = [c.name for c in conditions if c.kind == "random"]
    masking = {"niah": judge(_niah_items(config, model, tokenizer, spec, conditions, progress), names, random_names,
                             "unmasked")}
    for task, items in _task_items(config, model, tokenizer, conditions, progress).items():
        masking[task] = judge(items, names, random_names, "unmasked")
    kv: dict[str, Any] = {}
    if config.kv_budget:
        kv_items, kv_heads = _kv_items(config, model, tokenizer, spec, scores, progress)
        kv = {"budget": config.kv_budget, "of": spec.n_layers * spec.n_kv_heads, "heads": kv_heads,
              "niah": judge(kv_items, ["windowed", *names], [n for n in kv_items if n.startswith("random")], "full")}
    result = {
        "config": asdict(config), "k": k, "n_heads_total": spec.n_layers * spec.n_heads, "skipped": skipped,
        "scorers": {name: {"top_k": heads_to_strings(s.top_k(k)), "null_level": s.null_level,
                           "above_null": s.n_scored,
                           "scores": [[round(float(x), 6) for x in row] for row in s.scores.tolist()],
                           "method": s.meta.get("method")} for name, s in scores.items()},
        "random_sets": {c.name: heads_to_strings(c.heads) for c in conditions if c.kind == "random"},
        "agreement": agreement(scores, k), "masking": masking, "kv": kv,
        "meta": run_metadata(model=config.model, model_identity=model_identity(model)),
    }
    atomic_write_json(out / ATLAS_FILE, stamp("atlas", result))
    plot_atlas(result, out)
    return result


# ---- figures -----------------------------------------------------------------------------------------------
def plot_atlas(result: dict[str, Any], out: Path) -> list[Path]:
    """``heatmaps.png`` (the score matrices side by side), ``agreement.png`` and ``validity.png``."""
    from .detect.plots import new_figure, save_figure

    names = list(result["scorers"])
    fig = new_figure(3.2 * len(names), 3.0)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        m = np.asarray(result["scorers"][name]["scores"])
        im = ax.imshow(m, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(name)
        ax.set_xlabel("head")
        ax.set_ylabel("layer" if i == 0 else "")
        fig.colorbar(im, ax=ax, fraction=0.046)
    paths = [save_figure(fig, out / "heatmaps.png", 110)]

    ag = result["agreement"]
    fig = new_figure(9.0, 4.0)
    for j, (key, title) in enumerate((("spearman", "Spearman over heads"), ("jaccard", f"top-{ag['k']} Jaccard"))):
        ax = fig.add_subplot(1, 2, j + 1)
        im = ax.imshow(np.asarray(ag[key]), vmin=-1 if key == "spearman" else 0, vmax=1, cmap="coolwarm")
        ax.set_xticks(range(len(ag["scorers"])), ag["scorers"], rotation=45, ha="right")
        ax.set_yticks(range(len(ag["scorers"])), ag["scorers"])
        for a, row in enumerate(ag[key]):
            for b, v in enumerate(row):
                ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=7)
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    paths.append(save_figure(fig, out / "agreement.png", 110))

    panels = [(task, rows, "unmasked") for task, rows in result["masking"].items()]
    if result["kv"]:
        panels.append((f"KV: top-{result['kv']['budget']} KV heads kept", result["kv"]["niah"], "full"))
    fig = new_figure(4.2 * len(panels), 3.4)
    for i, (title, rows, ref) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        bars = [n for n in rows if n != ref]
        values = [rows[n]["delta"] for n in bars]
        err = [[rows[n]["delta"] - rows[n]["ci_low"] for n in bars], [rows[n]["ci_high"] - rows[n]["delta"] for n in bars]]
        ax.bar(range(len(bars)), values, yerr=err, color=["#999" if n == "random" else "#3b6" for n in bars], capsize=3)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(range(len(bars)), bars, rotation=45, ha="right")
        ax.set_title(f"{title} (vs {ref} {rows[ref]['score']:.2f})", fontsize=9)
        ax.set_ylabel("exact match change" if i == 0 else "")
    paths.append(save_figure(fig, out / "validity.png", 110))
    return paths
