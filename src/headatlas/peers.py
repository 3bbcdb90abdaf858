"""The peers' published head sets, read as and written from :class:`~headatlas.heads.HeadScores`.

Formats (facts read from the peers' repositories, 2026-12; no code of theirs):

- **Wu et al. / HeadKV** (``head_score/*.json``): ``{"L-H": [per-sample scores]}``; a head's score is the
  mean of its list (:meth:`HeadScores.from_reference`); HeadKV's ``Important_Head/head_score`` files use the
  same layout.
- **QRHead** (``configs/*_qr_head_*.yaml``): ``attn_head_set: "14-22,13-16,..."``, the top heads best first,
  without scores; its detection script writes ``[["L-H", score], ...]`` best first.
- **DuoAttention** (``attn_patterns/<model>/<run>/``): ``full_attention_heads.tsv``, one line per layer, one
  tab-separated column per KV head, each a gate in [0, 1] written as ``%.18e`` (``numpy.savetxt``'s
  default), ``\\n`` after every line; beside it ``config.json`` with ``sink_size`` and ``recent_size``.
  kvpress's ``DuoAttentionPress`` reads the same pattern.

>>> s = read_qrhead_heads("1-0,0-1", n_layers=2, n_heads=2)
>>> s.top_k(2), s.meta["imported_from"]
([Head(layer=1, head=0), Head(layer=0, head=1)], 'qrhead')
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .heads import Head, HeadScoreFileError, HeadScores
from .runs import atomic_write_text

DUO_TSV = "full_attention_heads.tsv"
DUO_CONFIG = "config.json"


# ---- Wu et al. / HeadKV ------------------------------------------------------------------------------
def read_wu_json(path: str | Path, n_layers: int | None = None, n_heads: int | None = None) -> HeadScores:
    """A Wu et al. (or HeadKV) score file ``{"L-H": [per-sample scores]}``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    scores = HeadScores.from_reference(data, n_layers, n_heads, source=str(path))
    scores.meta["imported_from"] = "wu-json"
    return scores


def write_wu_json(scores: HeadScores, path: str | Path) -> Path:
    """Write ``scores`` as Wu et al.'s JSON (each list holds the head's score)."""
    return atomic_write_text(path, json.dumps(scores.to_reference()) + "\n")


# ---- QRHead ---------------------------------------------------------------------------------------------
def _qr_ranked(text: str) -> list[tuple[Head, float | None]]:
    text = text.strip()
    if text.startswith("["):  # the detection script's [["L-H", score], ...]
        return [(Head.parse(str(k)), float(v)) for k, v in json.loads(text)]
    match = re.search(r"attn_head_set:\s*[\"']?([0-9,\-\s]+)[\"']?", text)
    listed = match.group(1) if match else text
    return [(Head.parse(h.strip()), None) for h in listed.split(",") if h.strip()]


def read_qrhead_heads(source: str | Path, n_layers: int, n_heads: int) -> HeadScores:
    """QRHead's heads: a config YAML (``attn_head_set``), its comma list, or the detection script's ranked list.

    A list without scores becomes rank scores: the ``k`` listed heads score ``k, k - 1, ..., 1`` divided by
    ``k`` (best first), every other head 0 (``meta["scores"] = "ranks"``).
    """
    path = Path(str(source))
    text = path.read_text(encoding="utf-8") if len(str(source)) < 4096 and path.is_file() else str(source)
    try:
        ranked = _qr_ranked(text)
    except (ValueError, TypeError) as err:
        raise HeadScoreFileError(f"{source}: not a QRHead head list ({err})") from err
    if not ranked:
        raise HeadScoreFileError(f"{source}: no heads")
    scores = torch.zeros(n_layers, n_heads)
    k = len(ranked)
    for i, (head, value) in enumerate(ranked):
        if not (0 <= head.layer < n_layers and 0 <= head.head < n_heads):
            raise HeadScoreFileError(f"{source}: head {head} outside {n_layers} x {n_heads}")
        scores[head.layer, head.head] = value if value is not None else (k - i) / k
    kind = "ranks" if ranked[0][1] is None else "qr-scores"
    return HeadScores(scores, {"imported_from": "qrhead", "source": str(source), "scores": kind,
                               "heads": [str(h) for h, _ in ranked]})


