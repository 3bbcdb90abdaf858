"""Local data for lm-eval tasks: the RTH paper's benchmarks offline, and the organism's tasks.

**Benchmark fixtures** (:func:`write_benchmark_fixtures`): for MGSM (direct, native CoT, English CoT),
MMLU-ProX (and -Lite), MLQA and XQuAD, a small Parquet dataset per language in the hub dataset's schema,
and per task a YAML under the task's *real name* that includes lm-eval's own task definition and only
points it at the local files (``dataset_path: parquet``, ``dataset_kwargs: {data_files: ...}``).
``TaskManager(include_path=fixtures.include_path)`` then resolves e.g. ``mgsm_native_cot_de`` to the
local copy: prompts, filters and metrics are lm-eval's, only the items are ours (hand-written, parallel
across en/de/zh, in ``fixture_items.json``, plus templated arithmetic so every MMLU-ProX subject has
items). :func:`derive_local_task` does the same for any task and local files (e.g. MLQA converted with
:func:`mlqa_from_squad_json`; the hub copy is a loading script ``datasets`` >= 4 refuses to run).

**Organism tasks** (:func:`organism_dataset`): the ``custom_dataset`` of the ``organism_*`` YAMLs in
``tasks/organism/``; it writes the built-in model's ``make_eval_set(...)`` to JSONL once (in
``HEADATLAS_CACHE``, ``~/.cache/headatlas`` or the ``organism_cache_dir`` task metadata).

>>> fx = write_benchmark_fixtures("/tmp/rh-fixtures", langs=["de"])  # doctest: +SKIP
>>> from lm_eval.tasks import TaskManager                           # doctest: +SKIP
>>> TaskManager(include_path=str(fx.include_path)).load(["xquad_de"])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..runs import atomic_write_bytes, atomic_write_jsonl, atomic_write_text, read_jsonl

TASKS_DIR = Path(__file__).parent / "tasks"
"""The task YAMLs shipped with the package: ``organism/`` and ``xquad_compat/``."""

FIXTURE_LANGS: tuple[str, ...] = ("en", "de", "zh")
FAMILIES: tuple[str, ...] = ("mgsm", "mmlu_prox", "mlqa", "xquad")
MMLU_PROX_SUBJECTS: tuple[str, ...] = (
    "biology", "business", "chemistry", "computer_science", "economics", "engineering", "health",
    "history", "law", "math", "other", "philosophy", "physics", "psychology",
)  # fmt: skip
MGSM_VARIANTS: tuple[str, ...] = ("direct", "native_cot", "en_cot")
ORGANISM_TASKS: tuple[str, ...] = ("mono", "cross", "multihop", "parametric", "multikey")
FIXTURE_TAG = "headatlas_fixtures"

_CHOICES = "ABCDEFGHIJ"


# ---- schemas ---------------------------------------------------------------------------------
def schemas() -> dict[str, Any]:
    """``datasets.Features`` of each family, as on the hub (the fields lm-eval's tasks read, typed).

    - MGSM (``juletxara/mgsm``): ``question``, ``answer`` (CoT text, null on test),
      ``answer_number``, ``equation_solution``.
    - MMLU-ProX (``li-lab/MMLU-ProX``): ``question``, ``option_0`` .. ``option_9``,
      ``answer`` (a letter), ``answer_index``, ``cot_content``, ``category`` (lm-eval's
      ``process_docs`` filters on it), ``question_id``, ``src``.
    - MLQA (``facebook/mlqa``) and XQuAD (``google/xquad``): SQuAD format, ``answers``
      is ``{"text": [...], "answer_start": [...]}``.

    >>> sorted(schemas()["mgsm"])
    ['answer', 'answer_number', 'equation_solution', 'question']
    """
    from datasets import Features, List, Value

    text, squad = Value("string"), {"text": List(Value("string")), "answer_start": List(Value("int32"))}
    return {
        "mgsm": Features({"question": text, "answer": text, "answer_number": Value("int32"), "equation_solution": text}),
        "mmlu_prox": Features({
            "question_id": Value("int64"), "question": text, **{f"option_{i}": text for i in range(10)},
            "answer": text, "answer_index": Value("int64"), "cot_content": text, "category": text, "src": text,
        }),
        "mlqa": Features({"id": text, "title": text, "context": text, "question": text, "answers": squad}),
        "xquad": Features({"id": text, "context": text, "question": text, "answers": squad}),
    }  # fmt: skip


# ---- the items -------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _items() -> dict[str, Any]:
    text = resources.files("headatlas.evaluate").joinpath("fixture_items.json").read_text("utf-8")
    return json.loads(text)


def _check_lang(lang: str, family: str) -> None:
    if lang not in (written := _items()["arithmetic_question"]):
        raise ValueError(f"no fixture items in language {lang!r} for {family}; written for {sorted(written)}")


def mgsm_rows(lang: str) -> dict[str, list[dict[str, Any]]]:
    """MGSM splits ``train`` (with the CoT answer, as lm-eval's few-shot examples expect) and ``test``; the
    train ``answer`` starts with lm-eval's answer prefix (``"Schritt-für-Schritt-Antwort:"``), which it slices off.

    >>> mgsm_rows("de")["test"][0]["answer_number"]
    8
    """
    from lm_eval.tasks.mgsm.utils import LANGUAGES

    _check_lang(lang, "mgsm")
    prefix = LANGUAGES[lang]["ANSWER"]
    test = [{"question": it[lang], "answer": None, "answer_number": it["answer_number"], "equation_solution": None}
            for it in _items()["math_test"]]  # fmt: skip
    train = [{"question": it[lang]["question"], "answer": f"{prefix} {it[lang]['cot']}",
              "answer_number": it["answer_number"], "equation_solution": None} for it in _items()["math_train"]]
    return {"train": train, "test": test}


def mmlu_prox_rows(lang: str, subjects: Sequence[str] = MMLU_PROX_SUBJECTS) -> dict[str, list[dict[str, Any]]]:
    """MMLU-ProX splits ``validation`` (5 CoT examples per subject: the few-shot pool) and ``test`` (>= 2 per subject).

    The CoT phrases ("A: Denken wir Schritt für Schritt nach.", "Die Antwort ist (X)")
    come from lm-eval's ``mmlu_prox/lang_libs.py``, so lm-eval's answer regex finds them.

    >>> rows = mmlu_prox_rows("de")["test"]
    >>> sorted({r["category"] for r in rows}) == sorted(s.replace("_", " ") for s in MMLU_PROX_SUBJECTS)
    True
    """
    from lm_eval.tasks.mmlu_prox.lang_libs import LANG_LIBS

    _check_lang(lang, "mmlu_prox")
    lib = LANG_LIBS[lang]
    step, answer_is = lib[4], lib[5]  # "A: Let's think step by step.", "the answer is ({})"
    items = _items()
    counter = iter(range(10**6))

    def row(question: str, options: list[str], index: int, reasoning: str, category: str) -> dict[str, Any]:
        letter = _CHOICES[index]
        conclusion = answer_is.format(letter)
        return {
            "question_id": next(counter), "question": question, **{f"option_{i}": options[i] for i in range(10)},
            "answer": letter, "answer_index": index,
            "cot_content": f"{step} {reasoning} {conclusion[:1].upper()}{conclusion[1:]}.",
            "category": category, "src": f"headatlas-fixture-{category.replace(' ', '_')}",
        }  # fmt: skip

    def arithmetic(k: int, category: str) -> dict[str, Any]:
        a, b = 10 + 7 * k % 40, 5 + 11 * k % 50
        total, index = a + b, k % 10
        options = [str(total + d - index) for d in range(10)]
        question = items["arithmetic_question"][lang].format(a=a, b=b)
        return row(question, options, index, f"{a} + {b} = {total}.", category)

    test: list[dict[str, Any]] = []
    for mc in items["multiple_choice"]:
        if mc["category"] in subjects:
            it = mc[lang]
            test.append(row(it["question"], it["options"], mc["answer_index"], it["reasoning"], mc["category"]))
    for s, subject in enumerate(subjects):
        category = subject.replace("_", " ")  # lm-eval filters on "computer science"
        test += [arithmetic(2 * s + j, category) for j in range(2)]
    # lm-eval draws the 5 few-shot examples from the validation items of the task's own
    # category (its process_docs filters the few-shot pool too): 5 per subject, as on the hub
    validation = [arithmetic(100 + 5 * s + j, subject.replace("_", " ")) for s, subject in enumerate(subjects) for j in range(5)]
    return {"validation": validation, "test": test}


def _qa_row(item: dict[str, Any], context_lang: str, question_lang: str, uid: str) -> dict[str, Any]:
    ctx, q = item[context_lang], item[question_lang]
    start = ctx["context"].index(ctx["answer"])
    return {"id": uid, "context": ctx["context"], "question": q["question"],
            "answers": {"text": [ctx["answer"]], "answer_start": [start]}}  # fmt: skip


def mlqa_rows(context_lang: str, question_lang: str) -> dict[str, list[dict[str, Any]]]:
    """MLQA ``mlqa.{context}.{question}``: context and answer in one language, question in another.

    >>> r = mlqa_rows("de", "en")["test"][0]
    >>> r["question"], r["answers"]["text"]
    ('Where does the Rhine rise?', ['in den Schweizer Alpen'])
    """
    for lang in (context_lang, question_lang):
        _check_lang(lang, "mlqa")
    rows = [{"title": f"fixture-{i}", **_qa_row(it, context_lang, question_lang, f"mlqa-{context_lang}-{question_lang}-{i}")}
            for i, it in enumerate(_items()["qa"])]  # fmt: skip
    return {"test": rows, "validation": rows[:2]}


def xquad_rows(lang: str) -> dict[str, list[dict[str, Any]]]:
    """XQuAD ``xquad.{lang}``: one ``validation`` split (the only split XQuAD has).

    >>> xquad_rows("zh")["validation"][0]["answers"]
    {'text': ['瑞士阿尔卑斯山'], 'answer_start': [6]}
    """
    _check_lang(lang, "xquad")
    return {"validation": [_qa_row(it, lang, lang, f"xquad-{lang}-{i}") for i, it in enumerate(_items()["qa"])]}


def mlqa_from_squad_json(path: str | Path) -> list[dict[str, Any]]:
    """Rows in lm-eval's MLQA schema from an official MLQA file (SQuAD JSON, e.g. ``test-context-de-question-de.json``),
    for :func:`derive_local_task` (the hub's ``facebook/mlqa`` is a loading script ``datasets`` >= 4 refuses).

    >>> import json, tempfile, os
    >>> squad = {"data": [{"title": "T", "paragraphs": [{"context": "Bonn am Rhein.", "qas": [
    ...     {"id": "q1", "question": "Wo?", "answers": [{"text": "am Rhein", "answer_start": 5}]}]}]}]}
    >>> p = os.path.join(tempfile.mkdtemp(), "mlqa.json"); _ = open(p, "w").write(json.dumps(squad))
    >>> mlqa_from_squad_json(p)[0]["answers"]
    {'text': ['am Rhein'], 'answer_start': [5]}
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [
        {"id": qa["id"], "title": article.get("title", ""), "context": para["context"], "question": qa["question"],
         "answers": {"text": [a["text"] for a in qa["answers"]],
                     "answer_start": [int(a["answer_start"]) for a in qa["answers"]]}}
        for article in data["data"] for para in article["paragraphs"] for qa in para["qas"]
    ]  # fmt: skip


# ---- writing datasets and task YAMLs ---------------------------------------------------------
def write_parquet(rows: list[dict[str, Any]], features: Any, path: str | Path) -> Path:
    """Write ``rows`` with explicit ``datasets.Features`` (types survive in the Parquet metadata)."""
    from datasets import Dataset

    buf = io.BytesIO()
    Dataset.from_list(rows, features=features).to_parquet(buf)
    return atomic_write_bytes(path, buf.getvalue())


def lm_eval_task_yaml(task: str) -> Path:
    """The YAML file of one of lm-eval's built-in tasks (XQuAD: the transformers-5-safe copy shipped here).

    >>> lm_eval_task_yaml("mgsm_native_cot_de").name
    'mgsm_native_cot_de.yaml'
    """
    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks"
    if m := re.fullmatch(r"mgsm_(direct|native_cot|en_cot)_(\w+)", task):
        path = root / "mgsm" / m.group(1) / f"{task}.yaml"
    elif m := re.fullmatch(r"mmlu_prox_(?:lite_)?([a-z]{2})_\w+", task):
        path = root / "mmlu_prox" / m.group(1) / f"{task}.yaml"
    elif re.fullmatch(r"mlqa_[a-z]{2}_[a-z]{2}", task):
        path = root / "mlqa" / f"{task}.yaml"
    elif re.fullmatch(r"xquad_[a-z]{2}", task):
        path = TASKS_DIR / "xquad_compat" / f"{task}.yaml"
    else:  # any other task: look it up in lm-eval's index (slower: reads every task YAML)
        from lm_eval.tasks._index import TaskIndex

        entry = TaskIndex.build([root]).get(task)
        if entry is None or entry.yaml_path is None:
            raise KeyError(f"lm-eval has no task named {task!r}")
        path = entry.yaml_path
    if not path.is_file():
        raise KeyError(f"lm-eval has no task named {task!r} (looked for {path})")
    return path


def derive_local_task(task: str, data_files: dict[str, str | Path], out_dir: str | Path, data_format: str = "parquet",
                      base_yaml: str | Path | None = None, tag: str = FIXTURE_TAG) -> Path:
    """Write ``{out_dir}/{task}.yaml``: lm-eval's task ``task``, unchanged, reading ``data_files`` (split name ->
    local file in ``data_format``: ``parquet``, ``json`` or ``csv``); ``base_yaml`` overrides the definition
    included (default: :func:`lm_eval_task_yaml`).

    >>> derive_local_task("xquad_de", {"validation": "/data/xquad_de.parquet"}, "/tmp/rh-tasks")  # doctest: +SKIP
    PosixPath('/tmp/rh-tasks/xquad_de.yaml')
    """
    base = Path(base_yaml) if base_yaml else lm_eval_task_yaml(task)
    config = {"include": str(base.resolve()), "task": task, "tag": tag, "dataset_path": data_format, "dataset_name": None,
              "dataset_kwargs": {"data_files": {split: str(Path(p).resolve()) for split, p in data_files.items()}}}
    header = f"# Written by headatlas.evaluate.fixtures: lm-eval's {task} on local files.\n"
    body = yaml.safe_dump(config, allow_unicode=True, sort_keys=False, width=1000)
    return atomic_write_text(Path(out_dir) / f"{task}.yaml", header + body)


@dataclass(frozen=True)
class BenchmarkFixtures:
    """What :func:`write_benchmark_fixtures` wrote.

    ``include_path`` is the folder to give ``TaskManager(include_path=...)`` or
    ``lm_eval --include_path``; ``tasks`` maps each family to its task names.
    """

    root: Path
    include_path: Path
    tasks: dict[str, list[str]] = field(default_factory=dict)

    @property
    def all_tasks(self) -> list[str]:
        return [t for names in self.tasks.values() for t in names]


def write_benchmark_fixtures(out_dir: str | Path, langs: Iterable[str] = FIXTURE_LANGS,
                             families: Iterable[str] = FAMILIES, mmlu_prox_lite: bool = True) -> BenchmarkFixtures:
    """Write local datasets and task YAMLs for the RTH paper's benchmarks under their real names, per language
    ``L``: ``mgsm_{direct,native_cot,en_cot}_L``, ``mmlu_prox_L_{subject}`` (14 subjects; also
    ``mmlu_prox_lite_L_*``), ``mlqa_C_Q`` (every pair), ``xquad_L``. Data goes to ``out_dir/data``, YAMLs
    to ``out_dir/tasks`` (the include path). Rewriting is idempotent.

    >>> fx = write_benchmark_fixtures("/tmp/rh-fixtures", langs=["en", "de"])  # doctest: +SKIP
    >>> "mgsm_native_cot_de" in fx.tasks["mgsm"]                              # doctest: +SKIP
    True
    """
    out = Path(out_dir)
    data, tasks_dir = out / "data", out / "tasks"
    langs, families = list(langs), list(families)
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown benchmark families {unknown}; choose from {FAMILIES}")
    feats = schemas()
    prefixes = ("mmlu_prox", "mmlu_prox_lite") if mmlu_prox_lite else ("mmlu_prox",)

    def datasets(family: str) -> list[tuple[str, dict[str, list[dict[str, Any]]], list[tuple[str, str]]]]:
        """(dataset name, its splits, [(task name, YAML folder)]) of each dataset of ``family``."""
        if family == "mgsm":
            return [(lang, mgsm_rows(lang), [(f"mgsm_{v}_{lang}", "mgsm") for v in MGSM_VARIANTS]) for lang in langs]
        if family == "mmlu_prox":
            return [(lang, mmlu_prox_rows(lang), [(f"{p}_{lang}_{s}", f"{p}/{lang}") for p in prefixes
                                                  for s in MMLU_PROX_SUBJECTS]) for lang in langs]  # fmt: skip
        if family == "mlqa":
            return [(f"{c}.{q}", mlqa_rows(c, q), [(f"mlqa_{c}_{q}", "mlqa")]) for c in langs for q in langs]
        return [(lang, xquad_rows(lang), [(f"xquad_{lang}", "xquad")]) for lang in langs]

    written: dict[str, list[str]] = {}
    for family in families:
        names = written.setdefault(family, [])
        for name, splits, tasks in datasets(family):
            files = {s: write_parquet(rows, feats[family], data / family / name / f"{s}.parquet")
                     for s, rows in splits.items()}  # fmt: skip
            for task, folder in tasks:
                derive_local_task(task, files, tasks_dir / folder)
                names.append(task)
    return BenchmarkFixtures(root=out, include_path=tasks_dir, tasks=written)


# ---- the organism's tasks --------------------------------------------------------------------
def cache_dir(override: str | Path | None = None) -> Path:
    """Where generated task data is cached: ``override``, ``$HEADATLAS_CACHE``, or ``~/.cache/headatlas``."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "headatlas"
    return Path(override or os.environ.get("HEADATLAS_CACHE") or default)


def _make_eval_set(task: str, n: int, seed: int, lengths: Sequence[int] | None, langs: Sequence[str] | None):
    """The built-in organism's ``make_eval_set`` (its task suite; tests replace this with a stand-in)."""
    from ..builtins import default_builtin, task_suite

    kwargs = {k: list(v) for k, v in (("lengths", lengths), ("langs", langs)) if v is not None}
    return task_suite(default_builtin()).make_eval_set(task, n=n, seed=seed, **kwargs)


organism_eval_set: Callable[..., Sequence[Any]] = _make_eval_set


def _as_row(example: Any, index: int, task: str) -> dict[str, Any]:
    raw = asdict(example) if is_dataclass(example) else dict(example) if isinstance(example, dict) else vars(example)
    row = {"id": f"{task}-{index}"}
    for key, value in raw.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue  # tensors, token spans as tuples of objects: not needed by the task
        row[key] = value
    for key in ("prompt", "answer"):
        if not isinstance(row.get(key), str):
            raise ValueError(f"organism example {index} of {task!r} has no string {key!r}: {raw!r}")
    return row


def write_organism_data(task: str, n: int = 200, seed: int = 1234, lengths: Sequence[int] | None = None,
                        langs: Sequence[str] | None = None, out_dir: str | Path | None = None) -> Path:
    """Write ``make_eval_set(task, n, seed, lengths, langs)`` to JSONL (once) and return its path.

    The file name carries the settings (``mono-n200-seed1234-<hash>.jsonl``), so
    a second call with the same settings reuses it.

    >>> write_organism_data("mono", n=50, out_dir="/tmp/rh-organism")  # doctest: +SKIP
    PosixPath('/tmp/rh-organism/organism_tasks/mono-n50-seed1234-....jsonl')
    """
    if task not in ORGANISM_TASKS:
        raise ValueError(f"unknown organism task {task!r}; choose from {ORGANISM_TASKS}")
    from .. import __version__

    key = json.dumps({"lengths": lengths, "langs": langs, "version": __version__}, sort_keys=True, default=list)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    path = cache_dir(out_dir) / "organism_tasks" / f"{task}-n{n}-seed{seed}-{digest}.jsonl"
    if path.exists():
        return path
    rows = [_as_row(ex, i, task) for i, ex in enumerate(organism_eval_set(task, n, seed, lengths, langs))]
    if not rows:
        raise ValueError(f"make_eval_set({task!r}, n={n}) returned no examples")
    return atomic_write_jsonl(path, rows)


def organism_dataset(organism_cache_dir: str | None = None, **kwargs: Any):
    """lm-eval ``custom_dataset`` of the ``organism_*`` tasks: a ``DatasetDict`` with a ``test`` split.

    lm-eval passes the task's ``dataset_kwargs`` (``organism_task``, ``organism_n``, ``organism_seed``,
    ``organism_lengths``, ``organism_langs``: :func:`write_organism_data`'s arguments with the prefix)
    and the run's metadata (ignored, except ``organism_cache_dir``).
    """
    from datasets import Dataset, DatasetDict

    settings = {k.removeprefix("organism_"): v for k, v in kwargs.items() if k.startswith("organism_")}
    path = write_organism_data(**settings, out_dir=organism_cache_dir)
    return DatasetDict({"test": Dataset.from_list(list(read_jsonl(path)))})
