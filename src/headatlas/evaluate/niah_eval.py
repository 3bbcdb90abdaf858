"""Needle-in-a-haystack accuracy under head masking: a length x depth grid per condition.

For each condition (:func:`~headatlas.evaluate.conditions.build_conditions`; nothing here needs
lm-eval) the model answers every prompt of the grid greedily (:func:`headatlas.generation.generate`:
the first line, ``max_new_tokens`` at most) with the heads masked at every position. Prompts built from
one haystack share the tokens before their needle: that prefix runs once per condition
(:mod:`headatlas.prefix`, as detection does), with the same answers. Per prompt:

- ``exact_match``: 1 if the expected answer appears verbatim in the answer (both NFKC-normalised,
  case-folded, whitespace collapsed), else 0;
- ``rouge1``: ROUGE-1 recall of the expected answer (:func:`headatlas.niah.prompts.rouge1_recall`).

Files in ``out``: ``run.json`` (the settings a rerun must share), ``journal.jsonl`` (one line per
answered prompt; a rerun skips what it holds), ``cells.json`` (mean scores per condition x length x
depth, the conditions' head lists and the run metadata), ``summary.md``, and
``heatmaps/{condition}.png`` plus ``heatmaps/{condition}-vs-unmasked.png`` (the difference map).

>>> cfg = NiahEvalConfig(model="organism", out="runs/niah-masked", heads={"rh": "rh/head_scores.json"},
...                      top_k=6, lengths="128,256", depths="3")   # doctest: +SKIP
>>> result = run_niah_eval(cfg)                                    # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import run_identity
from ..detect.plots import new_figure, save_figure
from ..generation import StopTokens, auto_batch_size, generate, pad_id_of
from ..heads import heads_to_strings
from ..masking import masked_heads
from ..model_spec import ModelSpec, weights_fingerprint
from ..prefix import MIN_SHARED_PREFIX, PrefixKeeper, can_share_prefix, plan_batches
from ..runs import atomic_write_json, atomic_write_text, flags, open_run, run_metadata, stamp, track
from .conditions import Condition
from .config import NiahEvalConfig

CELLS_FILE = "cells.json"
METRICS = ("exact_match", "rouge1")


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


def _heads_key(condition: Condition) -> str:
    return hashlib.sha256(",".join(heads_to_strings(condition.heads)).encode()).hexdigest()[:12]


def evaluate_niah(model: Any, tokenizer: Any, prompts: Sequence[Any], conditions: Sequence[Condition], out: str | Path,
                  mode: str = "zero", means: torch.Tensor | None = None, max_new_tokens: int = 50,
                  meta: dict[str, Any] | None = None, progress: bool = True, settings: dict[str, Any] | None = None,
                  overwrite: bool = False, batch_size: int | str = 1, share_prefix: bool = True) -> NiahResult:
    """Answer every prompt under every condition (resuming from ``out/journal.jsonl``) and write the results.

    ``prompts``: :class:`headatlas.niah.prompts.NiahPrompt` s. ``settings`` (by their user-facing
    names) go to ``out/run.json`` (:func:`headatlas.runs.open_run`): a rerun with others, or another
    ``mode``, ``max_new_tokens`` or weights, is refused unless ``overwrite`` (a fresh journal). Answers are
    keyed by condition, prompt id and head list. ``batch_size`` prompts decode together; with
    ``share_prefix`` the tokens a group of prompts starts with run once (:func:`headatlas.prefix.plan_batches`).

    >>> evaluate_niah(model, tok, build_grid(tok, hay, needles, [256], [0.0, 1.0]),
    ...               [Condition("unmasked")], "runs/n")  # doctest: +SKIP
    """
    from ..niah.prompts import rouge1_recall

    spec = ModelSpec.from_model(model)
    settings = {"--mode": mode, "--max-new-tokens": max_new_tokens, **(settings or {})}
    run = open_run(out, "niah-eval", settings, fingerprints={"the model's weights": weights_fingerprint(model)},
                   overwrite=overwrite, model=(meta or {}).get("model"),
                   hint="Use another --out folder, or --overwrite to start its answers afresh.")
    done = {(r["condition"], r["prompt_id"], r["heads_key"]): r for r in run.records()}
    wanted = [(c, p, (c.name, p.meta["prompt_id"], _heads_key(c))) for c in conditions for p in prompts]
    todo = [(c, p) for c, p, key in wanted if key not in done]
    stops = StopTokens.from_tokenizer(model, tokenizer) if todo else None  # resolved once per run
    if batch_size == "auto":
        batch_size = auto_batch_size(model, max((len(p.input_ids) for p in prompts), default=1), max_new_tokens)
    share = MIN_SHARED_PREFIX if share_prefix and can_share_prefix(model) else None
    with track("niah", len(wanted), len(wanted) - len(todo), enabled=progress) as bar:
        for cond in conditions:
            mine = [p for c, p in todo if c is cond]
            if not mine:
                continue
            with masked_heads(model, cond.heads, mode=mode, means=means, spec=spec):  # type: ignore[arg-type]
                prefixes = PrefixKeeper(model)  # computed under this condition's mask
                for members, n_prefix in plan_batches([p.input_ids for p in mine], batch_size, share):
                    batch = [mine[i] for i in members]
                    decoded = generate(model, [p.input_ids for p in batch], max_new_tokens, stops,  # type: ignore[arg-type]
                                       pad_id=pad_id_of(tokenizer), prefix=prefixes.get(batch[0].input_ids[:n_prefix]))  # fmt: skip
                    for b, prompt in enumerate(batch):
                        answer, expected = decoded.text(tokenizer, b), prompt.expected_answer
                        record = {
                            "condition": cond.name, "prompt_id": prompt.meta["prompt_id"], "heads_key": _heads_key(cond),
                            "length": int(prompt.meta.get("requested_context_length", len(prompt.input_ids))),
                            "depth": float(prompt.depth), "expected": expected, "answer": answer,
                            "exact_match": answer_contains(answer, expected),
                            "rouge1": rouge1_recall(answer, expected, prompt.meta.get("expected_lang")),
                        }  # fmt: skip
                        run.append(record)
                        done[(cond.name, record["prompt_id"], record["heads_key"])] = record
                        bar.advance(description=cond.name)
    cells, summary = aggregate(list({key: done[key] for _, _, key in wanted}.values()), conditions)
    files = write_niah_outputs(run.dir, cells, summary, conditions, {**run.meta, **(meta or {})})
    return NiahResult(cells=cells, summary=summary, files=files, computed=len(todo))


def aggregate(records: Sequence[dict[str, Any]], conditions: Sequence[Condition]
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
        if rs := [r for r in records if r["condition"] == cond.name]:
            summary.append({"condition": cond.name, "kind": cond.kind, "k": len(cond.heads), "n": len(rs),
                            **{m: sum(r[m] for r in rs) / len(rs) for m in METRICS}})  # fmt: skip
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
    fig = new_figure(10, 3.6)
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, METRICS, strict=True):
        grid, lengths, depths = _grid(cells, condition, metric)
        if reference is not None:
            grid = grid - _grid(cells, reference, metric)[0]
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
    return save_figure(fig, path, dpi=110)


def write_niah_outputs(out: Path, cells: list[dict[str, Any]], summary: list[dict[str, Any]],
                       conditions: Sequence[Condition], meta: dict[str, Any]) -> dict[str, Path]:
    """``cells.json``, ``summary.md`` and the heatmaps."""
    data = {"conditions": [c.to_json() for c in conditions], "cells": cells, "summary": summary, "meta": meta}
    lines = ["| condition | heads | prompts | exact match | ROUGE-1 recall |", "|---|---|---|---|---|"]
    lines += [f"| {s['condition']} | {s['k']} | {s['n']} | {s['exact_match']:.3f} | {s['rouge1']:.3f} |" for s in summary]
    files = {"cells": atomic_write_json(out / CELLS_FILE, stamp("niah-eval", data)),
             "summary": atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")}  # fmt: skip
    present = {c["condition"] for c in cells}
    for name in (c.name for c in conditions if c.name in present):
        files[f"heatmap:{name}"] = plot_heatmap(cells, name, out / "heatmaps" / f"{name}.png")
        if name != "unmasked" and "unmasked" in present:
            files[f"diff:{name}"] = plot_heatmap(cells, name, out / "heatmaps" / f"{name}-vs-unmasked.png", "unmasked")
    return files


def build_prompts(config: NiahEvalConfig, tokenizer: Any, max_model_length: int | None) -> list[Any]:
    """The grid of :class:`~headatlas.niah.prompts.NiahPrompt` s described by ``config``
    (the organism's own task prompts for the built-in model; see :mod:`headatlas.prompt_sources`)."""
    from ..niah.prompts import parse_depths, parse_lengths
    from ..prompt_sources import PromptRequest
    from ..prompt_sources import build_prompts as build_source_prompts

    if config.target_lang and config.needles:
        raise ValueError("target_lang uses the built-in parallel needles; do not also give needles")
    request = PromptRequest(
        lengths=parse_lengths(config.lengths), depths=parse_depths(config.depths),
        kind="transition" if config.target_lang else "retrieval", lang=config.needle_lang,
        source_lang=config.needle_lang if config.target_lang else None, target_lang=config.target_lang,
        needles=config.needles, haystack=config.haystack, chat_template=config.chat_template, per_cell=config.per_cell, seed=config.seed,
    )  # fmt: skip
    return build_source_prompts(config.model, tokenizer, max_model_length, request)


def run_niah_eval(config: NiahEvalConfig, model: Any = None, tokenizer: Any = None, progress: bool = True) -> NiahResult:
    """Build the grid, run every condition (resuming), and write cells, summary and heatmaps to ``config.out``.

    >>> run_niah_eval(NiahEvalConfig(model="organism", out="runs/n", heads={"rh": "rh.json"}, top_k=6))  # doctest: +SKIP
    """
    model, tokenizer, spec, conditions, means = config.prepare(model, tokenizer)
    prompts = build_prompts(config, tokenizer, spec.max_positions)
    meta = run_metadata(model=config.model, config=asdict(config), conditions=[c.to_json() for c in conditions],
                        n_prompts=len(prompts))  # fmt: skip
    settings = flags(run_identity(config))  # another top-k, grid or head set is another run
    return evaluate_niah(model, tokenizer, prompts, conditions, config.out, config.mode, means, config.max_new_tokens,
                         meta, progress, settings=settings, overwrite=config.overwrite, batch_size=config.batch_size,
                         share_prefix=config.share_prefix)  # fmt: skip
