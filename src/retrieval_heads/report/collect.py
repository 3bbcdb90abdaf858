"""Find and read the artifacts of one or more run directories, tolerantly.

Each run directory is walked (a few levels deep, skipping model checkpoints)
and every file is recognised by its name *or* its content, so a report can be
made from a detection run, an evaluation, a RetMask run, a multilingual run or
a directory that holds several of them:

=========================  =========================================================
artifact                   recognised by
=========================  =========================================================
head scores                ``"format": "retrieval-heads/head-scores"`` (any file name),
                           or the reference code's ``{"L-H": [...]}`` named ``*scores*.json``
detection journal          ``samples.jsonl`` records with ``counted`` and ``events``
detection settings         ``run.json`` (``"format": "retrieval-heads/detect-run"``)
NIAH under masking         ``cells.json`` (``"format": "retrieval-heads/niah-eval"``)
comparison (lm-eval)       ``results.json`` (``"format": "retrieval-heads/compare"``)
RetMask before/after       ``retmask_eval.json`` (``results``: model -> suite -> accuracy)
RetMask pairs / training   ``*.stats.json`` (``PairStats``), ``retmask_run.json``
DPO curves                 ``"format": "retrieval-heads/dpo-curves"`` (``training_curves.json``)
ablated checkpoint         ``retrieval_heads_ablation.json`` (metadata only)
sharing                    ``{"languages": .., "jaccard_matrix": ..}`` (:func:`sharing_analysis`)
RH vs RTH                  ``{"rh_top_k": .., "rth_top_k": ..}`` (:func:`compare_head_sets`)
KV compression             ``kv_compress.json`` (``"format": "retrieval-heads/kv-compress"``)
DeCoRe                     ``decore.json`` (``"format": "retrieval-heads/decore"``)
=========================  =========================================================

Files without a ``format`` are also recognised by their content: records
(JSON list, JSONL or CSV) with a length, a depth and a score are a NIAH grid;
with a task, a condition and a score a comparison; with ``before`` and
``after`` a before/after table. A file whose ``format`` names another
``retrieval-heads/...`` artifact (e.g. the per-cell ``compare-cell`` files) is
not shown.

A missing or unrecognised file only means a section is left out; a file that
is recognised but cannot be read becomes a warning shown on the page. Nothing
here raises on bad input.

>>> from pathlib import Path
>>> report = collect_runs([Path("runs/demo")])  # doctest: +SKIP
>>> [m.label for m in report.score_maps]  # doctest: +SKIP
['retrieval']
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import read_jsonl
from ..heads import FORMAT_NAME, HeadScoreFileError, HeadScores

MAX_DEPTH = 4  # directory levels below a run directory that are searched
MAX_BYTES = 50 * 2**20  # larger files are skipped (checkpoint shards, big journals)
SKIP_DIRS = {".git", "__pycache__", "merged", "wandb", ".cache", "data"}
SKIP_FILES = {  # files of Hugging Face checkpoints and trainers: never report artifacts
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
    "special_tokens_map.json", "added_tokens.json", "trainer_state.json", "adapter_config.json",
    "model.safetensors.index.json", "preprocessor_config.json", "chat_template.json",
}
UNMASKED_NAMES = ("unmasked", "none", "baseline", "base", "original", "no_mask", "no-mask", "clean", "before")

FORMAT_DETECT_RUN = "retrieval-heads/detect-run"
FORMAT_NIAH_EVAL = "retrieval-heads/niah-eval"
FORMAT_COMPARE = "retrieval-heads/compare"
FORMAT_DPO_CURVES = "retrieval-heads/dpo-curves"  # retmask.curves.FORMAT_NAME
FORMATS_USES = ("retrieval-heads/kv-compress", "retrieval-heads/decore")  # kv-compress and decore results
NIAH_METRICS = ("exact_match", "rouge1")  # evaluate.niah_eval.METRICS
RETMASK_EVAL_FILE = "retmask_eval.json"  # retmask.evaluate.REPORT_FILE
ABLATION_FILE = "retrieval_heads_ablation.json"  # masking.ABLATION_FILE

LENGTH_KEYS = ("length", "context_length", "ctx_len", "context_tokens", "n_tokens")
DEPTH_KEYS = ("depth", "depth_percent", "depth_frac")
SCORE_KEYS = ("accuracy", "acc", "correct", "score", "exact_match", "em", "rouge1", "rouge", "recall", "f1",
              "value", "mean")
CONDITION_KEYS = ("condition", "masking", "mask", "setting", "variant", "head_set", "label", "name")
TASK_KEYS = ("task", "benchmark", "dataset", "suite")
CONTAINER_KEYS = ("records", "results", "rows", "cells", "items", "table", "data")


# ---- what a report is made of ---------------------------------------------------------------------
@dataclass
class ScoreMap:
    """One head-score file: its label (``retrieval``, ``transition``, ``retrieval · de``), kind and language."""

    label: str
    kind: str
    lang: str | None
    source: str
    scores: HeadScores


@dataclass
class Grid:
    """A 2-D table of numbers with labelled rows and columns (NIAH: rows = depths, columns = lengths)."""

    name: str
    rows: list[Any]
    cols: list[Any]
    values: list[list[float | None]]
    row_key: str = "depth"
    col_key: str = "length"
    metric: str = "accuracy"


@dataclass
class NiahResult:
    """NIAH grids of one file and metric, one per masking condition; which condition is unmasked; masked heads."""

    source: str
    grids: list[Grid]
    baseline: str | None
    metric: str = "accuracy"
    heads: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class CompareRow:
    """One (task, condition) cell of a comparison: score and its interval, change vs unmasked and its interval."""

    task: str
    condition: str
    score: float | None
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    delta_ci_low: float | None = None
    delta_ci_high: float | None = None
    k: int | None = None
    metric: str | None = None


@dataclass
class ModelComparison:
    """RetMask before/after: per model and suite the accuracy, its 95 % half-width and the change from ``base``."""

    source: str
    base: str
    results: dict[str, dict[str, dict[str, float | None]]]  # model -> suite -> {accuracy, ci95, n, delta}
    concentration: dict[str, float] | None = None

    @property
    def models(self) -> list[str]:
        return list(self.results)

    @property
    def suites(self) -> list[str]:
        return list(dict.fromkeys(s for per_suite in self.results.values() for s in per_suite))


@dataclass
class Report:
    """Everything read from the run directories, ready to render."""

    run_dirs: list[Path]
    score_maps: list[ScoreMap] = field(default_factory=list)
    detect_outcomes: list[tuple[str, Grid, dict[str, Any]]] = field(default_factory=list)
    niah: list[NiahResult] = field(default_factory=list)
    compare: list[tuple[str, list[CompareRow]]] = field(default_factory=list)
    retmask: list[ModelComparison] = field(default_factory=list)
    pair_stats: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    training: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    dpo_curves: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # training_curves.json
    sharing: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    rh_vs_rth: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    uses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # kv-compress / decore results, as written
    metadata: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any((self.score_maps, self.detect_outcomes, self.niah, self.compare, self.retmask,
                        self.pair_stats, self.training, self.dpo_curves, self.sharing, self.rh_vs_rth, self.uses))

    def add_metadata(self, source: str, meta: Any) -> None:
        """Record a run's metadata once (a compare run writes the same ``meta`` to two files)."""
        if isinstance(meta, dict) and meta and all(meta != m for _, m in self.metadata):
            self.metadata.append((source, meta))


