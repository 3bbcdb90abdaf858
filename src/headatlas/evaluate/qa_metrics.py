"""SQuAD exact match and F1 for lm-eval's XQuAD tasks, without ``transformers.data.metrics``.

lm-eval 0.4.x's ``tasks/xquad/utils.py`` imports
``transformers.data.metrics.squad_metrics``, which transformers 5 removed, so
every ``xquad_*`` task fails to load there (``ModuleNotFoundError`` while the
YAML is read). The task configs shipped in ``headatlas/evaluate/tasks/
xquad_compat/`` are lm-eval's XQuAD configs with ``process_results`` pointing
here; the metric is the official SQuAD v1.1/v2 script's (lower-case, strip
punctuation and English articles, split on whitespace).

>>> round(squad_f1("the Rhine river", "Rhine"), 3)
0.667
>>> squad_exact("The Rhine.", "rhine")
1
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation and English articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def squad_exact(gold: str, prediction: str) -> int:
    """1 when the normalized strings are equal, else 0."""
    return int(normalize_answer(gold) == normalize_answer(prediction))


def squad_f1(gold: str, prediction: str) -> float:
    """Token-level F1 of the normalized strings (1/0 by equality when either side is empty)."""
    gold_toks, pred_toks = _tokens(gold), _tokens(prediction)
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    same = sum((Counter(gold_toks) & Counter(pred_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def xquad_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """lm-eval ``process_results`` for XQuAD: F1 and exact match against the first gold answer.

    >>> xquad_process_results({"answers": {"text": ["1230 km"], "answer_start": [0]}}, [" 1230 km"])
    {'f1': 1.0, 'exact_match': 1}
    """
    reference = doc["answers"]["text"][0]
    prediction = results[0]
    return {"f1": squad_f1(reference, prediction), "exact_match": squad_exact(reference, prediction)}
