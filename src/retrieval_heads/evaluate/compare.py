"""Compare head sets on lm-eval tasks: unmasked vs top-K of each set vs random controls.

Conditions (:func:`build_conditions`):

- ``unmasked``;
- one per head set (``--heads NAME=FILE``): its top-K heads masked;
- ``random-s{seed}``: K random heads drawn with ``seed`` from the heads
  outside *every* set's top-K; with ``layer_matched`` there is one family per
  set, ``random-{NAME}-s{seed}``, with as many heads per layer as that set's top-K.

Each (condition, task) cell is one ``lm_eval.simple_evaluate`` call through
the ``masked-hf`` backend with ``log_samples``; its per-item scores are saved
atomically to ``cells/{condition}/{task}.json``, so an interrupted run resumes
where it stopped (a cell made with other settings raises
:class:`ResumeMismatchError`). The summary gives per (task, condition) the
score, its bootstrap interval over items, and the change against unmasked
with a paired bootstrap interval; random controls are summarised over seeds
(mean, sd, min, max; interval of the seed-averaged item scores). Files:
``results.md``, ``results.csv``, ``results.json``, ``results.png``.

>>> cfg = CompareConfig(model="organism", heads={"rh": "rh/head_scores.json", "rth": "rth/head_scores.json"},
...                     tasks=["organism_mono", "organism_cross"], out="runs/compare", top_k=6)  # doctest: +SKIP
>>> result = run_compare(cfg)                                                                  # doctest: +SKIP
>>> print(result.markdown)                                                                      # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import (
    ResumeMismatchError,
    atomic_write_json,
    atomic_write_text,
    package_versions,
    run_metadata,
)
from ..heads import Head, HeadScores, heads_to_strings
from ..masking import MASK_MODES, load_means
from ..progress import progress_bar
from ..selection import HeadSelection, load_scores
from .fixtures import TASKS_DIR
from .stats import bootstrap_ci, is_close, mean_and_spread, paired_bootstrap_ci, stable_seed

CELLS_DIR = "cells"
CELL_FORMAT = "retrieval-heads/compare-cell"
PREFERRED_METRICS = ("f1", "exact_match", "acc_norm", "acc")
_NAME = re.compile(r"^[A-Za-z0-9_.]+$")

log = logging.getLogger(__name__)


# ---- configuration ---------------------------------------------------------------------------
@dataclass
class CompareConfig:
    """Settings of a comparison run (shared by :func:`run_compare` and ``retrieval-heads compare``).

    Model and heads:
        model: hub id, local checkpoint, or ``organism``.
        heads: head-set name -> head-score file (names: letters, digits, ``_`` and ``.``).
        top_k: heads masked per set (and drawn per random control); None: 5 % of the model's heads.
        mode: ``zero`` | ``mean`` | ``uniform``; ``means`` is the mean-output file for ``mean``.
        random_seeds: number of random controls (seeds ``0 .. n-1``); 0 for none.
        layer_matched: draw each random control with the layer distribution of a set's top-K.
    Tasks:
        tasks: lm-eval task (or group) names.
        include_path: extra task folders (e.g. benchmark fixtures); the package's own
            ``tasks/`` (organism, XQuAD fix) is always included.
        limit: items per task (an int, or a fraction < 1), as lm-eval's ``--limit``.
        num_fewshot, gen_kwargs: as lm-eval's; ``metrics`` maps a task to ``"metric,filter"``
            (default: the first of f1, exact_match, acc_norm, acc with the task's first filter).
    Run:
        out: output folder; ``overwrite`` recomputes cells made with other settings.
        batch_size, device, dtype: for the model; ``seed`` seeds lm-eval and the bootstrap.
        n_bootstrap, confidence: the bootstrap intervals.
    """

    model: str
    tasks: list[str] = field(metadata={"help": "Comma-separated lm-eval task or group names."})
    out: str
    heads: dict[str, str] = field(default_factory=dict)
    top_k: int | None = None
    mode: str = "zero"
    means: str | None = None
    random_seeds: int = 5
    layer_matched: bool = False
    include_path: list[str] = field(default_factory=list, metadata={"help": "Extra lm-eval task folder (repeatable), e.g. benchmark fixtures."})
    limit: float | None = field(default=None, metadata={"help": "Items per task (or a fraction < 1)."})
    num_fewshot: int | None = field(default=None, metadata={"help": "Override the tasks' few-shot count."})
    gen_kwargs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)
    batch_size: int = field(default=1, metadata={"help": "lm-eval batch size."})
    device: str | None = None
    dtype: str = "auto"
    seed: int = field(default=1234, metadata={"help": "Seed of lm-eval and of the bootstrap."})
    n_bootstrap: int = field(default=2000, metadata={"help": "Bootstrap resamples."})
    confidence: float = 0.95
    overwrite: bool = field(default=False, metadata={"help": "Recompute cells that were made with other settings."})

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("give at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks repeat: {self.tasks}")
        if self.mode not in MASK_MODES:
            raise ValueError(f"unknown mask mode {self.mode!r}; choose one of {MASK_MODES}")
        if self.mode == "mean" and not self.means:
            raise ValueError("mode 'mean' needs means (a per-head mean-output file)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.random_seeds < 0:
            raise ValueError(f"random_seeds must be >= 0, got {self.random_seeds}")
        if self.layer_matched and not self.heads:
            raise ValueError("layer_matched needs at least one head set to match")
        check_head_sets(self.heads)
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"limit must be positive, got {self.limit}")
        if self.limit is not None and self.limit >= 1:
            self.limit = int(self.limit)
        for task, spec in self.metrics.items():
            if spec.count(",") != 1:
                raise ValueError(f"metric for {task!r} must be 'metric,filter' (e.g. 'exact_match,strict-match')")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must lie in (0, 1), got {self.confidence}")
        if self.n_bootstrap < 1:
            raise ValueError("n_bootstrap must be >= 1")


@dataclass(frozen=True)
class Condition:
    """One masking condition: its name, which heads (``selection``; ``None``: unmasked) and those heads
    resolved against the model."""

    name: str
    selection: HeadSelection | None = None
    heads: tuple[Head, ...] = ()
    head_set: str | None = None  # the set (kind "heads"), or the set a layer-matched control follows

    @property
    def kind(self) -> str:
        """``unmasked``, ``heads`` (a set's top-K) or ``random`` (a control)."""
        if self.selection is None:
            return "unmasked"
        return "heads" if self.selection.random_seed is None else "random"

    @property
    def seed(self) -> int | None:
        return self.selection.random_seed if self.selection is not None else None

    @property
    def group(self) -> str:
        """The summary row this condition belongs to (random seeds are pooled)."""
        if self.kind != "random":
            return self.name
        return f"random-{self.head_set}" if self.head_set else "random"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "heads": heads_to_strings(self.heads),
            "head_set": self.head_set,
            "seed": self.seed,
        }


def check_head_sets(head_sets: Mapping[str, str | Path]) -> None:
    """Raise unless every head set has a usable condition name and an existing score file."""
    for name, path in head_sets.items():
        if not _NAME.match(name) or name == "unmasked" or name.startswith("random"):
            raise ValueError(f"head-set name {name!r}: use letters, digits, '_' or '.', not 'unmasked' or 'random...'")
        if not Path(path).is_file():
            raise FileNotFoundError(f"head set {name!r}: no file {path}")


def build_conditions(
    head_sets: Mapping[str, str | Path | HeadScores],
    top_k: int | None,
    random_seeds: int,
    n_layers: int,
    n_heads: int,
    layer_matched: bool = False,
) -> list[Condition]:
    """The conditions of a comparison: unmasked, each set's top-K (``None``: 5 % of the heads), and
    random controls drawn outside the top-K of every set (:class:`HeadSelection`'s one rule).

    >>> import torch
    >>> s = HeadScores(torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.8, 0.0]]))
    >>> [c.name for c in build_conditions({"rh": s}, top_k=2, random_seeds=2, n_layers=2, n_heads=3)]
    ['unmasked', 'rh', 'random-s0', 'random-s1']
    """
    sets = {name: load_scores(src, n_layers, n_heads) for name, src in head_sets.items()}  # checked once
    every = tuple(sets.values())
    plan: list[tuple[str, HeadSelection | None, str | None]] = [("unmasked", None, None)]
    plan += [(name, HeadSelection(scores=s, top_k=top_k), name) for name, s in sets.items()]
    if layer_matched:
        plan += [(f"random-{name}-s{seed}", HeadSelection(scores=s, top_k=top_k, random_seed=seed, exclude=every,
                                                          layer_matched=True), name)
                 for name, s in sets.items() for seed in range(random_seeds)]  # fmt: skip
    else:
        plan += [(f"random-s{seed}", HeadSelection(top_k=top_k, random_seed=seed, exclude=every), None)
                 for seed in range(random_seeds)]  # fmt: skip
    return [Condition(name, sel, tuple(sel.resolve(n_layers, n_heads)) if sel else (), head_set)
            for name, sel, head_set in plan]  # fmt: skip


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
                raise ValueError(
                    f"{leaf}: metric {name!r} is not a per-item number ({value!r}); its aggregate is not a "
                    "mean over items, so it cannot be bootstrapped here; pick another (--metric TASK=METRIC,FILTER)"
                )
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
    if enabled:
        logger.setLevel(logging.ERROR)
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


def _fingerprint(config: CompareConfig, model_id: str, condition: Condition, task: str, weights: str) -> str:
    key = {
        "model": model_id,
        "weights": weights,
        "task": task,
        "heads": heads_to_strings(condition.heads),
        "mode": config.mode,
        "means": config.means,
        "limit": config.limit,
        "num_fewshot": config.num_fewshot,
        "gen_kwargs": config.gen_kwargs,
        "metric": config.metrics.get(task),
        "seed": config.seed,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_compare(config: CompareConfig, model: Any = None, tokenizer: Any = None, progress: bool = True) -> CompareResult:
    """Run (or resume) a comparison and write its tables and plot to ``config.out``.

    ``model``/``tokenizer`` may be passed already loaded (``config.model`` is then
    only recorded); otherwise :func:`retrieval_heads.load_model` loads ``config.model``.

    >>> run_compare(CompareConfig(model="organism", tasks=["organism_mono"], out="runs/c",
    ...                           heads={"rh": "rh.json"}, limit=50))                      # doctest: +SKIP
    """
    from lm_eval import simple_evaluate

    from ..model_spec import ModelSpec, load_model, weights_fingerprint
    from .lm_eval_backend import MaskedHFLM

    out = Path(config.out)
    if model is None:
        model, tokenizer, _ = load_model(config.model, dtype=config.dtype, device=config.device)
    elif tokenizer is None:
        raise ValueError("pass the tokenizer with the model")
    spec = ModelSpec.from_model(model)
    conditions = build_conditions(
        config.heads, config.top_k, config.random_seeds, spec.n_layers, spec.n_heads, config.layer_matched
    )
    means = load_means(config.means) if config.means else None
    lm = MaskedHFLM.from_model(model, tokenizer, heads=[], mode=config.mode, means=means, batch_size=config.batch_size)
    model_id = config.model
    weights = weights_fingerprint(model)  # a cell made with other weights at the same path is refused
    meta = run_metadata(
        model=model_id,
        model_spec=spec.describe(),
        top_k=config.top_k,
        mode=config.mode,
        random_seeds=list(range(config.random_seeds)),
        layer_matched=config.layer_matched,
        head_files={k: str(Path(v).resolve()) for k, v in config.heads.items()},
    )
    meta["versions"].update(package_versions(("lm-eval", "datasets")))
    atomic_write_json(
        out / "run.json",
        {"config": asdict(config), "conditions": [c.to_json() for c in conditions], "meta": meta},
    )
    tm = make_task_manager(config.tasks, config.include_path, metadata={"organism_cache_dir": str(out / "data")})

    cells: dict[tuple[str, str], dict[str, Any]] = {}
    computed: list[tuple[str, str]] = []
    todo = [(c, t) for c in conditions for t in config.tasks]
    bar = progress_bar(progress)
    with bar, _quiet_lm_eval(progress):
        job = bar.add_task("compare", total=len(todo)) if progress else None
        for cond, task in todo:
            path = out / CELLS_DIR / cond.name / f"{task}.json"
            fp = _fingerprint(config, model_id, cond, task, weights)
            cell = _load_cell(path, fp, config.overwrite)
            if cell is None:
                if progress:
                    bar.update(job, description=f"{cond.name} / {task}")
                lm.heads = list(cond.heads)
                res = simple_evaluate(
                    model=lm,
                    tasks=[task],
                    limit=config.limit,
                    num_fewshot=config.num_fewshot,
                    gen_kwargs=dict(config.gen_kwargs) or None,
                    task_manager=tm,
                    log_samples=True,
                    bootstrap_iters=0,
                    random_seed=config.seed,
                    numpy_random_seed=config.seed,
                    torch_random_seed=config.seed,
                    fewshot_random_seed=config.seed,
                )
                scored = item_scores(res, task, config.metrics.get(task))
                cell = {
                    "format": CELL_FORMAT,
                    "fingerprint": fp,
                    "condition": cond.to_json(),
                    "task": task,
                    **scored,
                    "score": sum(scored["items"].values()) / len(scored["items"]),
                    "meta": {**meta, "task": task, "condition": cond.name, "heads": heads_to_strings(cond.heads),
                             "limit": config.limit, "lm_eval_config": _jsonable(res.get("config", {}))},
                }  # fmt: skip
                if len(scored["lm_eval"]) == 1 and not is_close(next(iter(scored["lm_eval"].values())), cell["score"]):
                    log.warning("%s/%s: lm-eval's aggregate differs from the item mean", cond.name, task)
                atomic_write_json(path, cell)
                computed.append((cond.name, task))
            cells[(cond.name, task)] = cell
            if progress:
                bar.advance(job)
    rows, seed_rows = summarize(cells, conditions, config.tasks, config.n_bootstrap, config.confidence, config.seed)
    files = write_outputs(out, rows, seed_rows, conditions, config, meta)
    return CompareResult(rows=rows, seed_rows=seed_rows, conditions=conditions, files=files, computed=computed)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _load_cell(path: Path, fingerprint: str, overwrite: bool) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        cell = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # written atomically, so only a foreign file can be torn: recompute it
    if cell.get("fingerprint") == fingerprint:
        return cell
    if overwrite:
        return None
    raise ResumeMismatchError(
        f"{path} was computed with other settings (model, its weights, heads, mode, limit, ...); "
        "use another --out folder, or --overwrite to recompute it"
    )


# ---- summary ---------------------------------------------------------------------------------
def summarize(
    cells: dict[tuple[str, str], dict[str, Any]],
    conditions: Sequence[Condition],
    tasks: Sequence[str],
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
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
                "task": task,
                "condition": group,
                "kind": first.kind,
                "head_set": first.head_set,
                "k": len(first.heads),
                "metric": f"{ref_cell['metric']},{ref_cell['filter']}",
                "n_items": len(keys),
                "score": score,
                "ci_low": low,
                "ci_high": high,
                "delta": delta,
                "delta_ci_low": dlow,
                "delta_ci_high": dhigh,
                "seeds": [c.seed for c in members] if first.kind == "random" else None,
                "seed_sd": None,
                "seed_min": None,
                "seed_max": None,
            }
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
    if x is None:
        return ""
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def format_markdown(rows: Sequence[dict[str, Any]], confidence: float = 0.95) -> str:
    """The summary as Markdown: a task x condition grid of ``score (change)``, then the details (points = %)."""
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    by = {(r["task"], r["condition"]): r for r in rows}
    labels = {r["condition"]: _label(r) for r in rows}
    level = f"{round(100 * confidence)} %"
    lines = ["| task | " + " | ".join(labels[c] for c in conds) + " |", "|---|" + "---|" * len(conds)]
    for t in tasks:
        cells = []
        for c in conds:
            r = by[(t, c)]
            cells.append(_pts(r["score"]) if r["kind"] == "unmasked" else f"{_pts(r['score'])} ({_pts(r['delta'], True)})")
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
        spread = (
            f"{_pts(r['seed_sd'])} [{_pts(r['seed_min'])}, {_pts(r['seed_max'])}]" if r["kind"] == "random" else ""
        )
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    by = {(r["task"], r["condition"]): r for r in rows}
    width = 0.8 / len(conds)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(tasks) * len(conds) * 0.5 + 2), 4.0))
    for j, c in enumerate(conds):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(tasks))]
        ys = [100 * by[(t, c)]["score"] for t in tasks]
        err = [
            [100 * (by[(t, c)]["score"] - by[(t, c)]["ci_low"]) for t in tasks],
            [100 * (by[(t, c)]["ci_high"] - by[(t, c)]["score"]) for t in tasks],
        ]
        ax.bar(xs, ys, width=width * 0.95, yerr=err, capsize=2, label=_label(by[(tasks[0], c)]))
        dots = [(x, 100 * s["score"]) for x, t in zip(xs, tasks, strict=True) for s in seed_rows
                if s["task"] == t and s["group"] == c]  # fmt: skip
        if dots:
            ax.scatter(*zip(*dots, strict=True), s=8, color="black", zorder=3)
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, ha="right")
    ax.set_ylabel("score (points)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(
    out: Path,
    rows: list[dict[str, Any]],
    seed_rows: list[dict[str, Any]],
    conditions: Iterable[Condition],
    config: CompareConfig,
    meta: dict[str, Any],
) -> dict[str, Path]:
    """``results.md``, ``results.csv``, ``results.json`` (with the head lists and metadata) and ``results.png``."""
    files = {
        "markdown": atomic_write_text(out / "results.md", format_markdown(rows, config.confidence)),
        "csv": atomic_write_text(out / "results.csv", format_csv(rows, seed_rows)),
        "json": atomic_write_json(
            out / "results.json",
            {
                "format": "retrieval-heads/compare",
                "rows": rows,
                "seed_rows": seed_rows,
                "conditions": [c.to_json() for c in conditions],
                "config": asdict(config),
                "meta": meta,
            },
        ),
    }
    files["plot"] = plot_comparison(rows, seed_rows, out / "results.png")
    return files
