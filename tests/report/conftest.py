"""Synthetic run directories for the report tests, written with the producers' own writers where they exist.

``make_run(root)`` writes every artifact the report reads; ``parts`` picks a subset:

- ``scores``: ``detect/head_scores.json`` (6 layers x 8 heads, ``HeadScores.save``) and ``detect/run.json``
- ``samples``: ``detect/samples.jsonl`` (the detection journal, one line per prompt)
- ``transition``: ``rth/head_scores.json`` (``meta["method"] = "transition"``)
- ``languages``: ``ml/{en,de,zh}/head_scores.json`` and ``ml/sharing.json`` (``sharing_analysis``, stamped)
- ``rh_rth``: ``ml/rh_vs_rth.json`` (``compare_head_sets``, stamped)
- ``niah``: ``niah/cells.json`` (``evaluate.niah_eval.aggregate`` + ``write_niah_outputs``)
- ``compare``: ``compare/results.json`` and ``results.csv`` (``evaluate.compare.summarize`` + ``write_outputs``)
- ``retmask``: ``retmask/retmask_eval.json`` (``retmask.evaluate.evaluate_models`` on stand-in tasks),
  ``retmask/pairs.stats.json`` (``PairStats.save``), ``retmask/retmask_run.json`` (training, with a loss curve)
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from headatlas.evaluate.compare import Condition
from headatlas.heads import Head, HeadScores
from headatlas.report import Report, build_report
from headatlas.runs import append_jsonl, atomic_write_json, run_metadata, stamp
from headatlas.selection import HeadSelection

N_LAYERS, N_HEADS = 6, 8
LENGTHS = [100, 200, 400]
DEPTHS = [0.0, 0.5, 1.0]
CONDITIONS = [  # unmasked, a head set's top-2, a random control (as evaluate.compare.build_conditions makes them)
    Condition("unmasked"),
    Condition("rh", HeadSelection(scores="rh.json", top_k=2), (Head(4, 1), Head(5, 3)), head_set="rh"),
    Condition("random-s0", HeadSelection(top_k=2, random_seed=0, exclude=("rh.json",)), (Head(0, 2), Head(1, 5))),
]
ALL_PARTS = ("scores", "samples", "transition", "languages", "rh_rth", "niah", "compare", "retmask")
PART_PATHS = {  # where make_run puts each part, relative to the run directory
    "scores": ("detect/head_scores.json", "detect/run.json"),
    "samples": ("detect/samples.jsonl",),
    "transition": ("rth",),
    "languages": ("ml/en", "ml/de", "ml/zh", "ml/sharing.json"),
    "rh_rth": ("ml/rh_vs_rth.json",),
    "niah": ("niah",),
    "compare": ("compare",),
    "retmask": ("retmask",),
}


def synthetic_scores(seed: int = 0, method: str = "retrieval-score", **meta: object) -> HeadScores:
    """A 6 x 8 map with distinct values (no ties): a few strong heads in late layers, small noise elsewhere."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(N_LAYERS, N_HEADS, generator=g) * 0.08
    scores[5, 3], scores[4, 1], scores[5, 6], scores[3, 2] = 0.91, 0.62, 0.35, 0.18
    scores += torch.arange(N_LAYERS * N_HEADS).reshape(N_LAYERS, N_HEADS) * 1e-5  # break ties
    info = run_metadata(method=method, model="tiny-llama", mode="greedy", seed=seed, lengths=LENGTHS,
                        depths=DEPTHS, n_prompts=9, counted_prompts=8, failed_prompts=1, wall_s=12.5)
    return HeadScores(scores, {**info, **meta})


