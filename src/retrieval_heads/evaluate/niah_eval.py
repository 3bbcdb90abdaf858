"""Needle-in-a-haystack accuracy under head masking: a length x depth grid per condition.

For each condition (unmasked, each head set's top-K, random controls: see
:func:`retrieval_heads.evaluate.compare.build_conditions`; nothing here needs lm-eval) the model answers
every prompt of the grid greedily, with the heads masked at every position.
An answer is the first line of the generation (it stops at EOS or at a newline
once text has started, ``max_new_tokens`` at most). Per prompt:

- ``exact_match``: 1 if the expected answer appears verbatim in the answer
  (both NFKC-normalised, case-folded, whitespace collapsed), else 0;
- ``rouge1``: ROUGE-1 recall of the expected answer
  (:func:`retrieval_heads.niah.prompts.rouge1_recall`).

Files in ``out``: ``run.json`` (the settings a rerun must share),
``journal.jsonl`` (one line per answered prompt; a rerun skips what it holds), ``cells.json`` (mean scores per condition x length x
depth, the conditions' head lists and the run metadata), ``summary.md``, and
``heatmaps/{condition}.png`` plus ``heatmaps/{condition}-vs-unmasked.png``
(the difference map).

>>> cfg = NiahEvalConfig(model="organism", out="runs/niah-masked", heads={"rh": "rh/head_scores.json"},
...                      top_k=6, lengths="128,256", depths="3")   # doctest: +SKIP
>>> result = run_niah_eval(cfg)                                    # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..artifacts import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    check_or_record,
    read_jsonl,
    run_metadata,
)
from ..generation import StopTokens, greedy_answers
from ..heads import heads_to_strings
from ..masking import MASK_MODES, load_means, masked_heads
from ..model_spec import ModelSpec, weights_fingerprint
from ..progress import progress_bar
from .compare import Condition, build_conditions, check_head_sets

JOURNAL_FILE = "journal.jsonl"
CELLS_FILE = "cells.json"
RUN_FILE = "run.json"
METRICS = ("exact_match", "rouge1")


@dataclass
class NiahEvalConfig:
    """Settings of a masked NIAH run (shared by :func:`run_niah_eval` and ``retrieval-heads niah-eval``).

    Heads: ``heads`` (name -> head-score file), ``top_k`` (None: 5 % of the model's heads), ``mode`` (``means`` for
    ``mean``), ``random_seeds`` and ``layer_matched`` as in the comparison.
    Prompts: ``haystack`` (a built-in language, folder, file, ``dataset:NAME``, or
    ``organism``; ``None``: the organism's own task prompts for the built-in
    model, else the built-in haystack of ``needle_lang``; ``per_cell`` organism
    prompts per length x depth cell),
    ``needles`` (``None``: the built-in needles of ``needle_lang``; or a JSONL
    file), ``target_lang`` (cross-lingual: the needle stays in ``needle_lang``,
    the question and expected answer are in ``target_lang``), ``lengths``
    (``"start:stop:count"`` or ``"512,1024"``), ``depths`` (a count or a list),
    ``chat_template``. Generation: ``max_new_tokens``. ``overwrite`` discards the
    answers of an earlier run in ``out`` made with other settings (else it raises).
    """

    model: str
    out: str
    heads: dict[str, str] = field(default_factory=dict)
    top_k: int | None = None
    mode: str = "zero"
    means: str | None = None
    random_seeds: int = 0
    layer_matched: bool = False
    haystack: str | None = None
    needles: str | None = None
    needle_lang: str = field(default="en", metadata={"help": "Language of the needles (and of the haystack by default)."})
    target_lang: str | None = field(default=None, metadata={"help": "Cross-lingual: ask and expect the answer in this language."})
    lengths: str = "256,512,1024"
    depths: str = "5"
    chat_template: bool = False
    per_cell: int = 2
    max_new_tokens: int = field(default=50, metadata={"help": "Most tokens generated per answer."})
    device: str | None = None
    dtype: str = "auto"
    overwrite: bool = field(default=False, metadata={"help": "Discard answers of an earlier run in --out made with other settings."})

    def __post_init__(self) -> None:
        from ..niah.prompts import parse_depths, parse_lengths

        if self.mode not in MASK_MODES:
            raise ValueError(f"unknown mask mode {self.mode!r}; choose one of {MASK_MODES}")
        if self.mode == "mean" and not self.means:
            raise ValueError("mode 'mean' needs means (a per-head mean-output file)")
        if (self.top_k is not None and self.top_k < 1) or self.random_seeds < 0 or self.max_new_tokens < 1:
            raise ValueError("top_k and max_new_tokens must be >= 1, random_seeds >= 0")
        check_head_sets(self.heads)
        parse_lengths(self.lengths)  # fail early on a bad grid
        parse_depths(self.depths)


@dataclass
class NiahResult:
    """Per-condition cells and summary, and the files written."""

    cells: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    files: dict[str, Path]
    computed: int  # prompts answered in this call (the rest came from the journal)


def _normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def answer_contains(answer: str, expected: str) -> int:
    """1 when ``expected`` appears verbatim in ``answer`` after normalisation.

    >>> answer_contains("Eat a sandwich  and sit in Dolores Park.", "eat a sandwich and sit in dolores park")
    1
    """
    return int(bool(_normalize(expected)) and _normalize(expected) in _normalize(answer))


def greedy_answer(model: Any, tokenizer: Any, input_ids: Sequence[int], max_new_tokens: int = 50,
                  stops: StopTokens | None = None) -> str:
    """The model's greedy answer to one prompt: the first line of text it generates (see :mod:`~retrieval_heads.generation`)."""
    return greedy_answers(model, tokenizer, [input_ids], max_new_tokens, stops=stops)[0]


