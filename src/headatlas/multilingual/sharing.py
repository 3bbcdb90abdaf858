"""Are retrieval heads shared across languages? Overlaps of per-language head sets.

>>> import torch
>>> from headatlas.heads import HeadScores
>>> en = HeadScores(torch.tensor([[0.9, 0.0], [0.6, 0.2]]))
>>> de = HeadScores(torch.tensor([[0.8, 0.3], [0.0, 0.2]]))
>>> res = sharing_analysis({"en": en, "de": de}, top_k=2)
>>> round(res["pairs"]["en|de"]["jaccard"], 3), res["shared_by_all"]["heads"]
(0.333, ['0.0', '1.1'])
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from ..config import SCORE_THRESHOLD
from ..heads import Head, HeadScores, heads_to_strings
from ..selection import layer_histogram, overlap

STRONG = 0.5


def check_top_k(top_k: int, n_total: int) -> None:
    """Refuse a K of the compared top-K sets below 1 or above the model's heads (never cut to fit)."""
    if not 1 <= top_k <= n_total:
        raise ValueError(f"top_k={top_k}: the top-K sets compared hold 1 to {n_total} heads (the model's heads)")


def sharing_analysis(
    scores: dict[str, HeadScores], top_k: int = 20, threshold: float = SCORE_THRESHOLD, strong: float = STRONG
) -> dict[str, Any]:
    """Jaccard/overlap of top-K sets per language pair; heads common to all; strong heads' agnosticism.

    - ``pairs``: for each language pair, intersection, Jaccard and overlap
      coefficient of the top-``top_k`` sets (scored heads only, above the scorer's null level: a set is
      smaller when fewer heads score; ``n_scored`` says how many do per language);
    - ``shared_by_all``: retrieval heads (score > ``threshold``) present in every
      language, and their share of the union;
    - ``strong``: heads scoring >= ``strong`` in any language, and for each the
      minimum score across languages — a strong head is *language-agnostic*
      when it is a retrieval head (> ``threshold``) in every language.
    """
    if len(scores) < 2:
        raise ValueError("sharing needs scores for at least two languages")
    shapes = {(s.n_layers, s.n_heads) for s in scores.values()}
    if len(shapes) != 1:
        raise ValueError(f"head-score shapes differ across languages: {sorted(shapes)}")
    check_top_k(top_k, next(iter(scores.values())).n_total)
    langs = list(scores)
    tops = {lang: scores[lang].top_k(top_k) for lang in langs}
    retrieval = {lang: set(scores[lang].above(threshold)) for lang in langs}
    pairs = {f"{a}|{b}": overlap(tops[a], tops[b]) for a, b in combinations(langs, 2)}
    union = set().union(*retrieval.values())
    common = set.intersection(*retrieval.values())
    strong_heads: dict[str, dict[str, float]] = {}
    for lang in langs:
        for head in scores[lang].above(strong - 1e-12):
            strong_heads.setdefault(str(head), {l2: scores[l2][head] for l2 in langs})
    agnostic = [h for h, per_lang in strong_heads.items() if min(per_lang.values()) > threshold]
    return {
        "languages": langs,
        "top_k": top_k,
        "threshold": threshold,
        "top_k_heads": {lang: heads_to_strings(tops[lang]) for lang in langs},
        "n_scored": {lang: scores[lang].n_scored for lang in langs},
        "n_retrieval_heads": {lang: len(retrieval[lang]) for lang in langs},
        "pairs": pairs,
        "jaccard_matrix": [[overlap(tops[a], tops[b])["jaccard"] for b in langs] for a in langs],
        "shared_by_all": {
            "heads": heads_to_strings(sorted(common)),
            "count": len(common),
            "share_of_union": len(common) / len(union) if union else 0.0,
        },
        "strong": {
            "threshold": strong,
            "heads": strong_heads,
            "language_agnostic": agnostic,
            "share_language_agnostic": len(agnostic) / len(strong_heads) if strong_heads else None,
        },
    }


def compare_head_sets(
    retrieval: HeadScores, transition: HeadScores, top_k: int = 20, threshold: float = 0.1
) -> dict[str, Any]:
    """RH vs RTH: overlap of top-K sets (scored heads only: smaller when fewer score), layer distributions,
    counts above ``threshold``."""
    check_top_k(top_k, retrieval.n_total)
    rh, rth = retrieval.top_k(top_k), transition.top_k(top_k)

    def mean_layer(heads: list[Head]) -> float | None:
        return sum(h.layer for h in heads) / len(heads) if heads else None

    return {
        "top_k": top_k,
        "overlap": overlap(rh, rth),
        "rh_top_k": heads_to_strings(rh),
        "rth_top_k": heads_to_strings(rth),
        "rh_n_scored": retrieval.n_scored,
        "rth_n_scored": transition.n_scored,
        "rh_layer_histogram": layer_histogram(rh, retrieval.n_layers),
        "rth_layer_histogram": layer_histogram(rth, retrieval.n_layers),
        "rh_mean_layer": mean_layer(rh),
        "rth_mean_layer": mean_layer(rth),
        f"rh_above_{threshold:g}": len(retrieval.above(threshold)),
        f"rth_above_{threshold:g}": len(transition.above(threshold)),
        "n_heads_total": retrieval.n_layers * retrieval.n_heads,
    }
