"""The grid sweep: batches, journal, resume, shards, and the files a run leaves in ``out_dir``.

Files (see ``docs/detection.md``):

- ``run.json`` — the run's settings (:func:`headatlas.runs.open_run`) and
  the ordered prompt ids; a rerun with other settings raises
  :class:`~headatlas.runs.ResumeMismatchError` naming each.
- ``samples.jsonl`` — the journal, one line per finished prompt (a shard
  writes ``samples.rank{r}.jsonl``); a rerun skips the prompt ids found there.
- ``head_scores.json`` — computed from the journal at the end, written
  atomically; never written when no prompt passed the filter
  (:class:`NoRetrievalError`).
- ``heatmap.png`` — the scores, layer x head.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from transformers import PreTrainedModel

from ..generation import StopTokens, auto_batch_size, pad_id_of
from ..heads import HeadScores
from ..model_spec import ModelSpec, model_identity
from ..prefix import MIN_SHARED_PREFIX, PrefixKeeper, can_share_prefix, plan_batches
from ..runs import (
    ResumeMismatchError,  # noqa: F401 - the one refusal, re-exported by headatlas.detect
    atomic_write_jsonl,
    flags,
    open_run,
    read_jsonl,
    run_metadata,
    track,
)
from .config import DetectConfig
from .inputs import PromptError, PromptItem
from .scorers import BatchContext, Scorer, scorer_for

RUN_FILE = "run.json"
SAMPLES_FILE = "samples.jsonl"
SCORES_FILE = "head_scores.json"
HEATMAP_FILE = "heatmap.png"
_SHARD_RE = re.compile(r"^samples\.rank(\d+)\.jsonl$")


class DetectionError(RuntimeError):
    """Base class of detection run errors."""


class NoRetrievalError(DetectionError):
    """No prompt passed the retrieval filter: the model never retrieved the needle, so there are no scores."""


class IncompleteRunError(DetectionError):
    """Merging was asked for before every prompt of the run had a sample."""


# ---- settings and run.json ------------------------------------------------------------------------
def _prompts_digest(items: Sequence[PromptItem]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it.prompt_id, it.span, list(it.input_ids)]).encode())
    return h.hexdigest()[:16]


def _open_run(out: Path, model: PreTrainedModel, spec: ModelSpec, config: DetectConfig, items: Sequence[PromptItem],
              scorer: Scorer):
    """Open ``out`` for this run (refusing another one, naming what differs) and record its settings."""
    identity = model_identity(model)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    lengths, depths = sorted({it.length for it in items}), sorted({it.depth for it in items})
    needle_ids = sorted({it.needle_id for it in items})
    settings = {
        **flags(scorer.fingerprint()), "--model": identity["model"], "revision": identity["revision"],
        "--dtype": dtype, "--lengths": lengths, "--depths": depths, "needles": needle_ids, "prompts": len(items),
    }
    return open_run(
        out, "detect", settings,
        fingerprints={"the model's weights": identity["weights"],
                      "the prompt texts (haystack, template or tokenizer)": _prompts_digest(items)},
        record={"config": asdict(config), "model": identity, "spec": spec.describe(), "dtype": dtype,
                "lengths": lengths, "depths": depths, "needle_ids": needle_ids,
                "prompt_ids": [it.prompt_id for it in items]},
        discard=(), journal=SAMPLES_FILE, model=identity["model"], seed=config.seed,
        hint="Use another --out folder, or delete its run.json and samples*.jsonl to start over.",
    )


# ---- shards -----------------------------------------------------------------------------------------
def resolve_shard(shard: tuple[int, int] | None = None) -> tuple[int, int]:
    """``(rank, world)``: the explicit ``shard``, else ``RANK``/``WORLD_SIZE`` (torchrun, accelerate), else ``(0, 1)``.

    >>> resolve_shard((1, 4))
    (1, 4)
    """
    if shard is None:
        shard = (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
    rank, world = int(shard[0]), int(shard[1])
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
    return rank, world


def _sample_files(out_dir: Path) -> list[Path]:
    shards = sorted((p for p in out_dir.glob("samples.rank*.jsonl") if _SHARD_RE.match(p.name)), key=lambda p: int(_SHARD_RE.match(p.name)[1]))
    return [out_dir / SAMPLES_FILE, *shards]


def _read_samples(out_dir: Path) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    for path in _sample_files(out_dir):
        for rec in read_jsonl(path):
            records.setdefault(str(rec["prompt_id"]), rec)
    return records


def _process_group(world: int) -> tuple[Any, bool]:
    """The initialised ``torch.distributed`` module (initialising gloo under torchrun), and whether we created it."""
    if world == 1 or not torch.distributed.is_available():
        return None, False
    dist = torch.distributed
    if dist.is_initialized():
        return dist, False
    if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
        dist.init_process_group("gloo")
        return dist, True
    return None, False


# ---- scoring one batch --------------------------------------------------------------------------------
def _score_batch(scorer: Scorer, ctx: BatchContext, batch: Sequence[PromptItem], config: DetectConfig) -> list[dict[str, Any]]:
    """The journal records of one batch: what the scorer recorded of each unit, and what the unit was."""
    transition = scorer.kind == "transition"
    return [
        {"prompt_id": it.prompt_id, "length": it.length, "n_tokens": len(it.input_ids), "depth": it.depth,
         "needle_id": it.needle_id, "kind": scorer.kind, "lang": it.lang, "mode": config.mode, "answer": it.answer,
         "span_len": it.span_len,
         **({"target_answer": it.target_answer, "target_lang": it.target_lang} if transition else {}), **rec}
        for it, rec in zip(batch, scorer.score_batch(ctx, batch), strict=True)
    ]


def _resolved_batch_size(model: PreTrainedModel, config: DetectConfig, items: Sequence[PromptItem],
                         scorer: Scorer) -> DetectConfig:
    """``config`` with ``batch_size="auto"`` replaced by the number the device's free memory allows."""
    if not scorer.batchable:
        return replace(config, batch_size=1)
    if config.batch_size != "auto":
        return config
    width = max(len(it.input_ids) + it.span_len for it in items)
    new = config.max_new_tokens if config.mode == "greedy" else 0
    return replace(config, batch_size=auto_batch_size(model, width, new))