def _heads_key(condition: Condition) -> str:
    return hashlib.sha256(",".join(heads_to_strings(condition.heads)).encode()).hexdigest()[:12]


def evaluate_niah(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    conditions: Sequence[Condition],
    out: str | Path,
    mode: str = "zero",
    means: torch.Tensor | None = None,
    max_new_tokens: int = 50,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    settings: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> NiahResult:
    """Answer every prompt under every condition (resuming from ``out/journal.jsonl``) and write the results.

    ``prompts`` are :class:`retrieval_heads.niah.prompts.NiahPrompt` s (any
    object with ``input_ids``, ``depth``, ``expected_answer`` and a ``meta``
    holding ``prompt_id`` and ``requested_context_length`` will do). ``settings``
    (the model, the prompt source, ...) are stored in ``out/run.json``; a rerun
    with other settings (or another ``mode``/``max_new_tokens``) raises
    :class:`~retrieval_heads.artifacts.ResumeMismatchError` unless
    ``overwrite``, which starts the journal afresh. Answers are keyed by
    condition, prompt id and head list, so new conditions or grid points are added.

    >>> evaluate_niah(model, tok, build_grid(tok, hay, needles, [256], [0.0, 1.0]),
    ...               [Condition("unmasked")], "runs/n")  # doctest: +SKIP
    """
    from ..niah.prompts import rouge1_recall

    out = Path(out)
    journal = out / JOURNAL_FILE
    spec = ModelSpec.from_model(model)
    settings = {"mode": mode, "max_new_tokens": max_new_tokens, "weights": weights_fingerprint(model), **(settings or {})}
    if check_or_record(out / RUN_FILE, "settings", settings, what="NIAH answers",
                       hint="Use another output folder, or overwrite.",
                       record={"format": "retrieval-heads/niah-eval-run"}, overwrite=overwrite):
        journal.unlink(missing_ok=True)
    done = {(r["condition"], r["prompt_id"], r["heads_key"]): r for r in read_jsonl(journal)}
    todo = [(c, p) for c in conditions for p in prompts if (c.name, p.meta["prompt_id"], _heads_key(c)) not in done]
    stops = StopTokens.from_tokenizer(model, tokenizer) if todo else None  # resolved once per run
    bar = progress_bar(progress)
    with bar:
        job = bar.add_task("niah", total=len(todo)) if progress else None
        for cond, prompt in todo:
            with masked_heads(model, cond.heads, mode=mode, means=means, spec=spec):  # type: ignore[arg-type]
                answer = greedy_answer(model, tokenizer, prompt.input_ids, max_new_tokens, stops)
            expected = prompt.expected_answer
            record = {
                "condition": cond.name,
                "prompt_id": prompt.meta["prompt_id"],
                "heads_key": _heads_key(cond),
                "length": int(prompt.meta.get("requested_context_length", len(prompt.input_ids))),
                "depth": float(prompt.depth),
                "expected": expected,
                "answer": answer,
                "exact_match": answer_contains(answer, expected),
                "rouge1": rouge1_recall(answer, expected, prompt.meta.get("expected_lang")),
            }
            append_jsonl(journal, record)
            done[(cond.name, record["prompt_id"], record["heads_key"])] = record
            if progress:
                bar.update(job, advance=1, description=f"{cond.name}")
    wanted = {(c.name, p.meta["prompt_id"], _heads_key(c)) for c in conditions for p in prompts}
    records = [r for k, r in done.items() if k in wanted]
    cells, summary = aggregate(records, conditions)
    files = write_niah_outputs(out, cells, summary, conditions, meta or {})
    return NiahResult(cells=cells, summary=summary, files=files, computed=len(todo))


def aggregate(
    records: Sequence[dict[str, Any]], conditions: Sequence[Condition]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Mean exact match and ROUGE-1 per (condition, length, depth), and per condition overall."""
    groups: dict[tuple[str, int, float], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["condition"], r["length"], r["depth"])].append(r)
    order = {c.name: i for i, c in enumerate(conditions)}
    cells = [
        {"condition": c, "length": length, "depth": depth, "n": len(rs),
         **{m: sum(r[m] for r in rs) / len(rs) for m in METRICS}}
        for (c, length, depth), rs in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1], kv[0][2]))
    ]  # fmt: skip
    summary = []
    for cond in conditions:
        rs = [r for r in records if r["condition"] == cond.name]
        if rs:
            summary.append(
                {"condition": cond.name, "kind": cond.kind, "k": len(cond.heads), "n": len(rs),
                 **{m: sum(r[m] for r in rs) / len(rs) for m in METRICS}}
            )  # fmt: skip
    return cells, summary


def _grid(cells: Sequence[dict[str, Any]], condition: str, metric: str):
    import numpy as np

    mine = [c for c in cells if c["condition"] == condition]
    lengths = sorted({c["length"] for c in mine})
    depths = sorted({c["depth"] for c in mine})
    grid = np.full((len(depths), len(lengths)), np.nan)  # (depth, length)
    for c in mine:
        grid[depths.index(c["depth"]), lengths.index(c["length"])] = c[metric]
    return grid, lengths, depths


def plot_heatmap(cells: Sequence[dict[str, Any]], condition: str, path: Path, reference: str | None = None) -> Path:
    """Exact match and ROUGE-1 of ``condition`` as depth x length heatmaps; with ``reference``, the difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in zip(axes, METRICS, strict=True):
        grid, lengths, depths = _grid(cells, condition, metric)
        if reference is not None:
            ref, _, _ = _grid(cells, reference, metric)
            grid = grid - ref
            im = ax.imshow(grid, cmap="RdBu", vmin=-1, vmax=1, aspect="auto", origin="upper")
            ax.set_title(f"{metric}: {condition} - {reference}", fontsize=9)
        else:
            im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto", origin="upper")
            ax.set_title(f"{metric}: {condition}", fontsize=9)
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6, color="black")
        ax.set_xticks(range(len(lengths)), [str(v) for v in lengths], fontsize=7, rotation=45)
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=7)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("needle depth")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_niah_outputs(
    out: Path,
    cells: list[dict[str, Any]],
    summary: list[dict[str, Any]],
    conditions: Sequence[Condition],
    meta: dict[str, Any],
) -> dict[str, Path]:
    """``cells.json``, ``summary.md`` and the heatmaps."""
    files = {
        "cells": atomic_write_json(
            out / CELLS_FILE,
            {"format": "retrieval-heads/niah-eval", "conditions": [c.to_json() for c in conditions],
             "cells": cells, "summary": summary, "meta": meta},
        )  # fmt: skip
    }
    lines = ["| condition | heads | prompts | exact match | ROUGE-1 recall |", "|---|---|---|---|---|"]
    lines += [f"| {s['condition']} | {s['k']} | {s['n']} | {s['exact_match']:.3f} | {s['rouge1']:.3f} |" for s in summary]
    files["summary"] = atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    present = {c["condition"] for c in cells}
    for cond in conditions:
        if cond.name not in present:
            continue
        files[f"heatmap:{cond.name}"] = plot_heatmap(cells, cond.name, out / "heatmaps" / f"{cond.name}.png")
        if cond.name != "unmasked" and "unmasked" in present:
            files[f"diff:{cond.name}"] = plot_heatmap(
                cells, cond.name, out / "heatmaps" / f"{cond.name}-vs-unmasked.png", reference="unmasked"
            )
    return files