def make_run(root: Path, parts: tuple[str, ...] = ALL_PARTS) -> Path:
    """Write the chosen synthetic artifacts under ``root``; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    rh = synthetic_scores(0)
    if "scores" in parts:
        rh.save(root / "detect" / "head_scores.json")
        atomic_write_json(root / "detect" / "run.json", {
            "format": "headatlas/detect-run", "config": {"mode": "greedy", "seed": 0, "batch_size": 2},
            "model": {"model": "tiny-llama", "revision": None}, "lengths": LENGTHS, "depths": DEPTHS,
            "prompt_ids": ["p0"]})
    if "samples" in parts:
        for i, (length, depth) in enumerate((n, d) for n in LENGTHS for d in DEPTHS):
            append_jsonl(root / "detect" / "samples.jsonl", {
                "prompt_id": f"p{i}", "length": length, "depth": depth, "needle_id": "n0", "lang": "en",
                "mode": "greedy", "answer": "a sandwich", "span_len": 3, "response": "a sandwich",
                "rouge": 1.0 if i != 4 else 0.0, "counted": i != 4, "n_scored": 3, "stop": "eos",
                "events": {"5.3": 3, "4.1": 2}, "seconds": 0.5, "rank": 0})
    if "transition" in parts:
        scores = synthetic_scores(1, method="transition").scores.flip(0)  # RTHs in early/middle layers
        HeadScores(scores, synthetic_scores(1, method="transition", source_lang="en", lang="de").meta).save(
            root / "rth" / "head_scores.json")
    if "languages" in parts:
        from headatlas.multilingual.sharing import sharing_analysis

        per_lang = {lang: synthetic_scores(i, lang=lang) for i, lang in enumerate(("en", "de", "zh"))}
        for lang, s in per_lang.items():
            s.save(root / "ml" / lang / "head_scores.json")
        atomic_write_json(root / "ml" / "sharing.json", stamp("sharing", sharing_analysis(per_lang, top_k=5)))
    if "rh_rth" in parts:
        from headatlas.multilingual.sharing import compare_head_sets

        rth = HeadScores(synthetic_scores(1).scores.flip(0))
        atomic_write_json(root / "ml" / "rh_vs_rth.json", stamp("rh-vs-rth", compare_head_sets(rh, rth, top_k=5)))
    if "niah" in parts:
        from headatlas.evaluate.niah_eval import aggregate, write_niah_outputs

        rng = random.Random(0)
        records = []
        for cond, drop in zip(CONDITIONS, (0.0, 0.7, 0.1), strict=True):
            for length in LENGTHS:
                for depth in DEPTHS:
                    for rep in range(2):
                        hit = int(rng.random() > drop)
                        records.append({"condition": cond.name, "prompt_id": f"{length}-{depth}-{rep}",
                                        "length": length, "depth": depth, "exact_match": hit,
                                        "rouge1": max(hit, rng.random() * 0.5)})
        cells, summary = aggregate(records, CONDITIONS)
        write_niah_outputs(root / "niah", cells, summary, CONDITIONS,
                           run_metadata(model="tiny-llama", n_prompts=len(records) // len(CONDITIONS)))
    if "compare" in parts:
        from headatlas.evaluate.compare import CompareConfig, summarize, write_outputs

        tasks = ["mgsm", "xquad"]
        rng = random.Random(1)
        cells = {}
        for cond, p in zip(CONDITIONS, (0.7, 0.3, 0.6), strict=True):
            for task in tasks:
                items = {f"q{i}": float(rng.random() < p) for i in range(40)}
                cells[(cond.name, task)] = {"items": items, "metric": "exact_match", "filter": "none"}
        config = CompareConfig(model="tiny-llama", tasks=tasks, out=str(root / "compare"), random_seeds=1,
                               n_bootstrap=200, top_k=2)
        rows, seed_rows = summarize(cells, CONDITIONS, tasks, config.n_bootstrap, config.confidence, config.seed)
        (root / "compare").mkdir(parents=True, exist_ok=True)
        write_outputs(root / "compare", rows, seed_rows, CONDITIONS, config, run_metadata(model="tiny-llama", top_k=2))
    if "retmask" in parts:
        from headatlas.retmask.evaluate import RetMaskEvalConfig, evaluate_models
        from headatlas.retmask.pairs import PairStats

        accuracy = {"base-model": {"multikey": 0.42, "mono": 0.71, "parametric": 0.90},
                    "tuned-model": {"multikey": 0.55, "mono": 0.78, "parametric": 0.89}}
        tasks = SimpleNamespace(  # a stand-in for the organism's task module: the "examples" name their task
            make_eval_set=lambda task, n, seed, lengths=None, langs=None: [task] * n,
            exact_match_accuracy=lambda model, tokenizer, examples, batch_size: accuracy[model][examples[0]],
        )
        config = RetMaskEvalConfig(suites=("multikey_long", "mono_long", "parametric"), n_per_task=50)
        evaluate_models({"base": ("base-model", None), "retmask": ("tuned-model", None)}, config, scores=rh,
                        out_dir=root / "retmask", tasks=tasks)
        PairStats(n_prompts=20, n_pairs=16, n_generated=20, dropped={"identical": 3, "empty_rejected": 1},
                  mean_chosen_tokens=40.5, mean_rejected_tokens=22.0, heads=["5.3", "4.1"],
                  settings={"temperature": 0.6, "top_p": 1.0}).save(root / "retmask" / "pairs.stats.json")
        atomic_write_json(root / "retmask" / "retmask_run.json", stamp("retmask-train", run_metadata(
            base_model="tiny-llama", n_pairs=16, adapter=False, metrics={"train_runtime": 42.0, "train_loss": 0.61},
            log_history=[{"step": s, "loss": 0.69 - 0.02 * s} for s in range(1, 11)])))
    return root


def subset_run(full: Path, dest: Path, parts: tuple[str, ...]) -> Path:
    """Copy the files of ``parts`` from a :func:`make_run` directory (cheaper than writing them again)."""
    for part in parts:
        for rel in PART_PATHS[part]:
            src, dst = full / rel, dest / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copy2(src, dst)
    return dest


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory holding every artifact the report reads (shared: do not modify it)."""
    return make_run(tmp_path_factory.mktemp("full") / "run")


@pytest.fixture(scope="module")
def full_page(full_run: Path) -> tuple[Path, Report, str]:
    """The report of :func:`full_run`: its path, the collected :class:`Report` and the HTML."""
    path, report = build_report([full_run])
    return path, report, path.read_text(encoding="utf-8")