# ---- walking ------------------------------------------------------------------------------------------
def _walk(root: Path, depth: int = 0) -> Iterator[Path]:
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return
    names = {p.name for p in entries}
    for path in entries:
        if path.is_dir():
            if depth < MAX_DEPTH and path.name not in SKIP_DIRS and not path.name.startswith((".", "checkpoint-")):
                yield from _walk(path, depth + 1)
        elif path.suffix in (".json", ".jsonl", ".csv") and path.name not in SKIP_FILES and not path.name.startswith("."):
            if path.suffix == ".csv" and f"{path.stem}.json" in names:
                continue  # results.csv repeats results.json
            yield path


def collect_runs(run_dirs: list[Path]) -> Report:
    """Read every recognised artifact under ``run_dirs`` into a :class:`Report` (never raises on bad files)."""
    report = Report(run_dirs=[Path(d) for d in run_dirs])
    for run_dir in report.run_dirs:
        if not run_dir.exists():
            report.warnings.append(f"{run_dir}: no such directory")
            continue
        base = run_dir.parent if run_dir.is_file() else run_dir
        files = [run_dir] if run_dir.is_file() else list(_walk(run_dir))
        for path in files:
            source = f"{base.name}/{path.relative_to(base)}" if base.name else str(path)
            try:
                if path.stat().st_size > MAX_BYTES:
                    continue
                _read_file(path, source, report)
            except Exception as err:  # noqa: BLE001 - a broken file is a warning on the page, never a crash
                report.warnings.append(f"{source}: could not be read ({type(err).__name__}: {err})")
    try:
        _derive(report)
    except Exception as err:  # noqa: BLE001 - derived views are extras: say why they are missing, go on
        report.warnings.append(f"could not compare head sets ({type(err).__name__}: {err})")
    return report


