"""Find and read the artifacts of one or more run directories.

Each run directory is walked (a few levels deep, skipping model checkpoints)
and every JSON file is read by the ``format`` it is stamped with
(:func:`headatlas.runs.stamp`), never by guessing from its keys:

==================================  ==============================================================
``format``                          shown as
==================================  ==============================================================
``headatlas/head-scores``     a head-score map (also the reference code's ``{"L-H": [...]}``
                                    in a file named ``*scores*.json``)
``headatlas/detect-run``      the detection run's settings (metadata)
``headatlas/niah-eval``       NIAH grids under masking (``cells.json``)
``headatlas/compare``         the comparison table (``results.json``)
``headatlas/retmask-eval``    RetMask before/after (``retmask_eval.json``)
``headatlas/pair-stats``      RetMask preference pairs (``*.stats.json``)
``headatlas/retmask-train``   DPO training (``retmask_run.json``)
``headatlas/dpo-curves``      DPO curves, held-out before/after (``training_curves.json``)
``headatlas/sharing``         sharing across languages (``sharing.json``)
``headatlas/rh-vs-rth``       RH vs RTH (``rh_vs_rth-*.json``)
``headatlas/kv-compress``     KV compression by retrieval heads (``kv_compress.json``)
``headatlas/decore``          DeCoRe contrastive decoding (``decore.json``)
``headatlas/atlas``           the scorers compared (``atlas.json``, ``compare-scorers``)
==================================  ==============================================================

The detection journal (``samples.jsonl``, the journal the detect run names)
gives the per-cell retrieval outcome; ``headatlas_ablation.json`` (an
ablated checkpoint) its metadata. Other ``headatlas/...`` formats (run
records, per-cell files, journals) are parts of runs and not shown. A file
that cannot be read, or a JSON file without a known format, becomes a warning
or an entry of :attr:`Report.unrecognised` (``build_report(..., require_artifacts=True)``
names them when nothing can be shown).

>>> from pathlib import Path
>>> report = collect_runs([Path("runs/demo")])  # doctest: +SKIP
>>> [m.label for m in report.score_maps]  # doctest: +SKIP
['retrieval']
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..heads import FORMAT_NAME, HeadScoreFileError, HeadScores
from ..runs import canonical_format, format_name, read_jsonl

MAX_DEPTH = 4  # directory levels below a run directory that are searched
MAX_BYTES = 50 * 2**20  # larger files are skipped (checkpoint shards, big journals)
SKIP_DIRS = {".git", "__pycache__", "merged", "wandb", ".cache", "data"}
SKIP_FILES = {  # files of Hugging Face checkpoints and trainers: never report artifacts
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
    "special_tokens_map.json", "added_tokens.json", "trainer_state.json", "adapter_config.json",
    "model.safetensors.index.json", "preprocessor_config.json", "chat_template.json",
}
UNMASKED = "unmasked"  # the reference condition of niah-eval and compare (evaluate.compare.build_conditions)

ABLATION_FILES = ("headatlas_ablation.json", "retrieval_heads_ablation.json")  # masking's, today's and legacy
NIAH_METRICS = ("exact_match", "rouge1")  # evaluate.niah_eval.METRICS
JOURNAL_RE = re.compile(r"^samples(\.rank\d+)?\.jsonl$")  # detect's journal (detect.runner.SAMPLES_FILE)


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
    """RetMask before/after: per model and suite the accuracy, its 95 % half-width and the change from ``base``
    (with their bootstrap intervals when the run gave them); per contrast (``"retmask - random_control"``) and
    suite the paired change and its interval; per arm the masked heads, pairs and training steps."""

    source: str
    base: str
    results: dict[str, dict[str, dict[str, float | None]]]  # model -> suite -> {accuracy, ci95, n, delta, ...}
    concentration: dict[str, float] | None = None
    contrasts: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)  # "a - b" -> suite -> row
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)  # arm -> heads, n_pairs, n_train, steps, ...

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
    atlas: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # compare-scorers' atlas.json, as written
    metadata: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    detect_runs: list[str] = field(default_factory=list)  # sources of detect's run.json (metadata rows)
    warnings: list[str] = field(default_factory=list)
    unrecognised: list[str] = field(default_factory=list)  # JSON files with no known format: "source: why"

    @property
    def empty(self) -> bool:
        return not any((self.score_maps, self.detect_outcomes, self.niah, self.compare, self.retmask,
                        self.pair_stats, self.training, self.dpo_curves, self.sharing, self.rh_vs_rth, self.uses,
                        self.atlas))

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
    for path in entries:
        if path.is_dir():
            if depth < MAX_DEPTH and path.name not in SKIP_DIRS and not path.name.startswith((".", "checkpoint-")):
                yield from _walk(path, depth + 1)
        elif (path.suffix == ".json" or JOURNAL_RE.match(path.name)) and path.name not in SKIP_FILES \
                and not path.name.startswith("."):
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
    _one_row_per_run(report)
    try:
        _derive(report)
    except Exception as err:  # noqa: BLE001 - derived views are extras: say why they are missing, go on
        report.warnings.append(f"could not compare head sets ({type(err).__name__}: {err})")
    return report


def _folder(source: str) -> str:
    return source.replace("\\", "/").rsplit("/", 1)[0] if "/" in source.replace("\\", "/") else ""


def _one_row_per_run(report: Report) -> None:
    """A detection run writes its settings (``run.json``) and, at the end, its scores with the whole run's
    metadata (``head_scores.json``): one run, one metadata row, the scores' (it also has the outcome).
    A detection that wrote no scores keeps its ``run.json`` row."""
    scored = {_folder(m.source) for m in report.score_maps}
    drop = {s for s in report.detect_runs if _folder(s) in scored}
    report.metadata = [(s, m) for s, m in report.metadata if s not in drop]


# ---- reading one file -----------------------------------------------------------------------------------
def _read_file(path: Path, source: str, report: Report) -> None:
    """Add what ``path`` holds to ``report``, by its stamped ``format``."""
    if path.suffix == ".jsonl":
        records = list(read_jsonl(path))
        if records:
            _add_detect_journal(records, source, report)
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        report.warnings.append(f"{source}: corrupt JSON ({err})")
        return
    fmt = canonical_format(data.get("format")) if isinstance(data, dict) else ""
    reader = READERS.get(fmt)
    if reader is not None:
        reader(data, path.name, source, report)
    elif isinstance(data, dict) and not fmt and "scores" in path.name and _is_reference_scores(data):
        _add_scores(data, path.name, source, report)
    elif path.name in ABLATION_FILES and isinstance(data, dict):
        report.add_metadata(source, data)
    elif not fmt.startswith(format_name("")):
        report.unrecognised.append(f"{source}: not a headatlas artifact (no known format)")


def _is_reference_scores(data: dict[str, Any]) -> bool:
    return bool(data) and all(isinstance(v, list) for v in data.values()) and all("-" in k for k in data)


def _add_detect_run(data: dict[str, Any], name: str, source: str, report: Report) -> None:
    report.detect_runs.append(source)
    report.add_metadata(source, {k: v for k, v in data.items() if k not in ("prompt_ids", "format", "format_version",
                                                                          "fingerprints")})


def _add_compare(data: dict[str, Any], name: str, source: str, report: Report) -> None:
    report.compare.append((source, _compare_rows(data.get("rows") or [])))
    report.add_metadata(source, data.get("meta"))


def _keep(attr: str, meta: bool = True) -> Callable[[dict[str, Any], str, str, Report], None]:
    """A reader that keeps the file as written in ``report.<attr>`` and, with ``meta``, its ``meta`` as metadata."""
    def read(data: dict[str, Any], name: str, source: str, report: Report) -> None:
        getattr(report, attr).append((source, data))
        if meta:
            report.add_metadata(source, data.get("meta"))

    return read


def _add_training(data: dict[str, Any], name: str, source: str, report: Report) -> None:
    report.training.append((source, data))
    report.add_metadata(source, {k: v for k, v in data.items() if k != "log_history"})


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
def _add_niah_eval(data: dict[str, Any], name: str, source: str, report: Report) -> None:
    """``cells.json`` of :mod:`headatlas.evaluate.niah_eval`: one set of grids per metric."""
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
            baseline = UNMASKED if any(g.name == UNMASKED for g in grids) else None
            report.niah.append(NiahResult(source, grids, baseline, metric, heads))
    report.add_metadata(source, data.get("meta"))


# ---- RetMask before/after -----------------------------------------------------------------------------
def _add_model_comparison(data: dict[str, Any], name: str, source: str, report: Report) -> None:
    """``retmask_eval.json`` of :mod:`headatlas.retmask.evaluate` (``results``: model -> suite -> row)."""
    keys = ("accuracy", "ci95", "n", "delta", "ci_low", "ci_high", "delta_low", "delta_high")
    results = {str(m): {str(suite): {k: _number(row.get(k)) for k in keys}
                        for suite, row in per_suite.items() if isinstance(row, dict)}
               for m, per_suite in (data.get("results") or {}).items() if isinstance(per_suite, dict)}
    base = str(data.get("base", next(iter(results), "")))
    if base not in results:
        report.warnings.append(f"{source}: base model {base!r} has no results")
        return
    for per_suite in results.values():  # files from before the change was stored: compute it
        for suite, row in per_suite.items():
            ref = results[base].get(suite, {}).get("accuracy")
            if row["delta"] is None and row["accuracy"] is not None and ref is not None:
                row["delta"] = row["accuracy"] - ref
    conc = data.get("concentration") if isinstance(data.get("concentration"), dict) else None
    contrasts = {str(name): {str(suite): {k: _number(row.get(k)) for k in ("delta", "delta_low", "delta_high")}
                             for suite, row in per_suite.items() if isinstance(row, dict)}
                 for name, per_suite in (data.get("contrasts") or {}).items() if isinstance(per_suite, dict)}
    report.retmask.append(ModelComparison(source, base, results, conc, contrasts, _arms(data)))
    report.add_metadata(source, {k: v for k, v in data.items()
                                 if k not in ("results", "concentration", "suites", "contrasts")})


def _arms(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per arm of a pipeline run (``heads`` and ``pairs`` of ``retmask_eval.json``): what the report shows of it."""
    heads = data.get("heads") if isinstance(data.get("heads"), dict) else {}
    pairs = data.get("pairs") if isinstance(data.get("pairs"), dict) else {}
    arms = {}
    for arm in dict.fromkeys([*heads, *pairs]):
        h, p = heads.get(arm) or {}, pairs.get(arm) or {}
        training = p.get("training") if isinstance(p.get("training"), dict) else {}
        arms[str(arm)] = {"masked": ", ".join(map(str, h.get("masked") or [])) or None,
                          "prompts": p.get("n_prompts"), "pairs kept": p.get("n_pairs"), "trained on": p.get("n_train"),
                          "steps": training.get("steps"),
                          "held-out reward accuracy": training.get("heldout_reward_accuracy_after")}
    return arms