def build_prompts(config: NiahEvalConfig, tokenizer: Any, max_model_length: int | None) -> list[Any]:
    """The grid of :class:`~retrieval_heads.niah.prompts.NiahPrompt` s described by ``config``
    (the organism's own task prompts for the built-in model; see :mod:`retrieval_heads.prompt_sources`)."""
    from ..niah.prompts import parse_depths, parse_lengths
    from ..prompt_sources import PromptRequest
    from ..prompt_sources import build_prompts as build_source_prompts

    if config.target_lang and config.needles:
        raise ValueError("target_lang uses the built-in parallel needles; do not also give needles")
    request = PromptRequest(
        lengths=parse_lengths(config.lengths),
        depths=parse_depths(config.depths),
        kind="transition" if config.target_lang else "retrieval",
        lang=config.needle_lang,
        source_lang=config.needle_lang if config.target_lang else None,
        target_lang=config.target_lang,
        needles=config.needles,
        haystack=config.haystack,
        chat_template=config.chat_template,
        per_cell=config.per_cell,
    )
    return build_source_prompts(config.model, tokenizer, max_model_length, request)


def run_niah_eval(config: NiahEvalConfig, model: Any = None, tokenizer: Any = None, progress: bool = True) -> NiahResult:
    """Build the grid, run every condition (resuming), and write cells, summary and heatmaps to ``config.out``.

    >>> run_niah_eval(NiahEvalConfig(model="organism", out="runs/n", heads={"rh": "rh.json"}, top_k=6))  # doctest: +SKIP
    """
    from ..model_spec import load_model

    if model is None:
        model, tokenizer, _ = load_model(config.model, dtype=config.dtype, device=config.device)
    elif tokenizer is None:
        raise ValueError("pass the tokenizer with the model")
    spec = ModelSpec.from_model(model)
    conditions = build_conditions(
        config.heads, config.top_k, config.random_seeds, spec.n_layers, spec.n_heads, config.layer_matched
    )
    prompts = build_prompts(config, tokenizer, spec.max_positions)
    meta = run_metadata(
        model=config.model, config=asdict(config), conditions=[c.to_json() for c in conditions],
        n_prompts=len(prompts),
    )  # fmt: skip
    means = load_means(config.means) if config.means else None
    settings = {k: getattr(config, k) for k in ("model", "means", "haystack", "needles", "needle_lang", "target_lang",
                                                "chat_template")}  # fmt: skip
    return evaluate_niah(
        model, tokenizer, prompts, conditions, config.out, config.mode, means, config.max_new_tokens, meta, progress,
        settings=settings, overwrite=config.overwrite,
    )  # fmt: skip
