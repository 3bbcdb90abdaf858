"""Bootstrap intervals over items: a score's, and a paired change's.

A benchmark score is a mean over items (exact match, F1, ...). Its interval is the percentile
bootstrap: resample the items with replacement ``n_resamples`` times, take each mean, and report the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles. A change against the unmasked model
is bootstrapped *paired* (the same resampled items for both conditions, so item difficulty cancels).
The generator is seeded: an interval is a deterministic function of its inputs.

>>> bootstrap_ci([1.0, 1.0, 1.0])
(1.0, 1.0, 1.0)
>>> bootstrap_ci([0.0, 1.0], n_resamples=4000)
(0.5, 0.0, 1.0)
>>> paired_bootstrap_ci([0.0, 0.5, 1.0], [0.0, 0.25, 0.5])[0]
-0.25
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np


def _check(values: Sequence[float], confidence: float, n_resamples: int) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("need a non-empty 1-D sequence of per-item scores")
    if not np.isfinite(x).all():
        raise ValueError("per-item scores contain NaN or infinite values")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    return x


def bootstrap_ci(values: Sequence[float], n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
                 ) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile-bootstrap interval: ``(mean, low, high)``.

    With a single item, or all items equal, the interval collapses to the mean.

    >>> bootstrap_ci([0.0, 0.0, 1.0, 1.0], seed=1)[0]
    0.5
    """
    x = _check(values, confidence, n_resamples)
    mean = float(x.mean())
    if np.all(x == x[0]):
        return mean, mean, mean
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_resamples, x.size))  # (B, n) resampled items
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(x[idx].mean(axis=1), [alpha, 1.0 - alpha])
    return mean, float(low), float(high)


def paired_bootstrap_ci(reference: Sequence[float], treated: Sequence[float], n_resamples: int = 2000,
                        confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean change ``treated - reference`` over the same items (``[i]`` is one item) and its paired interval.

    >>> paired_bootstrap_ci([0.25, 0.5, 1.0], [0.125, 0.375, 0.875])  # every item lost 0.125
    (-0.125, -0.125, -0.125)
    """
    a = _check(reference, confidence, n_resamples)
    b = _check(treated, confidence, n_resamples)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same items: {a.size} vs {b.size}")
    return bootstrap_ci(b - a, n_resamples=n_resamples, confidence=confidence, seed=seed)


def mean_and_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max of per-seed scores (sd 0 for one seed).

    >>> mean_and_spread([0.25, 0.75])
    {'mean': 0.5, 'sd': 0.3535533905932738, 'min': 0.25, 'max': 0.75, 'n': 2}
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("need at least one value")
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return {"mean": float(x.mean()), "sd": sd, "min": float(x.min()), "max": float(x.max()), "n": int(x.size)}


def minimal_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean change a two-sided test at level ``alpha`` finds with probability ``power``, for
    ``n`` paired items whose per-item differences have standard deviation ``sd`` (normal approximation):
    ``(z[1 - alpha/2] + z[power]) * sd / sqrt(n)``.

    >>> round(minimal_detectable_effect(0.3, 784), 4)   # (1.96 + 0.8416) * 0.3 / 28
    0.03
    """
    if n < 1 or sd < 0 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError("need n >= 1, sd >= 0, alpha and power in (0, 1)")
    z = NormalDist()
    return (z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * sd / math.sqrt(n)


def items_for_effect(sd: float, effect: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Fewest paired items whose :func:`minimal_detectable_effect` is at most ``effect``.

    >>> items_for_effect(0.3, 0.03)
    785
    """
    if effect <= 0:
        raise ValueError("effect must be > 0")
    z = NormalDist()
    return max(1, math.ceil(((z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * sd / effect) ** 2))


def stable_seed(*parts: object) -> int:
    """A seed derived from ``parts`` that is the same in every process (unlike ``hash``).

    >>> stable_seed("organism_mono", "unmasked") == stable_seed("organism_mono", "unmasked")
    True
    """
    return zlib.crc32("\x1f".join(map(str, parts)).encode("utf-8")) & 0x7FFFFFFF