def _add_dpo_curves(data: dict[str, Any], name: str, source: str, report: Report) -> None:
    """``training_curves.json`` of :mod:`headatlas.retmask.curves`: per-step DPO metrics, held-out before/after."""
    train = [r for r in data.get("train") or [] if isinstance(r, dict) and isinstance(r.get("step"), (int, float))]
    heldout = data.get("heldout") if isinstance(data.get("heldout"), dict) else {}
    if not train and not any(isinstance(v, dict) for v in heldout.values()):
        report.warnings.append(f"{source}: DPO curves file holds no step and no held-out metrics")
        return
    report.dpo_curves.append((source, {"train": train, "heldout": heldout}))
    report.add_metadata(source, data.get("meta"))


# ---- shared helpers --------------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    """A finite number (``True`` is 1.0) as a float, else ``None``."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _grid_from_records(records: list[dict[str, Any]], score_key: str, name: str) -> Grid | None:
    cells: dict[tuple[Any, Any], list[float]] = defaultdict(list)
    for r in records:
        value = _number(r.get(score_key))
        if r.get("length") is None or r.get("depth") is None or value is None:
            continue
        cells[(r["depth"], r["length"])].append(value)
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


def _compare_rows(records: list[dict[str, Any]]) -> list[CompareRow]:
    """The summary rows of ``results.json`` (:func:`headatlas.evaluate.compare.summarize`)."""
    numbers = ("score", "delta", "ci_low", "ci_high", "delta_ci_low", "delta_ci_high")
    count = lambda v: int(v) if isinstance(v, (int, float)) else None  # noqa: E731
    return [CompareRow(task=str(r.get("task", "?")), condition=str(r.get("condition", "?")),
                       **{key: _number(r.get(key)) for key in numbers}, n=count(r.get("n_items")), k=count(r.get("k")),
                       metric=str(r["metric"]) if r.get("metric") is not None else None)
            for r in records if isinstance(r, dict)]


