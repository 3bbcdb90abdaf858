"""Choosing head sets for interventions, and how concentrated a score map is.

>>> import torch
>>> from retrieval_heads.heads import Head, HeadScores
>>> s = HeadScores(torch.tensor([[0.9, 0.0, 0.0], [0.3, 0.0, 0.0]]))
>>> top_k(s, 1)
[Head(layer=0, head=0)]
>>> random_heads(2, 3, k=2, seed=0, exclude=[Head(0, 0), Head(1, 0)])  # never a given head
[Head(layer=0, head=2), Head(layer=1, head=2)]
>>> round(concentration(s)["top_10_share"], 3)
1.0
>>> share_of_heads(64), share_of_heads(128), share_of_heads(1024)  # the default K: 5 % of all heads
(3, 6, 51)
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence

from .heads import Head, HeadScores, check_heads

DEFAULT_HEAD_SHARE = 0.05  # Wu et al.'s "< 5 % of heads"; the default K of the demo, measure and RetMask


def share_of_heads(n_total_heads: int, share: float = DEFAULT_HEAD_SHARE) -> int:
    """How many heads ``share`` of ``n_total_heads`` is (rounded, at least 1): the default K to mask."""
    return max(1, round(share * n_total_heads))


def top_k(scores: HeadScores, k: int, exclude: Iterable[Head] = ()) -> list[Head]:
    """The ``k`` best heads (best first), skipping ``exclude``."""
    banned = {Head(*h) for h in exclude}
    return [h for h, _ in scores.ranked() if h not in banned][:k]


def above_threshold(scores: HeadScores, threshold: float) -> list[Head]:
    """Heads with score strictly above ``threshold`` (the paper's retrieval heads: 0.1)."""
    return scores.above(threshold)


def select_heads(scores: HeadScores, top: int | None = None, threshold: float | None = None) -> list[Head]:
    """Top-K or threshold selection (exactly one of them)."""
    if (top is None) == (threshold is None):
        raise ValueError("give exactly one of top (top-K) or threshold")
    return top_k(scores, top) if top is not None else above_threshold(scores, threshold)  # type: ignore[arg-type]


def random_heads(
    n_layers: int,
    n_heads: int,
    k: int,
    seed: int,
    exclude: Iterable[Head] = (),
    layer_matched_to: Sequence[Head] | None = None,
) -> list[Head]:
    """``k`` random heads drawn with ``seed``, never one of ``exclude``.

    With ``layer_matched_to`` the draw takes as many heads from each layer as
    that set has there (the control matches the layer distribution); ``k`` is
    then ``len(layer_matched_to)``.
    """
    banned = set(check_heads(exclude, n_layers, n_heads))
    rng = random.Random(seed)
    if layer_matched_to is not None:
        per_layer = Counter(Head(*h).layer for h in layer_matched_to)
        chosen: list[Head] = []
        for layer in sorted(per_layer):
            pool = [Head(layer, h) for h in range(n_heads) if Head(layer, h) not in banned]
            if len(pool) < per_layer[layer]:
                raise ValueError(f"layer {layer} has only {len(pool)} heads outside the excluded sets")
            chosen += rng.sample(pool, per_layer[layer])
        return sorted(chosen)
    pool = [Head(layer, h) for layer in range(n_layers) for h in range(n_heads) if Head(layer, h) not in banned]
    if k > len(pool):
        raise ValueError(f"cannot draw {k} random heads: only {len(pool)} heads lie outside the excluded sets")
    return sorted(rng.sample(pool, k))


def gini(values: Sequence[float]) -> float:
    """Gini coefficient of non-negative values (0 = all equal, -> 1 = all mass on one)."""
    xs = sorted(max(0.0, float(v)) for v in values)
    n, total = len(xs), sum(xs)
    if n == 0 or total == 0:
        return 0.0
    cum = sum((i + 1) * x for i, x in enumerate(xs))
    return (2 * cum) / (n * total) - (n + 1) / n


def entropy(values: Sequence[float]) -> float:
    """Shannon entropy (nats) of the scores normalised to a distribution."""
    xs = [max(0.0, float(v)) for v in values]
    total = sum(xs)
    if total == 0:
        return 0.0
    return -sum((x / total) * math.log(x / total) for x in xs if x > 0)


def concentration(scores: HeadScores, threshold: float = 0.1, top: int = 10) -> dict[str, float]:
    """How concentrated a score map is (RetMask links gains to this).

    Returns heads above ``threshold`` (count and fraction), the top-``top``
    share of the total score, the Gini coefficient, and the entropy (nats and
    normalised to [0, 1]).
    """
    flat = scores.scores.flatten().clamp(min=0).tolist()
    total = sum(flat)
    ranked = sorted(flat, reverse=True)
    n = len(flat)
    ent = entropy(flat)
    n_above = sum(1 for x in flat if x > threshold)
    return {
        "n_heads_total": n,
        f"n_above_{threshold:g}": n_above,
        f"frac_above_{threshold:g}": n_above / n if n else 0.0,
        f"top_{top}_share": sum(ranked[:top]) / total if total else 0.0,
        "gini": gini(flat),
        "entropy": ent,
        "entropy_normalised": ent / math.log(n) if n > 1 else 0.0,
    }


def layer_histogram(heads: Iterable[Head], n_layers: int) -> list[int]:
    """How many of ``heads`` sit in each layer."""
    counts = [0] * n_layers
    for h in heads:
        counts[Head(*h).layer] += 1
    return counts


def overlap(a: Iterable[Head], b: Iterable[Head]) -> dict[str, float]:
    """Intersection size, Jaccard index and overlap coefficient of two head sets."""
    sa, sb = {Head(*h) for h in a}, {Head(*h) for h in b}
    inter, union = len(sa & sb), len(sa | sb)
    return {
        "intersection": inter,
        "jaccard": inter / union if union else 0.0,
        "overlap_coefficient": inter / min(len(sa), len(sb)) if sa and sb else 0.0,
    }
