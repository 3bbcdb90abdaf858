"""RetMask with statistical power: suites with headroom, their size, the pooled contrast and the live-training gate.

The pieces of ``experiments/retmask_power.py`` that are decisions rather than orchestration:

- :func:`select_suites`: keep the candidate suites where the base model scores within a band (20-80 %),
  closest to 50 % first, at least one past the longest training prompt when one qualifies;
- :func:`eval_items_per_suite`: items a suite so that the minimal detectable effect (80 % power, two-sided
  5 %) of a paired change, pooled over training seeds and suites, is at most a target (3 points);
- :func:`pooled_contrast`: per item the mean over seeds of ``a - b``, pooled over suites; paired bootstrap
  interval (:mod:`headatlas.stats`) and the minimal detectable effect of *this* data;
- :func:`live_gate`: a negative counts only when every arm's held-out reward accuracy reaches 0.8 and at
  least 5 % of its answers differ from the base model's.

>>> eval_items_per_suite(0.363, 0.03, n_seeds=3, n_suites=4)
96
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..stats import items_for_effect, minimal_detectable_effect, paired_bootstrap_ci

#: The per-item sd of RetMask - control in the 12-config sweep (docs/retmask.md): its widest interval,
#: [-25.0, -2.5] points over 40 items, is a standard error of 22.5 / (2 x 1.96) = 5.74 points, sd 5.74 x sqrt(40).
SWEEP_PAIRED_SD = 0.363
HEADROOM = (0.2, 0.8)
MIN_HELDOUT_ACCURACY = 0.8
MIN_CHANGED_ANSWERS = 0.05


def suite_length(name: str) -> int | None:
    """The context length of a ``TASK@LENGTH`` suite (None for other names)."""
    _task, sep, length = name.partition("@")
    return int(length) if sep and length.isdigit() else None


def select_suites(base_accuracy: Mapping[str, float], band: tuple[float, float] = HEADROOM, max_suites: int = 4,
                  past: int | None = None) -> list[str]:
    """Suites whose base accuracy lies in ``band``, closest to 50 % first, at most ``max_suites``; when
    ``past`` is given and a qualifying suite is longer than ``past`` tokens, the selection holds one.

    >>> select_suites({"a@256": 0.5, "b@1536": 0.75, "c@512": 0.9, "d@512": 0.4}, max_suites=2, past=1024)
    ['a@256', 'b@1536']
    """
    ok = sorted((s for s, acc in base_accuracy.items() if band[0] <= acc <= band[1]),
                key=lambda s: (abs(base_accuracy[s] - 0.5), s))
    chosen = ok[:max_suites]
    longer = [s for s in ok if past is not None and (suite_length(s) or 0) > past]
    if longer and not any(s in longer for s in chosen):
        chosen = chosen[:-1] + [longer[0]] if len(chosen) == max_suites else chosen + [longer[0]]
    return chosen


def eval_items_per_suite(sd: float, effect: float, n_seeds: int, n_suites: int, alpha: float = 0.05,
                         power: float = 0.8) -> int:
    """Items a suite so that ``n_suites`` suites x ``n_seeds`` seeds detect ``effect`` (seeds taken as
    independent draws of the per-item difference, whose sd is ``sd``)."""
    if n_seeds < 1 or n_suites < 1:
        raise ValueError("need at least one seed and one suite")
    needed = items_for_effect(sd, effect, alpha, power)  # item-seed differences
    return math.ceil(needed / n_seeds / n_suites)


def pooled_contrast(items: Mapping[str, Mapping[str, Sequence[float]]], a: Sequence[str], b: Sequence[str],
                    suites: Sequence[str], seed: int = 0, alpha: float = 0.05, power: float = 0.8) -> dict[str, Any]:
    """``mean(a) - mean(b)`` per item (``a``, ``b``: model names, one per training seed, or one name repeated),
    pooled over ``suites``: change, paired bootstrap 95 % interval, items, per-item sd and the minimal
    detectable effect of these items.

    >>> items = {"r": {"s": [1, 1, 0, 0]}, "c": {"s": [1, 0, 0, 0]}}
    >>> pooled_contrast(items, ["r"], ["c"], ["s"])["delta"]
    0.25
    """
    if not a or not b or not suites:
        raise ValueError("need models on both sides and at least one suite")
    diffs_a, diffs_b = [], []
    for suite in suites:
        n = len(items[a[0]][suite])
        diffs_a += [sum(items[m][suite][i] for m in a) / len(a) for i in range(n)]
        diffs_b += [sum(items[m][suite][i] for m in b) / len(b) for i in range(n)]
    delta, low, high = paired_bootstrap_ci(diffs_b, diffs_a, seed=seed)
    d = [x - y for x, y in zip(diffs_a, diffs_b, strict=True)]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1)) if len(d) > 1 else 0.0
    return {"delta": delta, "delta_low": low, "delta_high": high, "n_items": len(d), "sd": sd,
            "mde": minimal_detectable_effect(sd, len(d), alpha, power)}


def changed_share(answers: Mapping[str, Mapping[str, Sequence[str | None]]], base: str, models: Sequence[str],
                  suites: Sequence[str]) -> float | None:
    """Share of (model, item) answers that differ from the base model's, over ``models`` and ``suites``."""
    changed = total = 0
    for m in models:
        for s in suites:
            for x, y in zip(answers[base][s], answers[m][s], strict=True):
                if x is None or y is None:
                    return None
                changed += x != y
                total += 1
    return changed / total if total else None


def live_gate(heldout: Mapping[str, Sequence[float | None]], changed: Mapping[str, float | None],
              min_heldout: float = MIN_HELDOUT_ACCURACY, min_changed: float = MIN_CHANGED_ANSWERS) -> dict[str, Any]:
    """Was training live? Per arm: every seed's held-out reward accuracy >= ``min_heldout`` and the share of
    changed answers >= ``min_changed``; ``live`` when every arm passes, with the reasons it did not.

    >>> live_gate({"retmask": [0.9, 0.85], "control": [0.7]}, {"retmask": 0.1, "control": 0.01})["reasons"]
    ['control: held-out reward accuracy 0.70 < 0.8', 'control: 1.0 % of answers changed < 5 %']
    """
    reasons = []
    for arm, accs in heldout.items():
        low = min((x for x in accs if x is not None), default=None)
        if low is None or low < min_heldout:
            reasons.append(f"{arm}: held-out reward accuracy {'-' if low is None else f'{low:.2f}'} < {min_heldout:g}")
        share = changed.get(arm)
        if share is None or share < min_changed:
            shown = "-" if share is None else f"{100 * share:.1f} %"
            reasons.append(f"{arm}: {shown} of answers changed < {100 * min_changed:g} %")
    return {"live": not reasons, "reasons": reasons}
