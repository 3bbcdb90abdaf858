"""Which KV heads keep the whole cache: from a head set, by aggregated score, or at random.

A KV head ``(layer, g)`` serves the query heads ``g * r .. g * r + r - 1``, ``r = n_heads / n_kv_heads``
(GQA). A head *set* maps to KV heads by the ``any`` rule (kept whole when any of its query heads is in the
set); a *budget* keeps the ``budget`` KV heads with the best ``max`` (default) or ``mean`` score of their
query heads, as RetMask's and DuoAttention's KV-head comparisons do (``../shared/docs/peers.md``).

>>> import torch
>>> from headatlas.heads import Head, HeadScores
>>> kv_heads_of([Head(1, 5)], n_heads=8, n_kv_heads=2)
[KVHead(layer=1, kv_head=1)]
>>> s = HeadScores(torch.tensor([[0.9, 0.0, 0.0, 0.0], [0.0, 0.0, 0.3, 0.3]]))
>>> top_kv_heads(s, n_kv_heads=2, budget=1, aggregate="max"), top_kv_heads(s, n_kv_heads=2, budget=1, aggregate="mean")
([KVHead(layer=0, kv_head=0)], [KVHead(layer=0, kv_head=0)])
>>> full_per_layer([KVHead(1, 1)], n_layers=2)
[[], [1]]
>>> full_per_layer([KVHead(1, 1)], n_layers=2, whole={0: 2})  # layer 0 is not compressible: both KV heads kept
[[0, 1], [1]]

Only layers whose cache is full-length per-head KV are compressed (:func:`compressible_layers`): a
sliding-window or chunked layer's cache is already bounded by its window and is kept as the model keeps it;
a hybrid model's linear-attention/SSM/conv layers keep the model's own recurrent-state cache layers
(:mod:`.hybrid`). An MLA model caches one shared latent per token (no KV head to keep or drop), and a model
whose layers hold SSM state and attention KV in one cache layer (Falcon-H1) cannot be split: both are
refused in one line (docs/decisions.md, rows 37-38).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

import torch

from ..heads import Head, HeadScores
from ..model_spec import ModelSpec, UnsupportedModelError

Aggregate = Literal["max", "mean"]
AGGREGATES: tuple[str, ...] = ("max", "mean")


class KVHead(NamedTuple):
    """One KV head: zero-based ``layer`` and ``kv_head`` index."""

    layer: int
    kv_head: int

    def __str__(self) -> str:
        return f"{self.layer}.kv{self.kv_head}"


def kv_heads_of(heads: Iterable[Head | tuple[int, int]], n_heads: int, n_kv_heads: int) -> list[KVHead]:
    """The ``any`` rule: the KV heads holding at least one of ``heads`` (sorted, unique)."""
    if n_heads % n_kv_heads:
        raise ValueError(f"{n_heads} query heads do not split into {n_kv_heads} KV groups")
    per = n_heads // n_kv_heads
    return sorted({KVHead(int(h[0]), int(h[1]) // per) for h in heads})


def kv_scores(scores: HeadScores, n_kv_heads: int, aggregate: Aggregate = "max") -> torch.Tensor:
    """Per-KV-head score ``[n_layers, n_kv_heads]``: the max or mean of its query heads' scores."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; choose one of {AGGREGATES}")
    grouped = scores.scores.reshape(scores.n_layers, n_kv_heads, -1)  # (L, n_kv, r)
    return grouped.amax(-1) if aggregate == "max" else grouped.mean(-1)


def n_scored_kv_heads(scores: HeadScores, n_kv_heads: int, aggregate: Aggregate = "max") -> int:
    """How many KV heads have an aggregated score above the scorer's null level."""
    return sum(1 for x in kv_scores(scores, n_kv_heads, aggregate).flatten().tolist() if x > scores.null_level)


