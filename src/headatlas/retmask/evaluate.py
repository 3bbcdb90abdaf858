"""RetMask before/after: exact-match accuracy of the base and tuned models on the built-in model's tasks.

Suites: long-context retrieval at and past the trained length, plus parametric recall (must not regress).
All models are scored item by item on the same held-out examples, so changes are paired: accuracies carry a
binomial ``ci95`` and a bootstrap interval, changes and ``contrasts`` ``(a, b)`` a paired bootstrap interval.

>>> report = evaluate_models({"base": "organism", "retmask": "runs/retmask"}, RetMaskEvalConfig(n_per_task=200))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ..builtins import builtin_name
from ..heads import HeadScores
from ..model_spec import resolve_model_path, weights_fingerprint
from ..runs import ResumeMismatchError, atomic_write_json, open_run, run_metadata, stamp, track
from ..selection import concentration
from ..stats import bootstrap_ci, paired_bootstrap_ci

REPORT_FILE = "retmask_eval.json"
TASK_NAMES = ("multikey", "mono", "cross", "multihop", "parametric")  # the tasks TASK@LENGTH suites may name
JOURNAL_FILE = "retmask_eval.jsonl"  # one line per (model, suite) scored: a rerun scores only what is missing


@dataclass(frozen=True)
class EvalSuite:
    """One row of the report: an organism task at some lengths (``None``: the task's own defaults)."""

    name: str
    task: str
    lengths: tuple[int, ...] | None = None
    langs: tuple[str, ...] | None = None


@dataclass
class RetMaskEvalConfig:
    """What to evaluate: ``suites`` by name, examples per suite, the held-out seed (not the training one),
    the lengths of the ``*_long`` and ``*_past`` suites.

    >>> [s.name for s in RetMaskEvalConfig().build_suites()]
    ['multikey_long', 'mono_past', 'cross_past', 'multihop_past', 'parametric']
    """

    suites: tuple[str, ...] = field(
        default=("multikey_long", "mono_past", "cross_past", "multihop_past", "parametric"),
        metadata={"help": "Suites to run: multikey_long, mono_long, {multikey,mono,cross,multihop}_past, "
                          "multikey, mono, cross, multihop, parametric, or TASK@LENGTH (e.g. multikey@256)."},
    )
    n_per_task: int = field(default=200, metadata={"help": "Held-out examples per suite."})
    seed: int = field(default=20_260_707, metadata={"help": "Seed of the held-out examples (not the training seed)."})
    long_lengths: tuple[int, ...] = field(default=(1024,), metadata={"help": "Context lengths of the *_long suites."})
    past_lengths: tuple[int, ...] = field(
        default=(1536,), metadata={"help": "Context lengths of the *_past suites (past the trained 1024)."})
    batch_size: int = field(default=8, metadata={"help": "Batch size of exact_match_accuracy."})

    def __post_init__(self) -> None:
        if self.n_per_task < 1:
            raise ValueError("n_per_task must be >= 1")
        self.suites = tuple(self.suites)
        self.long_lengths = tuple(int(x) for x in self.long_lengths)
        self.past_lengths = tuple(int(x) for x in self.past_lengths)
        unknown = [s for s in self.suites if s not in self._catalogue()]
        if unknown:
            raise ValueError(f"unknown suites {unknown}; choose from {sorted(self._catalogue())}")

    def _catalogue(self) -> dict[str, EvalSuite]:
        at_length = {}  # TASK@LENGTH: one task at one context length
        for name in self.suites:
            task, sep, length = name.partition("@")
            if sep and task in TASK_NAMES and length.isdigit() and int(length) > 0:
                at_length[name] = EvalSuite(name, task, (int(length),))
        return {
            **at_length,
            "multikey_long": EvalSuite("multikey_long", "multikey", self.long_lengths),
            "mono_long": EvalSuite("mono_long", "mono", self.long_lengths),
            **{f"{task}_past": EvalSuite(f"{task}_past", task, self.past_lengths)
               for task in ("multikey", "mono", "cross", "multihop")},
            **{task: EvalSuite(task, task) for task in ("multikey", "mono", "cross", "multihop", "parametric")},
        }

    def build_suites(self) -> list[EvalSuite]:
        return [self._catalogue()[name] for name in self.suites]


def load_for_eval(path_or_name: str, device: str | None = None):  # noqa: ANN201 - (model, tokenizer)
    """Load a base checkpoint, a RetMask output (full model or LoRA adapter, merged here) or ``organism``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(resolve_model_path(path_or_name))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if (path / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def ci95(p: float, n: int) -> float:
    """Binomial 95 % half-width of an accuracy ``p`` over ``n`` examples.

    >>> round(ci95(0.5, 100), 3)
    0.098
    """
    return 1.96 * math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def item_answer(tasks: Any, model: Any, tokenizer: Any, example: Any) -> tuple[float, str | None]:
    """One item's score and, when the task suite has ``generate_answers`` (greedy answer strings), its answer
    (correct when it equals ``example.answer``, both stripped, as the suite's exact match counts it)."""
    if hasattr(tasks, "generate_answers"):
        answer = tasks.generate_answers(model, tokenizer, [example], batch_size=1)[0]
        return float(answer == example.answer.strip()), answer
    return float(tasks.exact_match_accuracy(model, tokenizer, [example], batch_size=1)), None


def changed_answers(base: Sequence[str | None], other: Sequence[str | None]) -> float | None:
    """Share of items whose answer differs from the base model's (None when answers were not recorded).

    >>> changed_answers(["a", "b", "c", "d"], ["a", "x", "c", "d"])
    0.25
    """
    if not base or None in base or None in other or len(base) != len(other):
        return None
    return sum(a != b for a, b in zip(base, other, strict=True)) / len(base)


def make_suite_examples(suite: EvalSuite, config: RetMaskEvalConfig, tasks: ModuleType) -> list[Any]:
    optional = {"lengths": suite.lengths, "langs": suite.langs}
    kwargs = {k: list(v) for k, v in optional.items() if v is not None}
    return list(tasks.make_eval_set(suite.task, n=config.n_per_task, seed=config.seed, **kwargs))


def evaluate_models(
    models: Mapping[str, Any],
    config: RetMaskEvalConfig | None = None,
    scores: HeadScores | None = None,
    out_dir: str | Path | None = None,
    tasks: ModuleType | None = None,
    extra: Mapping[str, Any] | None = None,
    contrasts: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Score every model on every suite; the first model is the base the others are compared with.

    ``models`` maps a name to a path/name or a ``(model, tokenizer)`` pair. Returns the report (also
    ``out_dir/retmask_eval.json``). With ``out_dir`` the run resumes (:func:`headatlas.runs.open_run`):
    each (model, suite) is journalled with its weights fingerprint; other settings or weights are refused.
    """
    config = config or RetMaskEvalConfig()
    if tasks is None:
        from ..builtins import builtin_for, default_builtin, task_suite

        base = next(iter(models.values()), None)  # the base model's tasks, when it is (trained like) a built-in
        tasks = task_suite(base if isinstance(base, str | Path) and builtin_for(base) else default_builtin())
    if not models:
        raise ValueError("no models to evaluate")
    unknown = sorted({m for pair in contrasts for m in pair} - set(models))
    if unknown:
        raise ValueError(f"contrasts name models that are not evaluated: {unknown}")
    for spec in models.values():  # a checkpoint folder that is not there: refused before anything is written
        if isinstance(spec, (str, Path)) and str(spec).startswith((".", "/", "~")) and not Path(spec).expanduser().exists():
            from ..model_spec import model_not_found

            raise model_not_found(str(spec))
    suites = config.build_suites()
    examples = {s.name: make_suite_examples(s, config, tasks) for s in suites}
    settings = {k: v for k, v in asdict(config).items() if k != "batch_size"}  # the batch changes no answer
    run = None if out_dir is None else open_run(
        out_dir, "retmask-eval", settings, record_file="retmask_eval.run.json", journal=JOURNAL_FILE,
        discard=(JOURNAL_FILE,), seed=config.seed)
    done = {(r["model"], r["suite"]): r for r in (run.records() if run else [])}
    results: dict[str, dict[str, dict[str, float]]] = {}
    items: dict[str, dict[str, list[float]]] = {}
    answers: dict[str, dict[str, list[str | None]]] = {}
    total = len(models) * len(suites)
    with track("retmask evaluate", total, sum(1 for n in models for s in suites if (n, s.name) in done)) as bar:
        for name, spec in models.items():
            model, tokenizer = load_for_eval(spec) if isinstance(spec, (str, Path)) else spec
            weights = weights_fingerprint(model) if isinstance(model, torch.nn.Module) else None
            results[name], items[name], answers[name] = {}, {}, {}
            for suite in suites:
                row = done.get((name, suite.name))
                if row is not None and row["weights"] != weights:
                    raise ResumeMismatchError(
                        f"{out_dir} holds scores of a model {name!r} whose weights differ from this one's "
                        "(retrained?); use another --out folder, or delete its retmask_eval.jsonl.")
                if row is None:  # item by item (one example a call costs no more on CPU), for paired intervals
                    exs = examples[suite.name]
                    scored = [item_answer(tasks, model, tokenizer, ex) for ex in exs]
                    per_item = [score for score, _answer in scored]
                    acc = sum(per_item) / len(per_item)
                    row = {"model": name, "suite": suite.name, "weights": weights, "accuracy": acc,
                           "ci95": ci95(acc, len(exs)), "n": len(exs), "items": per_item,
                           "answers": [answer for _score, answer in scored]}
                    if run is not None:
                        run.append(row)
                    bar.advance(description=f"{name} / {suite.name}")
                items[name][suite.name] = row["items"]
                answers[name][suite.name] = row.get("answers") or [None] * len(row["items"])
                _mean, low, high = bootstrap_ci(row["items"], seed=config.seed)
                results[name][suite.name] = {**{k: row[k] for k in ("accuracy", "ci95", "n")},
                                             "ci_low": low, "ci_high": high}
            if isinstance(spec, (str, Path)):
                del model
    base = next(iter(results))
    for name, per_suite in results.items():
        for suite_name, row in per_suite.items():
            row["delta"], row["delta_low"], row["delta_high"] = paired_bootstrap_ci(
                items[base][suite_name], items[name][suite_name], seed=config.seed)
            row["changed_answers"] = changed_answers(answers[base][suite_name], answers[name][suite_name])
    paired = {f"{a} - {b}": {s.name: dict(zip(("delta", "delta_low", "delta_high"), paired_bootstrap_ci(
        items[b][s.name], items[a][s.name], seed=config.seed), strict=True)) for s in suites} for a, b in contrasts}
    report = stamp("retmask-eval", run_metadata(
        base=base,
        models={k: (builtin_name(str(v)) if isinstance(v, (str, Path)) else "<in memory>") for k, v in models.items()},
        config=asdict(config),
        suites=[asdict(s) for s in suites],
        results=results,
        contrasts=paired,
        concentration=concentration(scores) if scores is not None else None,
        **dict(extra or {}),
    ))
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / REPORT_FILE, report)
    return report


def _change(r: Mapping[str, Any]) -> str:
    """``+10.0 [+2.5, +17.5]`` (points; the interval when there is one)."""
    text = f"{100 * r['delta']:+.1f}"
    if r.get("delta_low") is not None:
        text += f" [{100 * r['delta_low']:+.1f}, {100 * r['delta_high']:+.1f}]"
    return text


def format_table(report: Mapping[str, Any], names: Sequence[str] | None = None) -> str:
    """A plain-text table: one row per suite, one column per model (accuracy ± 95 %, change from the base
    with its paired interval), then one column per contrast (``a - b`` with its paired interval).

    >>> r = {"base": "b", "results": {"b": {"mono": {"accuracy": 0.5, "ci95": 0.1, "delta": 0.0}},
    ...                               "t": {"mono": {"accuracy": 0.6, "ci95": 0.1, "delta": 0.1}}}}
    >>> print(format_table(r))
    suite   b            t
    mono    50.0 ± 10.0  60.0 ± 10.0 (+10.0)
    >>> r["contrasts"] = {"t - b": {"mono": {"delta": 0.1, "delta_low": 0.0, "delta_high": 0.2}}}
    >>> print(format_table(r).splitlines()[1])
    mono    50.0 ± 10.0  60.0 ± 10.0 (+10.0)  +10.0 [+0.0, +20.0]
    """
    results = report["results"]
    contrasts = report.get("contrasts") or {}
    names = list(names or results)
    suites = list(next(iter(results.values())))
    rows = [["suite", *names, *contrasts]]
    for suite in suites:
        row = [suite]
        for name in names:
            r = results[name][suite]
            cell = f"{100 * r['accuracy']:.1f} ± {100 * r['ci95']:.1f}"
            if name != report["base"]:
                cell += f" ({_change(r)})"
            row.append(cell)
        row += [_change(per_suite[suite]) for per_suite in contrasts.values()]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