# ---- reading one file -----------------------------------------------------------------------------------
def _load_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return [{k.strip(): _number(v) for k, v in row.items() if k} for row in csv.DictReader(fh)]


def _number(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return float(text) if text.strip() else None
    except ValueError:
        return text


def _read_file(path: Path, source: str, report: Report) -> None:
    """Recognise ``path`` and add what it holds to ``report`` (unrecognised: nothing happens)."""
    name = path.name
    if path.suffix == ".jsonl":
        if not any(word in name for word in ("samples", "niah", "eval", "compare", "results")):
            return  # journals of other steps (pairs, NIAH answers): large and summarised elsewhere
        records = list(read_jsonl(path))
        if name.startswith("samples") and records and all("counted" in r for r in records):
            _add_detect_journal(records, source, report)
        else:
            _add_records(records, source, report)
        return
    if path.suffix == ".csv":
        _add_records(_load_csv(path), source, report)
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        if _looks_like_ours(name):
            report.warnings.append(f"{source}: corrupt JSON ({err})")
        return
    _add_json(data, name, source, report)


def _looks_like_ours(name: str) -> bool:
    words = ("scores", "run", "niah", "eval", "compare", "comparison", "retmask", "sharing", "overlap",
             "stats", "results", "before_after", "transition", "summary", "cells", "ablation")
    return any(w in name for w in words)


def _add_json(data: Any, name: str, source: str, report: Report) -> None:
    if not isinstance(data, dict):
        records = _records_of(data)
        if records:
            _add_records(records, source, report)
        return
    fmt = str(data.get("format", ""))
    if fmt == FORMAT_NAME or (not fmt and "scores" in name and _is_reference_scores(data)):
        _add_scores(data, name, source, report)
    elif fmt == FORMAT_DETECT_RUN:
        report.add_metadata(source, {k: v for k, v in data.items() if k not in ("prompt_ids", "format")})
    elif fmt == FORMAT_NIAH_EVAL:
        _add_niah_eval(data, source, report)
    elif fmt == FORMAT_COMPARE:
        report.compare.append((source, _compare_rows(data.get("rows") or [])))
        report.add_metadata(source, data.get("meta"))
    elif fmt == FORMAT_DPO_CURVES:
        _add_dpo_curves(data, source, report)
    elif fmt in FORMATS_USES:
        report.uses.append((source, data))
        report.add_metadata(source, data.get("meta"))
    elif fmt.startswith("retrieval-heads/"):
        return  # an artifact the report does not show (e.g. per-cell compare files)
    elif "languages" in data and "jaccard_matrix" in data:
        report.sharing.append((source, data))
    elif "rh_top_k" in data and "rth_top_k" in data:
        report.rh_vs_rth.append((source, data))
    elif name.endswith(".stats.json") and "n_pairs" in data:
        report.pair_stats.append((source, data))
        report.add_metadata(source, data.get("meta"))
    elif "log_history" in data or name == "retmask_run.json":
        report.training.append((source, data))
        report.add_metadata(source, {k: v for k, v in data.items() if k != "log_history"})
    elif name == ABLATION_FILE:
        report.add_metadata(source, data)
    elif isinstance(data.get("results"), dict) and "base" in data:
        _add_model_comparison(data, source, report)
    elif isinstance(data.get("before"), dict) and isinstance(data.get("after"), dict):
        results = {"before": _suite_scores(data["before"]), "after": _suite_scores(data["after"])}
        report.retmask.append(ModelComparison(source, "before", _with_deltas(results, "before")))
        report.add_metadata(source, data.get("meta"))
    elif not _add_grid_dict(data, source, report):
        records = _records_of(data, nested=_looks_like_ours(name))
        if records:
            _add_records(records, source, report)
            report.add_metadata(source, data.get("meta") or data.get("metadata"))


def _is_reference_scores(data: dict[str, Any]) -> bool:
    return bool(data) and all(isinstance(v, list) for v in data.values()) and all("-" in k for k in data)


# ---- head scores ------------------------------------------------------------------------------------
def _kind_of(meta: dict[str, Any], source: str) -> str:
    """``transition`` if ``meta["method"]`` says so or, without a method, a file or folder is named ``rth*``."""
    method = str(meta.get("method", "")).lower()
    if "transition" in method or "rth" in method:
        return "transition"
    if "retrieval" in method:
        return "retrieval"
    if method:
        return method
    parts = [p.lower() for p in Path(source).parts]  # the run directory, folders below it, the file
    return "transition" if any(p.startswith("rth") or "transition" in p for p in parts) else "retrieval"


def _lang_of(meta: dict[str, Any], name: str) -> str | None:
    for key in ("lang", "language", "target_lang", "answer_lang", "expected_lang"):
        value = meta.get(key)
        if isinstance(value, str) and value:
            return value
    stem = Path(name).stem  # head_scores.de.json / head_scores_de.json
    for sep in (".", "_"):
        tail = stem.rsplit(sep, 1)[-1]
        if stem != tail and 2 <= len(tail) <= 3 and tail.isalpha() and tail not in ("rth", "rh"):
            return tail
    return None


def _add_scores(data: dict[str, Any], name: str, source: str, report: Report) -> None:
    try:
        scores = HeadScores.from_json(data, source=source)
    except HeadScoreFileError as err:
        report.warnings.append(f"{source}: not a valid head-score file ({err})")
        return
    kind, lang = _kind_of(scores.meta, source), _lang_of(scores.meta, name)
    source_lang = scores.meta.get("source_lang") or scores.meta.get("needle_lang")
    label = kind
    if lang:
        label += f" · {source_lang}→{lang}" if source_lang and source_lang != lang else f" · {lang}"
    report.score_maps.append(ScoreMap(label, kind, lang, source, scores))
    report.add_metadata(source, scores.meta)


# ---- detection journal ----------------------------------------------------------------------------
def _add_detect_journal(records: list[dict[str, Any]], source: str, report: Report) -> None:
    """Per (depth, length) the share of prompts that passed the retrieval filter."""
    grid = _grid_from_records(records, "counted", name="retrieved (passed the filter)")
    if grid is None:
        return
    n = len(records)
    counted = sum(1 for r in records if r.get("counted"))
    secs = [float(r["seconds"]) for r in records if isinstance(r.get("seconds"), (int, float))]
    summary = {"prompts": n, "counted": counted, "failed": n - counted,
               "mean seconds / prompt": sum(secs) / len(secs) if secs else None,
               "mode": records[0].get("mode")}
    report.detect_outcomes.append((source, grid, summary))


# ---- NIAH under masking ------------------------------------------------------------------------------
def _add_niah_eval(data: dict[str, Any], source: str, report: Report) -> None:
    """``cells.json`` of :mod:`retrieval_heads.evaluate.niah_eval`: one set of grids per metric."""
    cells = [c for c in data.get("cells") or [] if isinstance(c, dict)]
    heads = {str(c.get("name")): list(c.get("heads") or []) for c in data.get("conditions") or [] if isinstance(c, dict)}
    order = list(heads) or list(dict.fromkeys(str(c.get("condition")) for c in cells))
    for metric in NIAH_METRICS:
        grids = []
        for condition in order:
            grid = _grid_from_records([c for c in cells if str(c.get("condition")) == condition], metric, condition)
            if grid is not None:
                grids.append(grid)
        if grids:
            report.niah.append(NiahResult(source, grids, _baseline([g.name for g in grids]), metric, heads))
    report.add_metadata(source, data.get("meta"))


# ---- RetMask before/after -----------------------------------------------------------------------------
def _suite_scores(per_suite: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    out = {}
    for suite, value in per_suite.items():
        row = value if isinstance(value, dict) else {}
        out[str(suite)] = {"accuracy": _score_of(value), "ci95": _score_of(row.get("ci95")),
                           "n": _score_of(row.get("n")), "delta": _score_of(row.get("delta"))}
    return out


def _with_deltas(results: dict[str, dict[str, dict[str, float | None]]], base: str) -> dict[str, Any]:
    for per_suite in results.values():
        for suite, row in per_suite.items():
            ref = results[base].get(suite, {}).get("accuracy")
            if row.get("delta") is None and row.get("accuracy") is not None and ref is not None:
                row["delta"] = row["accuracy"] - ref  # type: ignore[operator]
    return results


def _add_model_comparison(data: dict[str, Any], source: str, report: Report) -> None:
    """``retmask_eval.json`` of :mod:`retrieval_heads.retmask.evaluate` (``results``: model -> suite -> row)."""
    results = {str(m): _suite_scores(v) for m, v in data["results"].items() if isinstance(v, dict)}
    base = str(data.get("base", next(iter(results), "")))
    if base not in results:
        report.warnings.append(f"{source}: base model {base!r} has no results")
        return
    conc = data.get("concentration") if isinstance(data.get("concentration"), dict) else None
    report.retmask.append(ModelComparison(source, base, _with_deltas(results, base), conc))
    report.add_metadata(source, {k: v for k, v in data.items() if k not in ("results", "concentration", "suites")})


def _add_dpo_curves(data: dict[str, Any], source: str, report: Report) -> None:
    """``training_curves.json`` of :mod:`retrieval_heads.retmask.curves`: per-step DPO metrics, held-out before/after."""
    train = [r for r in data.get("train") or [] if isinstance(r, dict) and isinstance(r.get("step"), (int, float))]
    heldout = data.get("heldout") if isinstance(data.get("heldout"), dict) else {}
    if not train and not any(isinstance(v, dict) for v in heldout.values()):
        report.warnings.append(f"{source}: DPO curves file holds no step and no held-out metrics")
        return
    report.dpo_curves.append((source, {"train": train, "heldout": heldout}))
    report.add_metadata(source, data.get("meta"))


# ---- generic records: NIAH grids, comparisons, before/after ------------------------------------------
def _key(record: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in record and record[k] is not None), None)


def _records_of(data: Any, nested: bool = False) -> list[dict[str, Any]] | None:
    """The records in ``data``: a list, a list under a container key, or (``nested``) ``{condition: [...]}``
    and ``{task: {condition: score}}``."""
    if isinstance(data, list):
        return [r for r in data if isinstance(r, dict)] or None
    if not isinstance(data, dict):
        return None
    for key in CONTAINER_KEYS:
        if isinstance(data.get(key), list):
            return _records_of(data[key])
    if not nested:
        return None
    out: list[dict[str, Any]] = []
    for outer, value in data.items():
        if outer in ("meta", "metadata", "config"):
            continue
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            out += [{"condition": outer, **r} for r in value]
        elif isinstance(value, dict) and value and all(isinstance(v, (int, float, dict)) for v in value.values()):
            for inner, cell in value.items():
                cell = cell if isinstance(cell, dict) else {"score": cell}
                if _key(cell, SCORE_KEYS) is None:
                    return None
                out.append({"task": outer, "condition": inner, **cell})
    return out or None


def _score_of(value: Any) -> float | None:
    if isinstance(value, dict):
        key = _key(value, SCORE_KEYS)
        value = value[key] if key else None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _add_records(records: list[dict[str, Any]], source: str, report: Report) -> None:
    if not records:
        return
    first = records[0]
    if _key(first, LENGTH_KEYS) and _key(first, DEPTH_KEYS) and _key(first, SCORE_KEYS):
        _add_niah(records, source, report)
    elif "before" in first and "after" in first:
        results: dict[str, dict[str, dict[str, float | None]]] = {"before": {}, "after": {}}
        for r in records:
            task = str(r.get(_key(r, TASK_KEYS) or "task", "?"))
            results["before"][task] = {"accuracy": _score_of(r.get("before"))}
            results["after"][task] = {"accuracy": _score_of(r.get("after"))}
        report.retmask.append(ModelComparison(source, "before", _with_deltas(results, "before")))
    elif _key(first, TASK_KEYS) and (_key(first, SCORE_KEYS) or "delta" in first):
        report.compare.append((source, _compare_rows(records)))


def _grid_from_records(records: list[dict[str, Any]], score_key: str, name: str) -> Grid | None:
    cells: dict[tuple[Any, Any], list[float]] = defaultdict(list)
    for r in records:
        length_key, depth_key = _key(r, LENGTH_KEYS), _key(r, DEPTH_KEYS)
        value = _score_of(r.get(score_key))
        if length_key is None or depth_key is None or value is None:
            continue
        cells[(r[depth_key], r[length_key])].append(value)
    if not cells:
        return None
    depths = sorted({d for d, _ in cells}, key=_sort_key)
    lengths = sorted({n for _, n in cells}, key=_sort_key)
    values = [[_mean(cells.get((d, n))) for n in lengths] for d in depths]
    return Grid(name, depths, lengths, values, metric=score_key)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, float(value)) if isinstance(value, (int, float)) else (1, str(value))