def top_kv_heads(scores: HeadScores, n_kv_heads: int, budget: int, aggregate: Aggregate = "max",
                 per_layer: bool = False, layers: Sequence[int] | None = None) -> list[KVHead]:
    """The ``budget`` best KV heads by aggregated score, best first (ties: layer, then KV head);
    with ``per_layer`` the ``budget`` best of every layer, sorted (DuoAttention-style per-layer budgets).
    ``layers``: the compressible layers to choose from (default: every layer).

    In total (not ``per_layer``) a budget above the number of scored KV heads (aggregated score above the
    scorer's null level) is refused: the rest would be KV heads with no retrieval score, picked by index.
    A per-layer budget is a memory allocation every layer takes whatever its scores (decision 32).
    """
    agg = kv_scores(scores, n_kv_heads, aggregate)  # (L, n_kv)
    if budget < 1:
        raise ValueError(f"a KV-head budget must be >= 1, got {budget}")
    if not per_layer and budget > (n := n_scored_kv_heads(scores, n_kv_heads, aggregate)):
        raise ValueError(f"budget {budget}: only {n} KV heads hold a head scoring above the scorer's null level "
                         f"{scores.null_level:g} ({aggregate} of their query heads); use budgets up to {n}")
    among = list(range(scores.n_layers)) if layers is None else sorted(layers)
    if per_layer:
        return sorted(KVHead(layer, g) for layer in among
                      for g in sorted(range(n_kv_heads), key=lambda g: (-float(agg[layer, g]), g))[:budget])
    flat = agg.flatten().tolist()
    order = sorted((i for i in range(len(flat)) if i // n_kv_heads in among), key=lambda i: (-flat[i], i))
    return [KVHead(i // n_kv_heads, i % n_kv_heads) for i in order[:budget]]


def random_kv_heads(n_layers: int, n_kv_heads: int, budget: int, seed: int, exclude: Iterable[KVHead] = (),
                    per_layer: bool = False, layers: Sequence[int] | None = None) -> list[KVHead]:
    """``budget`` KV heads drawn with ``seed`` (in every layer, with ``per_layer``), never one of ``exclude``;
    ``layers``: the compressible layers to draw from (default: every layer)."""
    banned = {KVHead(*k) for k in exclude}
    rng = random.Random(seed)
    among = range(n_layers) if layers is None else sorted(layers)
    every = [[KVHead(layer, g) for g in range(n_kv_heads)] for layer in among]
    out: list[KVHead] = []
    for group in every if per_layer else [[k for layer in every for k in layer]]:
        pool = [k for k in group if k not in banned]
        if budget > len(pool):
            raise ValueError(f"cannot draw {budget} random KV heads: only {len(pool)} lie outside the excluded ones"
                             + (f" in layer {group[0].layer}" if per_layer else ""))
        out += rng.sample(pool, budget)
    return sorted(out)


def full_per_layer(kv_heads: Sequence[KVHead], n_layers: int, whole: dict[int, int] | None = None) -> list[list[int]]:
    """KV heads kept whole, as one list per layer (the form :class:`HeadSplitCache` takes); ``whole`` maps a layer
    that is not compressed (sliding window, chunked) to its KV-head count: all of them are kept."""
    out: list[list[int]] = [[] for _ in range(n_layers)]
    for k in kv_heads:
        if not 0 <= k.layer < n_layers:
            raise ValueError(f"KV head {k} is outside the model's {n_layers} layers")
        out[k.layer].append(k.kv_head)
    for layer, n_kv in (whole or {}).items():
        out[layer] = list(range(n_kv))
    return [sorted(set(x)) for x in out]


def compressible_layers(spec: ModelSpec) -> list[int]:
    """The layers whose cache is full-length per-head KV, the only ones kv-compress compresses.

    Sliding-window and chunked layers are kept whole (their cache is bounded by the window already); linear
    layers keep their recurrent state. Raises :class:`UnsupportedModelError` (one line, the reason) for a model
    with MLA (one shared latent per token), with layers holding attention KV and SSM state in one cache layer,
    whose attention does not hand its kwargs to the cache, or with no full-length layer.
    """
    kinds = spec.layer_kinds
    if "latent" in kinds:
        raise UnsupportedModelError(
            f"kv-compress: this {spec.model_type} model uses multi-head latent attention (layers "
            f"{[i for i, k in enumerate(kinds) if k == 'latent']}): its cache is one shared latent per token, "
            "not per-head keys and values, so there is no KV head to keep whole or stream")
    shared = [i for i, (r, k) in enumerate(zip(spec.recurrent, kinds, strict=True)) if r and k != "linear"]
    if shared:
        raise UnsupportedModelError(
            f"kv-compress: layers {shared} of this {spec.model_type} model run softmax attention and an SSM side by "
            "side and keep both in one cache layer, which the head-split KV cache cannot split; masking and detection "
            "work on it")
    module = next(m for m in spec.attention_modules if m is not None)
    if not _passes_kwargs_to_cache(module):
        raise UnsupportedModelError(
            f"kv-compress: {type(module).__name__} does not hand its attention kwargs to the cache's update(), the "
            "channel through which the head-split KV cache gives the streaming heads to attention")
    full = [i for i, k in enumerate(kinds) if k == "full"]
    if not full:
        raise UnsupportedModelError(
            f"kv-compress: every softmax layer of this {spec.model_type} model attends over a bounded window "
            f"({sorted(set(kinds))}, windows {sorted({w for w in spec.windows if w})}): its cache is already bounded, "
            "there is no full-length KV head to compress")
    return full


def _passes_kwargs_to_cache(module: torch.nn.Module) -> bool:
    """True when the attention forward calls ``cache.update(..., kwargs=...)`` (or its source cannot be read)."""
    import inspect
    import re

    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return True
    calls = re.findall(r"\.update\(([^)]*)\)", source)
    return not calls or any("kwargs" in args for args in calls)