# ---- the run ------------------------------------------------------------------------------------------
def detect(
    model: PreTrainedModel,
    tokenizer: Any,
    prompts: Iterable[Any],
    config: DetectConfig,
    out_dir: str | Path,
    *,
    shard: tuple[int, int] | None = None,
    on_sample: Callable[[dict[str, Any]], None] | None = None,
    console: Console | None = None,
    results: Console | None = None,
    scorer: Scorer | None = None,
) -> HeadScores | None:
    """Score every head of ``model`` on ``prompts`` and write the run's files to ``out_dir``.

    ``scorer`` is the rule (a :class:`~headatlas.detect.scorers.Scorer`); by default the built-in one
    ``config.scorer`` names (copy events).

    Resumable: rerunning with the same settings skips the prompts already in
    the journal. Sharded under ``torchrun``/``accelerate launch`` (``RANK``/
    ``WORLD_SIZE``) or with an explicit ``shard=(rank, world)``: each rank
    takes ``prompts[rank::world]``. With a process group (initialised here
    with gloo under torchrun when none exists) rank 0 merges after a barrier
    and every rank returns the scores; a shard without a process group returns
    ``None`` and :func:`merge_shards` (or a rerun without ``shard``) merges.
    ``on_sample`` is called with each finished sample record. Progress goes to ``console``, the
    top-heads table to ``results`` (default: ``console``).

    Raises :class:`NoRetrievalError` when no prompt passed the filter.

    >>> from headatlas import load_model
    >>> from headatlas.niah import build_grid, load_haystack, load_needles  # doctest: +SKIP
    >>> model, tok, spec = load_model("organism")  # doctest: +SKIP
    >>> prompts = build_grid(tok, load_haystack("en", "en"), load_needles(None, "en"), [1000, 2000], [0.0, 0.5, 1.0])  # doctest: +SKIP
    >>> scores = detect(model, tok, prompts, DetectConfig(mode="teacher"), "runs/organism")  # doctest: +SKIP
    >>> scores.top_k(5)  # doctest: +SKIP
    """
    started = time.time()
    console = console or Console(stderr=True)
    spec = ModelSpec.from_model(model)
    scorer = scorer or scorer_for(config)
    items = scorer.items(list(prompts), tokenizer, spec)
    if not items:
        raise PromptError("no prompts to score")
    seen: set[str] = set()
    for it in items:
        if it.prompt_id in seen:
            raise PromptError(f"prompt_id {it.prompt_id!r} occurs twice: ids must be unique (they key the journal)")
        seen.add(it.prompt_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = resolve_shard(shard)
    config = _resolved_batch_size(model, config, items, scorer)
    run = _open_run(out, model, spec, config, items, scorer)

    journal = SAMPLES_FILE if world == 1 else f"samples.rank{rank}.jsonl"
    previous = _read_samples(out)
    done = set(previous)
    scorer.resume([previous[it.prompt_id] for it in items if it.prompt_id in previous])
    todo = [it for it in items[rank::world] if it.prompt_id not in done]
    torch.manual_seed(config.seed)
    stops = StopTokens.from_tokenizer(model, tokenizer, config.stop_on_newline) if scorer.greedy and todo else None
    pad_id = pad_id_of(tokenizer)

    label = f"detect {scorer.name}" + (f" {config.mode}" if scorer.name in ("copy", "transition") else "")
    label += f" (rank {rank}/{world})" if world > 1 else ""
    mine = len(items[rank::world])
    with track(label, mine, mine - len(todo), enabled=config.progress and rank == 0, console=console) as bar:
        share = MIN_SHARED_PREFIX if scorer.shares_prefix and config.share_prefix and can_share_prefix(model) else None
        prefixes = PrefixKeeper(model)
        for members, n_prefix in plan_batches([it.input_ids for it in todo], int(config.batch_size), share):
            batch = [todo[i] for i in members]
            t0 = time.perf_counter()
            # a prefix ends outside every answer span (the transition rule indexes span tokens by offset)
            n_prefix = min([n_prefix] + [it.span[0] for it in batch if it.span[0] < n_prefix < it.span[1]])
            ctx = BatchContext(model, tokenizer, spec, stops, pad_id, prefixes.get(batch[0].input_ids[:n_prefix]))
            records = _score_batch(scorer, ctx, batch, config)
            per_prompt = (time.perf_counter() - t0) / len(batch)
            for rec in records:
                rec.update(seconds=round(per_prompt, 4), rank=rank)
                run.append(rec, journal)
                bar.advance()
                if on_sample is not None:
                    on_sample(rec)

    merge = partial(merge_shards, out, console=console, show=config.table_rows, heatmap=config.heatmap,
                    results=results)
    if world == 1:
        return merge(wall_s=time.time() - started)
    dist, created = _process_group(world)
    if dist is None:
        console.print(f"shard {rank}/{world} done: run merge_shards({str(out)!r}) once every shard has finished")
        return None
    try:
        dist.barrier()
        error: BaseException | None = None
        if rank == 0:
            try:
                merge(wall_s=time.time() - started)
            except BaseException as err:  # every rank must reach the second barrier
                error = err
        dist.barrier()
        if error is not None:
            raise error
        if not (out / SCORES_FILE).exists():
            raise NoRetrievalError(f"rank 0 wrote no {SCORES_FILE}: no prompt passed the retrieval filter (see rank 0)")
        return HeadScores.load(out / SCORES_FILE)
    finally:
        if created:
            dist.destroy_process_group()


# ---- merging and the final files -------------------------------------------------------------------------
def merge_shards(
    out_dir: str | Path,
    console: Console | None = None,
    wall_s: float | None = None,
    show: int = 20,
    heatmap: bool = True,
    results: Console | None = None,
) -> HeadScores:
    """Merge the journals in ``out_dir`` into ``samples.jsonl`` and write ``head_scores.json`` and ``heatmap.png``.

    Needs only the files (no model): every prompt of ``run.json`` must have a
    sample. Prints the top-``show`` table. Raises :class:`NoRetrievalError`
    (writing no scores) when no prompt was counted.

    >>> scores = merge_shards("runs/organism")  # doctest: +SKIP
    """
    out = Path(out_dir)
    console = console or Console(stderr=True)
    run_path = out / RUN_FILE
    if not run_path.exists():
        raise FileNotFoundError(f"{run_path} not found: {out} is not a detection run directory")
    run = json.loads(run_path.read_text(encoding="utf-8"))
    records = _read_samples(out)
    missing = [pid for pid in run["prompt_ids"] if pid not in records]
    if missing:
        raise IncompleteRunError(
            f"{out}: {len(missing)} of {len(run['prompt_ids'])} prompts have no sample yet (e.g. {missing[:3]}); "
            "finish every shard (rerun the same command to resume) before merging"
        )
    ordered = [records[pid] for pid in run["prompt_ids"]]
    atomic_write_jsonl(out / SAMPLES_FILE, ordered, default=str)
    for path in _sample_files(out)[1:]:
        path.unlink()

    cfg = run["config"]
    scorer = scorer_for(DetectConfig(**cfg))
    scores, with_events = scorer.reduce(ordered, run["spec"]["n_layers"], run["spec"]["n_heads"])
    for layer, kind in enumerate(run["spec"].get("layer_kinds", [])):
        if kind == "linear":  # no softmax heads (linear attention, SSM, convolution): no score, greyed in heatmaps
            scores[layer] = float("nan")
    counted = [r for r in ordered if r["counted"]]
    if not counted:
        _fail_loudly(console, ordered, run)
    kind = scorer.kind
    greedy = scorer.greedy
    meta = run_metadata(
        method=scorer.method, kind=kind, scorer=scorer.name, scorer_settings=scorer.fingerprint(),
        alignment=cfg.get("alignment") if kind == "transition" else None,
        languages=sorted({(r["lang"], r.get("target_lang") or r["lang"]) for r in ordered}),
        model=run["model"]["model"], model_identity=run["model"], spec=run["spec"], dtype=run["dtype"],
        mode=cfg["mode"], dedup=cfg["dedup"], rouge_threshold=cfg["rouge_threshold"] if greedy else None,
        accuracy_threshold=None if greedy else _threshold(cfg),
        max_new_tokens=cfg["max_new_tokens"] if greedy else None,
        stop_on_newline=cfg["stop_on_newline"] if greedy else None,
        seed=cfg["seed"], lengths=run["lengths"], depths=run["depths"], needle_ids=run["needle_ids"],
        n_prompts=len(ordered), counted_prompts=len(counted), failed_prompts=len(ordered) - len(counted),
        compute_s=round(sum(float(r.get("seconds", 0.0)) for r in ordered), 3),
        wall_s=round(wall_s, 3) if wall_s is not None else None,
    )
    result = HeadScores(scores, meta, null_level=scorer.null_level(ordered))  # the scorer's own null level
    result.save(out / SCORES_FILE)
    if heatmap:
        from .plots import plot_heatmap

        plot_heatmap(result, out / HEATMAP_FILE, title=f"{run['model']['model']} — {scorer.name} score"
                     + (f" ({cfg['mode']})" if scorer.name in ("copy", "transition") else ""))
    if show:
        (results or console).print(top_heads_table(result, with_events, len(counted), show))
    return result


def top_heads_table(scores: HeadScores, with_events: torch.Tensor, n_counted: int, k: int = 20) -> Table:
    """A rich table of the ``k`` best scored heads (above the null level; fewer when fewer score): score and the
    share of counted prompts where the head copied."""
    kind = {"transition": "retrieval-transition", "retrieval": "retrieval"}.get(scores.meta.get("kind", "retrieval"))
    kind = kind or str(scores.meta.get("scorer"))
    rows = scores.scored()[:k]
    table = Table(title=f"Top {len(rows)} {kind} heads ({scores.n_scored} of {scores.n_total} heads score above "
                        f"{scores.null_level:g}; {n_counted} counted prompts)")
    for column in ("rank", "head (L.H)", "score", "prompts with events"):
        table.add_column(column, justify="left" if column == "head (L.H)" else "right")
    for i, (head, value) in enumerate(rows, start=1):
        n = int(with_events[head.layer, head.head])
        table.add_row(str(i), str(head), f"{value:.4f}", f"{n}/{n_counted}")
    return table


def _threshold(cfg: dict[str, Any]) -> float:
    """A teacher run's accuracy threshold (runs recorded before it had its own name used rouge_threshold)."""
    return cfg.get("accuracy_threshold", cfg["rouge_threshold"])


def _fail_loudly(console: Console, records: Sequence[dict[str, Any]], run: dict[str, Any]) -> None:
    cfg = run["config"]
    rule = "ROUGE-1 recall" if cfg["mode"] == "greedy" else "answer token accuracy"
    threshold = cfg["rouge_threshold"] if cfg["mode"] == "greedy" else _threshold(cfg)
    best = sorted(records, key=lambda r: -float(r.get("token_accuracy", r["rouge"])))[:5]
    lines = [
        f"NO prompt passed the retrieval filter ({rule} > {threshold}): 0 of {len(records)} counted.",
        "The model never retrieved the needle, so no head can be scored; head_scores.json was NOT written.",
        "Check the prompts (template, --chat-template, context length vs the model's window) and the model.",
        "Best responses:",
    ]
    for r in best:
        lines.append(f"  [{r['prompt_id']}] answer={r['answer']!r} response={r['response'][:120]!r} rouge={r['rouge']}")
    message = "\n".join(lines)
    console.print(Panel(Text(message), title="headatlas detect: NO RETRIEVAL", style="bold red"))
    raise NoRetrievalError(message)