def _mean(values: list[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


def _add_niah(records: list[dict[str, Any]], source: str, report: Report) -> None:
    by_condition: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        key = _key(r, CONDITION_KEYS)
        by_condition[_condition_name(r[key]) if key else "unmasked"].append(r)
    score_key = _key(records[0], SCORE_KEYS) or "score"
    grids = [g for c, rows in by_condition.items() if (g := _grid_from_records(rows, score_key, c)) is not None]
    if grids:
        report.niah.append(NiahResult(source, grids, _baseline([g.name for g in grids]), score_key))


def _condition_name(value: Any) -> str:
    if isinstance(value, dict):  # a condition record: {"name": ..., "kind": ..., "heads": [...]}
        value = value.get("name", value)
    if isinstance(value, list):  # a list of heads
        return ",".join(map(str, value)) or "unmasked"
    return str(value)


def _baseline(names: list[str]) -> str | None:
    for candidate in UNMASKED_NAMES:
        for name in names:
            if name.lower() == candidate:
                return name
    return None


def _add_grid_dict(data: dict[str, Any], source: str, report: Report) -> bool:
    """``{"conditions": {name: {"lengths", "depths", "accuracy": [[depth][length]]}}}`` or one such grid."""
    specs = data.get("conditions") if isinstance(data.get("conditions"), dict) else {"unmasked": data}
    grids = []
    for condition, spec in specs.items():
        if not isinstance(spec, dict):
            return False
        lengths = spec.get("lengths") or spec.get("context_lengths")
        depths = spec.get("depths")
        matrix_key = next((k for k in ("accuracy", "grid", "scores", "values", "score") if isinstance(spec.get(k), list)), None)
        if not (isinstance(lengths, list) and isinstance(depths, list) and matrix_key):
            return False
        matrix = spec[matrix_key]
        if len(matrix) == len(lengths) != len(depths):  # given as [length][depth]
            matrix = [list(col) for col in zip(*matrix, strict=True)]
        if len(matrix) != len(depths) or any(len(row) != len(lengths) for row in matrix):
            report.warnings.append(f"{source}: grid '{condition}' does not match its lengths x depths")
            return True
        grids.append(Grid(str(condition), list(depths), list(lengths),
                          [[_score_of(v) for v in row] for row in matrix], metric=matrix_key))
    if not grids:
        return False
    report.niah.append(NiahResult(source, grids, _baseline([g.name for g in grids]), grids[0].metric))
    report.add_metadata(source, data.get("meta"))
    return True


def _interval(r: dict[str, Any], prefix: str = "") -> tuple[float | None, float | None]:
    for key in (f"{prefix}ci", f"{prefix}ci95", f"{prefix}ci_95", f"{prefix}interval"):
        ci = r.get(key)
        if isinstance(ci, (list, tuple)) and len(ci) == 2:
            return _score_of(ci[0]), _score_of(ci[1])
        if isinstance(ci, dict):
            return _score_of(ci.get("low", ci.get("lo"))), _score_of(ci.get("high", ci.get("hi")))
    low = next((r[k] for k in (f"{prefix}ci_low", f"{prefix}ci_lower") if k in r), None)
    high = next((r[k] for k in (f"{prefix}ci_high", f"{prefix}ci_upper") if k in r), None)
    return _score_of(low), _score_of(high)


def _compare_rows(records: list[dict[str, Any]]) -> list[CompareRow]:
    rows = []
    for r in records:
        if not isinstance(r, dict):
            continue
        task_key, cond_key, score_key = _key(r, TASK_KEYS), _key(r, CONDITION_KEYS), _key(r, SCORE_KEYS)
        low, high = _interval(r)
        d_low, d_high = _interval(r, "delta_")
        n = r.get("n") if r.get("n") is not None else r.get("n_items")
        k = r.get("k")
        rows.append(CompareRow(
            task=str(r[task_key]) if task_key else "?",
            condition=_condition_name(r[cond_key]) if cond_key else "?",
            score=_score_of(r.get(score_key)) if score_key else None,
            delta=_score_of(r.get("delta", r.get("change"))),
            ci_low=low, ci_high=high, n=int(n) if isinstance(n, (int, float)) else None,
            delta_ci_low=d_low, delta_ci_high=d_high,
            k=int(k) if isinstance(k, (int, float)) else None,
            metric=str(r["metric"]) if r.get("metric") is not None else None,
        ))
    baseline = _baseline(sorted({row.condition for row in rows}))
    if baseline is not None:  # fill a missing delta from the unmasked score of the same task
        base = {row.task: row.score for row in rows if row.condition == baseline}
        for row in rows:
            if row.delta is None and row.score is not None and base.get(row.task) is not None:
                row.delta = row.score - base[row.task]  # type: ignore[operator]
    return rows


# ---- derived views ----------------------------------------------------------------------------------------
def _derive(report: Report) -> None:
    """Sharing across languages and RH vs RTH, computed from the score maps when no file gives them."""
    by_shape: dict[tuple[int, int], list[ScoreMap]] = defaultdict(list)
    for m in report.score_maps:
        by_shape[(m.scores.n_layers, m.scores.n_heads)].append(m)
    for maps in by_shape.values():
        per_lang = {m.lang: m.scores for m in maps if m.kind == "retrieval" and m.lang}
        if not report.sharing and len(per_lang) >= 2:
            from ..multilingual.sharing import sharing_analysis

            report.sharing.append(("computed from the per-language head scores", sharing_analysis(per_lang)))
        rh = next((m for m in maps if m.kind == "retrieval" and not m.lang), None) or next(
            (m for m in maps if m.kind == "retrieval"), None)
        rth = next((m for m in maps if m.kind == "transition"), None)
        if not report.rh_vs_rth and rh is not None and rth is not None:
            from ..multilingual.sharing import compare_head_sets

            report.rh_vs_rth.append((f"computed from {rh.source} and {rth.source}", compare_head_sets(rh.scores, rth.scores)))
