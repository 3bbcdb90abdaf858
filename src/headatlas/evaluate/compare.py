"""Compare head sets on lm-eval tasks: unmasked vs top-K of each set vs random controls.

The conditions are :func:`~headatlas.evaluate.conditions.build_conditions`'s. Each (condition,
task) cell is one ``lm_eval.simple_evaluate`` call through the ``masked-hf`` backend with
``log_samples``; its per-item scores are saved to ``cells/{condition}/{task}.json`` with the heads and
metric they depend on, so an interrupted run resumes where it stopped. The folder is a run
(:func:`headatlas.runs.open_run`): one made with other settings, or holding a cell made with
other heads, raises :class:`~headatlas.runs.ResumeMismatchError` before anything is written.
The summary gives per (task, condition) the score with its bootstrap interval over items and the
change against unmasked with a paired bootstrap interval; random controls are summarised over seeds
(mean, sd, min, max). Files: ``results.md``, ``results.csv``, ``results.json``, ``results.png``.

>>> cfg = CompareConfig(model="organism", heads={"rh": "rh/head_scores.json", "rth": "rth/head_scores.json"},
...                     tasks=["organism_mono", "organism_cross"], out="runs/compare", top_k=6)  # doctest: +SKIP
>>> print(run_compare(cfg).markdown)                                                           # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..detect.plots import new_figure, save_figure
from ..heads import heads_to_strings
from ..runs import atomic_write_json, atomic_write_text, flags, open_run, package_versions, stamp, track
from ..stats import bootstrap_ci, mean_and_spread, paired_bootstrap_ci, stable_seed
from .conditions import Condition, MaskedEvalConfig
from .fixtures import TASKS_DIR

CELLS_DIR = "cells"
PREFERRED_METRICS = ("f1", "exact_match", "acc_norm", "acc")

log = logging.getLogger(__name__)


@dataclass
class CompareConfig(MaskedEvalConfig):
    """Settings of a comparison run (shared by :func:`run_compare` and ``headatlas compare``).

    Model, heads and masking: see :class:`~headatlas.evaluate.conditions.MaskedEvalConfig`
    (here ``random_seeds`` defaults to 5).
    Tasks: ``tasks`` (lm-eval task or group names), ``include_path`` (extra task folders; the package's own
    ``tasks/`` is always included), ``limit``, ``num_fewshot``, ``gen_kwargs`` (as lm-eval's), ``metrics``
    (task -> ``"metric,filter"``; default: the first of f1, exact_match, acc_norm, acc, first filter).
    Run: ``batch_size`` (lm-eval's); ``seed`` seeds lm-eval and the bootstrap; ``n_bootstrap``, ``confidence``.
    """

    tasks: list[str] = field(metadata={"help": "Comma-separated lm-eval task or group names."})
    random_seeds: int = field(default=5, kw_only=True)
    include_path: list[str] = field(default_factory=list, metadata={"help": "Extra lm-eval task folder (repeatable), e.g. benchmark fixtures."})
    limit: float | None = field(default=None, metadata={"help": "Items per task (or a fraction < 1)."})
    num_fewshot: int | None = field(default=None, metadata={"help": "Override the tasks' few-shot count."})
    gen_kwargs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)
    batch_size: int = field(default=1, metadata={"help": "lm-eval batch size."})
    seed: int = field(default=1234, metadata={"help": "Seed of lm-eval and of the bootstrap."})
    n_bootstrap: int = field(default=2000, metadata={"help": "Bootstrap resamples."})
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("give at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks repeat: {self.tasks}")
        super().__post_init__()
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"limit must be positive, got {self.limit}")
        if self.limit is not None and self.limit >= 1:
            if self.limit != int(self.limit):  # refused, never rounded: a count of items, or a fraction < 1
                raise ValueError(f"limit {self.limit:g}: give a whole number of items per task, or a fraction below 1")
            self.limit = int(self.limit)
        for task, spec in self.metrics.items():
            if spec.count(",") != 1:
                raise ValueError(f"metric for {task!r} must be 'metric,filter' (e.g. 'exact_match,strict-match')")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must lie in (0, 1), got {self.confidence}")
        if self.n_bootstrap < 1:
            raise ValueError("n_bootstrap must be >= 1")


# ---- lm-eval plumbing ------------------------------------------------------------------------
def make_task_manager(tasks: Sequence[str], include_path: Sequence[str | Path] = (), metadata: dict | None = None):
    """A ``TaskManager`` over the package's tasks and ``include_path``; lm-eval's ~15K built-in task
    YAMLs are indexed only when a requested name is not found there (that takes seconds)."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR), *map(str, include_path)]
    tm = TaskManager(include_path=paths, include_defaults=False, metadata=metadata or {})
    if all(_resolvable(tm, t) for t in tasks):
        return tm
    tm = TaskManager(include_path=paths, include_defaults=True, metadata=metadata or {})
    missing = [t for t in tasks if t not in tm.all_tasks]
    if missing:
        raise KeyError(f"unknown lm-eval task(s) {missing}; see `lm-eval ls tasks` or add an --include-path")
    return tm


def _resolvable(tm: Any, name: str, depth: int = 0) -> bool:
    from lm_eval.tasks._index import Kind

    entry = tm.task_index.get(name)
    if entry is None or depth > 8:
        return False
    if entry.kind == Kind.GROUP:
        children = (entry.cfg or {}).get("task", [])
        return all(_resolvable(tm, c, depth + 1) for c in children if isinstance(c, str))
    if entry.kind == Kind.TAG:
        return all(_resolvable(tm, c, depth + 1) for c in entry.tags)
    return True


def item_scores(results: dict[str, Any], task: str, metric: str | None = None) -> dict[str, Any]:
    """Per-item scores of ``task`` (a task or a group) from ``simple_evaluate(..., log_samples=True)``.

    ``metric`` is ``"metric,filter"``; by default the first of
    :data:`PREFERRED_METRICS` the task reports, with its first filter. Returns
    ``{"metric", "filter", "items": {item_key: score}, "lm_eval": {leaf: value}, "responses": {item_key:
    filtered responses}}`` (the extracted answers, or the log-likelihoods of loglikelihood tasks).
    """
    samples: dict[str, list[dict[str, Any]]] = results.get("samples") or {}
    leaves = [task] if task in samples else sorted(samples)
    if not leaves:
        raise ValueError(f"no logged samples for {task!r}: run simple_evaluate with log_samples=True")
    name, filt = metric.split(",") if metric else (None, None)
    items: dict[str, float] = {}
    responses: dict[str, Any] = {}
    reported: dict[str, float] = {}
    for leaf in leaves:
        rows = samples[leaf]
        keys = [k for k in results["results"][leaf] if "," in k and not k.split(",")[0].endswith("_stderr")]
        if name is None:  # the preferred metric, with the first filter that reports it
            available = list(dict.fromkeys(k.split(",")[0] for k in keys))
            if not available:
                raise ValueError(f"{leaf}: lm-eval reported no metric")
            name = next((m for m in PREFERRED_METRICS if m in available), available[0])
            filt = next((r["filter"] for r in rows if name in r), None)
        chosen = [r for r in rows if r["filter"] == filt]
        if not chosen or name not in chosen[0]:
            have = sorted({f"{m},{r['filter']}" for r in rows for m in r.get("metrics", [])})
            raise KeyError(f"{leaf}: no per-item {name},{filt}; the task logs {have}")
        for r in chosen:
            value = r[name]
            if isinstance(value, bool):
                value = float(value)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{leaf}: metric {name!r} is not a per-item number ({value!r}); its aggregate is not a "
                                 "mean over items, so it cannot be bootstrapped here; pick another (--metric TASK=METRIC,FILTER)")
            key = f"{leaf}/{r['doc_id']}" if len(leaves) > 1 else str(r["doc_id"])
            items[key] = float(value)
            responses[key] = r.get("filtered_resps")
        value = results["results"][leaf].get(f"{name},{filt}")
        if isinstance(value, (int, float)):
            reported[leaf] = float(value)
    return {"metric": name, "filter": filt, "items": items, "lm_eval": reported, "responses": _jsonable(responses)}


@contextmanager
def _quiet_lm_eval(enabled: bool):
    logger = logging.getLogger("lm_eval")
    old = logger.level
    logger.setLevel(logging.ERROR if enabled else old)
    try:
        yield
    finally:
        logger.setLevel(old)


# ---- the run ---------------------------------------------------------------------------------
@dataclass
class CompareResult:
    """What :func:`run_compare` produced: summary rows, per-seed rows, and the files written."""

    rows: list[dict[str, Any]]
    seed_rows: list[dict[str, Any]]
    conditions: list[Condition]
    files: dict[str, Path]
    computed: list[tuple[str, str]]  # (condition, task) cells computed in this call (the rest were resumed)

    @property
    def markdown(self) -> str:
        return self.files["markdown"].read_text(encoding="utf-8")


def run_compare(config: CompareConfig, model: Any = None, tokenizer: Any = None, progress: bool = True) -> CompareResult:
    """Run (or resume) a comparison and write its tables and plot to ``config.out``; ``model`` and
    ``tokenizer`` may be passed already loaded (``config.model`` is then only recorded).

    >>> run_compare(CompareConfig(model="organism", tasks=["organism_mono"], out="runs/c",
    ...                           heads={"rh": "rh.json"}, limit=50))                      # doctest: +SKIP
    """
    from lm_eval import simple_evaluate

    from ..model_spec import weights_fingerprint
    from .lm_eval_backend import MaskedHFLM

    out = Path(config.out)
    model, tokenizer, spec, conditions, means = config.prepare(model, tokenizer)
    lm = MaskedHFLM.from_model(model, tokenizer, heads=[], mode=config.mode, means=means, batch_size=config.batch_size)
    tm = make_task_manager(config.tasks, config.include_path, metadata={"organism_cache_dir": str(out / "data")})
    todo = [(c, t) for c in conditions for t in config.tasks]
    cell_settings = {_cell_name(c, t): {"heads masked": heads_to_strings(c.heads), "--metric": config.metrics.get(t)}
                     for c, t in todo}
    run = open_run(
        out, "compare",
        {"--model": config.model, **flags(asdict(config), ("mode", "means", "limit", "num_fewshot", "gen_kwargs", "seed"))},
        fingerprints={"the model's weights": weights_fingerprint(model)}, cells=cell_settings,
        record={"config": asdict(config), "conditions": [c.to_json() for c in conditions]},
        overwrite=config.overwrite, discard=(CELLS_DIR,), hint="Use another --out folder, or --overwrite.",
        model=config.model, model_spec=spec.describe(), seed=config.seed, top_k=config.top_k, mode=config.mode,
        random_seeds=list(range(config.random_seeds)), layer_matched=config.layer_matched,
        head_files={k: str(Path(v).resolve()) for k, v in config.heads.items()},
    )
    meta = run.meta
    meta["versions"].update(package_versions(("lm-eval", "datasets")))

    cells: dict[tuple[str, str], dict[str, Any]] = {}
    computed: list[tuple[str, str]] = []
    found = {(c.name, t): run.cell(_cell_name(c, t)) for c, t in todo}
    with track("compare", len(todo), sum(v is not None for v in found.values()), enabled=progress) as bar, \
            _quiet_lm_eval(progress):
        for cond, task in todo:
            cell = found[(cond.name, task)]
            if cell is None:
                lm.heads = list(cond.heads)
                res = simple_evaluate(
                    model=lm, tasks=[task], limit=config.limit, num_fewshot=config.num_fewshot,
                    gen_kwargs=dict(config.gen_kwargs) or None, task_manager=tm, log_samples=True, bootstrap_iters=0,
                    random_seed=config.seed, numpy_random_seed=config.seed, torch_random_seed=config.seed,
                    fewshot_random_seed=config.seed,
                )  # fmt: skip
                scored = item_scores(res, task, config.metrics.get(task))
                score = sum(scored["items"].values()) / len(scored["items"])
                if len(scored["lm_eval"]) == 1 and abs(next(iter(scored["lm_eval"].values())) - score) > 1e-9:
                    log.warning("%s/%s: lm-eval's aggregate differs from the item mean", cond.name, task)
                cell = run.save_cell(_cell_name(cond, task), cell_settings[_cell_name(cond, task)], {
                    "condition": cond.to_json(), "task": task, **scored, "score": score,
                    "meta": {**meta, "task": task, "condition": cond.name, "heads": heads_to_strings(cond.heads),
                             "limit": config.limit, "lm_eval_config": _jsonable(res.get("config", {}))},
                })  # fmt: skip
                computed.append((cond.name, task))
                bar.advance(description=f"{cond.name} / {task}")
            cells[(cond.name, task)] = cell
    rows, seed_rows = summarize(cells, conditions, config.tasks, config.n_bootstrap, config.confidence, config.seed)
    files = write_outputs(out, rows, seed_rows, conditions, config, meta)
    return CompareResult(rows=rows, seed_rows=seed_rows, conditions=conditions, files=files, computed=computed)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _cell_name(condition: Condition, task: str) -> str:
    return f"{CELLS_DIR}/{condition.name}/{task}.json"


# ---- summary ---------------------------------------------------------------------------------
def summarize(cells: dict[tuple[str, str], dict[str, Any]], conditions: Sequence[Condition], tasks: Sequence[str],
              n_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0,
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Summary rows per (task, condition group) and per-seed rows of the random controls."""
    groups: dict[str, list[Condition]] = {}
    for c in conditions:
        groups.setdefault(c.group, []).append(c)
    rows: list[dict[str, Any]] = []
    seed_rows: list[dict[str, Any]] = []
    for task in tasks:
        ref_cell = cells[("unmasked", task)]
        keys = sorted(ref_cell["items"])
        ref = [ref_cell["items"][k] for k in keys]

        def values(cond: Condition, task: str = task, keys: list[str] = keys) -> list[float]:
            items = cells[(cond.name, task)]["items"]
            if sorted(items) != keys:
                raise ValueError(f"{task}: condition {cond.name} scored other items than unmasked")
            return [items[k] for k in keys]

        for group, members in groups.items():
            first = members[0]
            bseed = stable_seed(seed, task, group)
            per_seed = [values(c) for c in members]
            pooled = [sum(col) / len(col) for col in zip(*per_seed, strict=True)]  # per item, mean over seeds
            score, low, high = bootstrap_ci(pooled, n_bootstrap, confidence, bseed)
            delta, dlow, dhigh = paired_bootstrap_ci(ref, pooled, n_bootstrap, confidence, bseed + 1)
            row = {
                "task": task, "condition": group, "kind": first.kind, "head_set": first.head_set,
                "k": len(first.heads), "metric": f"{ref_cell['metric']},{ref_cell['filter']}", "n_items": len(keys),
                "score": score, "ci_low": low, "ci_high": high, "delta": delta, "delta_ci_low": dlow,
                "delta_ci_high": dhigh, "seeds": [c.seed for c in members] if first.kind == "random" else None,
                "seed_sd": None, "seed_min": None, "seed_max": None,
            }  # fmt: skip
            if first.kind == "random":
                spread = mean_and_spread([sum(v) / len(v) for v in per_seed])
                row.update(seed_sd=spread["sd"], seed_min=spread["min"], seed_max=spread["max"])
                for c, v in zip(members, per_seed, strict=True):
                    s, lo, hi = bootstrap_ci(v, n_bootstrap, confidence, stable_seed(seed, task, c.name))
                    d, dlo, dhi = paired_bootstrap_ci(ref, v, n_bootstrap, confidence, stable_seed(seed, task, c.name) + 1)
                    seed_rows.append({
                        "task": task, "condition": c.name, "group": group, "seed": c.seed,
                        "heads": heads_to_strings(c.heads), "score": s, "ci_low": lo, "ci_high": hi,
                        "delta": d, "delta_ci_low": dlo, "delta_ci_high": dhi,
                    })  # fmt: skip
            rows.append(row)
    return rows, seed_rows


def _label(row: dict[str, Any]) -> str:
    if row["kind"] == "unmasked":
        return "unmasked"
    if row["kind"] == "heads":
        return f"{row['condition']} top-{row['k']}"
    n = len(row["seeds"])
    matched = f" layer-matched to {row['head_set']}" if row["head_set"] else ""
    return f"random {row['k']}{matched} ({n} seed{'s' if n != 1 else ''})"


def _pts(x: float | None, signed: bool = False) -> str:
    return "" if x is None else f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def format_markdown(rows: Sequence[dict[str, Any]], confidence: float = 0.95) -> str:
    """The summary as Markdown: a task x condition grid of ``score (change)``, then the details (points = %)."""
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    by = {(r["task"], r["condition"]): r for r in rows}
    labels = {r["condition"]: _label(r) for r in rows}
    level = f"{round(100 * confidence)} %"
    lines = ["| task | " + " | ".join(labels[c] for c in conds) + " |", "|---|" + "---|" * len(conds)]
    for t in tasks:
        cells = [_pts(r["score"]) if r["kind"] == "unmasked" else f"{_pts(r['score'])} ({_pts(r['delta'], True)})"
                 for r in (by[(t, c)] for c in conds)]  # fmt: skip
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Scores in points (100 x the task metric); in brackets the change against unmasked. Intervals: {level} "
        "percentile bootstrap over items (changes: paired over the same items); random controls: mean over "
        "seeds, with the sd and range over seeds.",
        "",
        f"| task | condition | metric | items | score | {level} CI | change | {level} CI of change | seeds: sd [min, max] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = f"{_pts(r['seed_sd'])} [{_pts(r['seed_min'])}, {_pts(r['seed_max'])}]" if r["kind"] == "random" else ""
        change = "" if r["kind"] == "unmasked" else _pts(r["delta"], True)
        change_ci = "" if r["kind"] == "unmasked" else f"[{_pts(r['delta_ci_low'], True)}, {_pts(r['delta_ci_high'], True)}]"
        lines.append(
            f"| {r['task']} | {labels[r['condition']]} | {r['metric']} | {r['n_items']} | {_pts(r['score'])} | "
            f"[{_pts(r['ci_low'])}, {_pts(r['ci_high'])}] | {change} | {change_ci} | {spread} |"
        )
    return "\n".join(lines) + "\n"


CSV_COLUMNS = (
    "task", "condition", "kind", "head_set", "seed", "k", "metric", "n_items", "score", "ci_low", "ci_high",
    "delta", "delta_ci_low", "delta_ci_high", "seed_sd", "seed_min", "seed_max",
)  # fmt: skip


def format_csv(rows: Sequence[dict[str, Any]], seed_rows: Sequence[dict[str, Any]] = ()) -> str:
    """Summary rows, then one row per random seed (kind ``random-seed``); numbers unrounded."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS if k != "seed"})
    summary = {(r["task"], r["condition"]): r for r in rows}
    for s in seed_rows:
        g = summary[(s["task"], s["group"])]
        writer.writerow({
            **{k: s.get(k, "") for k in ("task", "condition", "seed", "score", "ci_low", "ci_high", "delta",
                                         "delta_ci_low", "delta_ci_high")},
            "kind": "random-seed", "head_set": g["head_set"] or "", "k": g["k"], "metric": g["metric"],
            "n_items": g["n_items"],
        })  # fmt: skip
    return buf.getvalue()


def plot_comparison(rows: Sequence[dict[str, Any]], seed_rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Grouped bars per task (one per condition) with the bootstrap interval; random seeds as dots."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    by = {(r["task"], r["condition"]): r for r in rows}
    width = 0.8 / len(conds)
    fig = new_figure(max(5.0, 1.2 * len(tasks) * len(conds) * 0.5 + 2), 4.0)
    ax = fig.subplots()
    for j, c in enumerate(conds):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(tasks))]
        ys = [100 * by[(t, c)]["score"] for t in tasks]
        err = [[100 * (by[(t, c)]["score"] - by[(t, c)]["ci_low"]) for t in tasks],
               [100 * (by[(t, c)]["ci_high"] - by[(t, c)]["score"]) for t in tasks]]
        ax.bar(xs, ys, width=width * 0.95, yerr=err, capsize=2, label=_label(by[(tasks[0], c)]))
        dots = [(x, 100 * s["score"]) for x, t in zip(xs, tasks, strict=True) for s in seed_rows
                if s["task"] == t and s["group"] == c]  # fmt: skip
        if dots:
            ax.scatter(*zip(*dots, strict=True), s=8, color="black", zorder=3)
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, ha="right")
    ax.set_ylabel("score (points)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, frameon=False)
    return save_figure(fig, path, dpi=120)


def write_outputs(out: Path, rows: list[dict[str, Any]], seed_rows: list[dict[str, Any]],
                  conditions: Iterable[Condition], config: CompareConfig, meta: dict[str, Any]) -> dict[str, Path]:
    """``results.md``, ``results.csv``, ``results.json`` (with the head lists and metadata) and ``results.png``."""
    data = {"rows": rows, "seed_rows": seed_rows, "conditions": [c.to_json() for c in conditions],
            "config": asdict(config), "meta": meta}
    return {
        "markdown": atomic_write_text(out / "results.md", format_markdown(rows, config.confidence)),
        "csv": atomic_write_text(out / "results.csv", format_csv(rows, seed_rows)),
        "json": atomic_write_json(out / "results.json", stamp("compare", data)),
        "plot": plot_comparison(rows, seed_rows, out / "results.png"),
    }