def write_qrhead_heads(scores: HeadScores, k: int = 16) -> str:
    """The top ``k`` heads as QRHead's ``attn_head_set`` value (``"L-H,L-H,..."``, best first)."""
    return ",".join(f"{h.layer}-{h.head}" for h in scores.top_k(k))


# ---- DuoAttention -----------------------------------------------------------------------------------------
def _duo_paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    return (p / DUO_TSV, p / DUO_CONFIG) if p.is_dir() or p.suffix != ".tsv" else (p, p.parent / DUO_CONFIG)


def read_duo_pattern(path: str | Path, n_heads: int | None = None) -> HeadScores:
    """A DuoAttention pattern (its folder or ``full_attention_heads.tsv``): gates ``(layers, KV heads)``.

    With ``n_heads`` (query heads), each KV head's gate is given to every query head it serves (GQA groups
    of ``n_heads / KV heads``); without it the scores are per KV head. Gates are clipped to [0, 1] as
    DuoAttention loads them; ``sink_size``/``recent_size`` come from ``config.json`` when present.
    """
    tsv, config = _duo_paths(path)
    try:
        rows = [[float(x) for x in line.split("\t")] for line in tsv.read_text(encoding="utf-8").splitlines() if line]
    except (OSError, ValueError) as err:
        raise HeadScoreFileError(f"{tsv}: not a DuoAttention pattern ({err})") from err
    if not rows or len({len(r) for r in rows}) != 1:
        raise HeadScoreFileError(f"{tsv}: rows must hold one gate per KV head, the same count on every layer")
    gates = torch.tensor(rows).clamp(0, 1)
    n_kv = gates.shape[1]
    if n_heads is not None:
        if n_heads % n_kv:
            raise HeadScoreFileError(f"{tsv}: {n_kv} KV heads do not divide {n_heads} query heads")
        gates = gates.repeat_interleave(n_heads // n_kv, dim=1)
    meta: dict[str, Any] = {"imported_from": "duo-attention", "source": str(tsv), "n_kv_heads": n_kv,
                            "granularity": "query-head" if n_heads else "kv-head"}
    if config.is_file():
        cfg = json.loads(config.read_text(encoding="utf-8"))
        meta.update({k: cfg[k] for k in ("sink_size", "recent_size") if k in cfg})
    return HeadScores(gates, meta)


def kv_head_scores(scores: HeadScores, n_kv_heads: int) -> torch.Tensor:
    """``(layers, KV heads)``: the highest score among the query heads each KV head serves.

    >>> kv_head_scores(HeadScores(torch.tensor([[0.1, 0.7, 0.2, 0.0]])), 2).tolist()
    [[0.699999988079071, 0.20000000298023224]]
    """
    if scores.n_heads % n_kv_heads:
        raise ValueError(f"{n_kv_heads} KV heads do not divide {scores.n_heads} query heads")
    return scores.scores.view(scores.n_layers, n_kv_heads, -1).amax(-1)


def duo_tsv_text(gates: Sequence[Sequence[float]]) -> str:
    """``full_attention_heads.tsv`` text: ``%.18e`` values, tab-separated, ``\\n`` after every layer."""
    return "".join("\t".join(format(float(x), ".18e") for x in row) + "\n" for row in gates)


def write_duo_pattern(scores: HeadScores, out_dir: str | Path, n_kv_heads: int, sink_size: int = 128,
                      recent_size: int = 256) -> Path:
    """Write ``scores`` as a DuoAttention pattern folder (``full_attention_heads.tsv`` + ``config.json``).

    Per KV head: its gate where the scores are DuoAttention gates, otherwise the highest score of the
    query heads it serves (scores are not rescaled: threshold them with DuoAttention's ``--sparsity``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gates = scores.scores if scores.n_heads == n_kv_heads else kv_head_scores(scores, n_kv_heads)
    atomic_write_text(out / DUO_TSV, duo_tsv_text(gates.tolist()))
    config = {"sink_size": sink_size, "recent_size": recent_size, "model_name": scores.meta.get("model"),
              "exported_from": "headatlas", "scorer": scores.meta.get("scorer", scores.meta.get("method"))}
    atomic_write_text(out / DUO_CONFIG, json.dumps(config) + "\n")
    return out / DUO_TSV