READERS = {  # format -> reader(data, file name, source, report)
    FORMAT_NAME: _add_scores,
    format_name("detect-run"): _add_detect_run,
    format_name("niah-eval"): _add_niah_eval,
    format_name("compare"): _add_compare,
    format_name("retmask-eval"): _add_model_comparison,
    format_name("pair-stats"): _keep("pair_stats"),
    format_name("retmask-train"): _add_training,
    format_name("dpo-curves"): _add_dpo_curves,
    format_name("kv-compress"): _keep("uses"),  # kv_compress.json (kvcache) and decore.json, as written
    format_name("decore"): _keep("uses"),
    format_name("sharing"): _keep("sharing", meta=False),
    format_name("rh-vs-rth"): _keep("rh_vs_rth"),
    format_name("atlas"): _keep("atlas"),
}


# ---- derived views ----------------------------------------------------------------------------------------
def _derive(report: Report) -> None:
    """Sharing across languages and RH vs RTH, computed from the score maps when no file gives them."""
    by_shape: dict[tuple[int, int], list[ScoreMap]] = defaultdict(list)
    for m in report.score_maps:
        by_shape[(m.scores.n_layers, m.scores.n_heads)].append(m)
    for maps in by_shape.values():
        k = min(20, maps[0].scores.n_total)  # the analyses' K of 20, or every head of a smaller model
        per_lang = {m.lang: m.scores for m in maps if m.kind == "retrieval" and m.lang}
        if not report.sharing and len(per_lang) >= 2:
            from ..multilingual.sharing import sharing_analysis

            report.sharing.append(("computed from the per-language head scores", sharing_analysis(per_lang, top_k=k)))
        rh = next((m for m in maps if m.kind == "retrieval" and not m.lang), None) or next(
            (m for m in maps if m.kind == "retrieval"), None)
        rth = next((m for m in maps if m.kind == "transition"), None)
        if not report.rh_vs_rth and rh is not None and rth is not None:
            from ..multilingual.sharing import compare_head_sets

            report.rh_vs_rth.append((f"computed from {rh.source} and {rth.source}", compare_head_sets(rh.scores, rth.scores, top_k=k)))
