"""Choosing head sets for interventions, and how concentrated a score map is.

>>> import torch
>>> from headatlas.heads import Head, HeadScores
>>> s = HeadScores(torch.tensor([[0.9, 0.0, 0.0], [0.3, 0.0, 0.0]]))
>>> random_heads(2, 3, k=2, seed=0, exclude=[Head(0, 0), Head(1, 0)])  # never a given head
[Head(layer=0, head=2), Head(layer=1, head=2)]
>>> round(concentration(s)["top_10_share"], 3)
1.0
>>> share_of_heads(64), share_of_heads(128), share_of_heads(1024)  # the default K: 5 % of all heads
(3, 6, 51)
>>> HeadSelection(scores=s, top_k=1).resolve(2, 3)
[Head(layer=0, head=0)]
>>> HeadSelection.parse("heads=1.2;0.1").resolve(2, 3)
[Head(layer=0, head=1), Head(layer=1, head=2)]
"""

from __future__ import annotations

import math
import random
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import SCORE_THRESHOLD
from .heads import Head, HeadScoreFileError, HeadScores, check_heads, heads_to_strings

DEFAULT_HEAD_SHARE = 0.05  # Wu et al.'s "< 5 % of heads"; the default K of the demo, measure and RetMask


def share_of_heads(n_total_heads: int, share: float = DEFAULT_HEAD_SHARE) -> int:
    """How many heads ``share`` of ``n_total_heads`` is (rounded, at least 1): the default K to mask."""
    return max(1, round(share * n_total_heads))


def random_heads(n_layers: int, n_heads: int, k: int, seed: int, exclude: Iterable[Head] = (),
                 layer_matched_to: Sequence[Head] | None = None) -> list[Head]:
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


ScoreSource = str | Path | HeadScores


def load_scores(source: ScoreSource, n_layers: int, n_heads: int, model: str | None = None,
                allow_other_model: bool = False) -> HeadScores:
    """``source`` (a head-score file or :class:`HeadScores`) checked against an ``n_layers x n_heads`` model.

    Raises :class:`HeadScoreFileError` naming the file and both shapes when they differ, and, given the
    ``model``'s name, naming both models when the file was made for another one (unless
    ``allow_other_model``: :meth:`~headatlas.heads.HeadScores.check_model`).
    """
    scores = source if isinstance(source, HeadScores) else HeadScores.load(source)
    try:
        scores.check_model(n_layers, n_heads, model, allow_other_model=allow_other_model)
    except HeadScoreFileError as err:
        raise (err if isinstance(source, HeadScores) else HeadScoreFileError(f"{source}: {err}")) from None
    return scores


def _source_name(source: ScoreSource) -> str:
    return str(source) if not isinstance(source, HeadScores) else str(source.meta.get("source", "in memory"))


class HeadSelectionError(ValueError):
    """A selection that cannot be made as asked: more heads than the model has, or than the scores score."""


class HeadSelectionWarning(UserWarning):
    """The default K asked for more heads than score above the null level: only the scored ones are selected."""


@dataclass(frozen=True)
class HeadSelection:
    """Which heads to mask; :meth:`resolve` checks it against the model once and returns the heads.

    - ``HeadSelection(heads=(Head(3, 25), Head(3, 27)))``: an explicit list (``()``: none);
    - ``HeadSelection(scores="rh/head_scores.json")``: the ``top_k`` best heads of a score file (or
      :class:`HeadScores`), or with ``threshold`` those scoring above it; K defaults to
      :func:`share_of_heads` (5 % of the model's heads, rounded, at least 1). Only *scored* heads (above
      the scorer's null level) are ever selected: a ``top_k`` above the number of scored heads (or of
      heads) is refused with :class:`HeadSelectionError`; the default K takes the scored heads only and
      says so (:class:`HeadSelectionWarning`); a selection with no head is refused;
    - ``resolve(n_layers, n_heads, model=NAME)`` (the model the heads are for, named as
      :func:`~headatlas.model_spec.load_model` takes it): a score file made for another model is refused
      unless ``allow_other_model``;
    - with ``random_seed``, a *random control*: K heads drawn with the seed from all heads minus the
      selection (same ``top_k``/``threshold``) of ``scores`` and of every set in ``exclude`` — the one
      rule of the package. With ``scores`` K is the size of its selection; ``layer_matched`` takes as
      many heads per layer as the first of these sets has.

    >>> import torch
    >>> s = HeadScores(torch.tensor([[0.9, 0.8, 0.0], [0.7, 0.0, 0.0]]))
    >>> HeadSelection(scores=s, top_k=2).resolve(2, 3)
    [Head(layer=0, head=0), Head(layer=0, head=1)]
    >>> HeadSelection(scores=s, top_k=2, random_seed=0).resolve(2, 3)  # two heads outside that top-2
    [Head(layer=1, head=0), Head(layer=1, head=2)]
    """

    scores: ScoreSource | None = None
    heads: tuple[Head, ...] | None = None
    top_k: int | None = None
    threshold: float | None = None
    random_seed: int | None = None
    exclude: tuple[ScoreSource, ...] = ()
    layer_matched: bool = False
    allow_other_model: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.heads is not None:
            object.__setattr__(self, "heads", tuple(Head(int(h[0]), int(h[1])) for h in self.heads))
            if (self.scores, self.top_k, self.threshold, self.random_seed, self.exclude) != (None,) * 4 + ((),):
                raise ValueError("an explicit head list takes no scores, top_k, threshold or random control")
        elif self.scores is None and self.random_seed is None:
            raise ValueError("say which heads: scores (a head-score file), heads (a list) or random_seed")
        if self.top_k is not None and self.threshold is not None:
            raise ValueError("give top_k or threshold, not both")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.random_seed is None and (self.exclude or self.layer_matched):
            raise ValueError("exclude and layer_matched apply to a random control (give random_seed)")
        if self.random_seed is not None and self.scores is None and self.threshold is not None:
            raise ValueError("a random control without scores draws top_k heads; a threshold does not say how many")
        if self.layer_matched and self.scores is None and not self.exclude:
            raise ValueError("layer_matched needs a head set to match (scores, or a file in exclude)")

    def _pick(self, scores: HeadScores, source: ScoreSource) -> list[Head]:
        where = "" if isinstance(source, HeadScores) and "source" not in source.meta else f" ({_source_name(source)})"
        # "5 % of heads" counts softmax heads only: a layer without them is a NaN row of the scores
        null, n, total = f"{scores.null_level:g}", scores.n_scored, int(scores.scores.isfinite().sum())
        if self.threshold is not None:
            picked = scores.above(self.threshold)
            if not picked:
                raise HeadSelectionError(f"threshold {self.threshold:g}: no head scores above it and above the "
                                         f"scorer's null level {null}{where}")
            return picked
        if n == 0:
            raise HeadSelectionError(f"no head scores above the scorer's null level {null}{where}: "
                                     "there are no retrieval heads to select")
        k = self.top_k
        if k is None:
            k = share_of_heads(total)
            if k > n:
                warnings.warn(f"the default K is {k} heads (5 % of {total}), but only {n} score above the scorer's "
                              f"null level {null}{where}: selecting those {n}", HeadSelectionWarning, stacklevel=4)
        elif k > n:
            raise HeadSelectionError(f"top_k={k}: only {n} of the {total} heads score above the scorer's null level "
                                     f"{null}{where}; ask for at most {n}")
        return scores.top_k(k)

    def resolve(self, n_layers: int, n_heads: int, model: str | None = None) -> list[Head]:
        """The heads, sorted; raises when a head or a score file does not fit an ``n_layers x n_heads`` model
        (or, given its name, was made for another ``model``: see :class:`HeadSelection`)."""
        if self.heads is not None:
            return check_heads(self.heads, n_layers, n_heads)
        if self.top_k is not None and self.top_k > n_layers * n_heads:
            raise HeadSelectionError(f"top_k={self.top_k} is more than the model's {n_layers * n_heads} heads "
                                     f"({n_layers} layers x {n_heads}); ask for at most {n_layers * n_heads}")

        def load(source: ScoreSource) -> HeadScores:
            return load_scores(source, n_layers, n_heads, model, self.allow_other_model)

        own_scores = load(self.scores) if self.scores is not None else None
        own = self._pick(own_scores, self.scores) if own_scores is not None else None
        if self.random_seed is None:
            return sorted(own)  # type: ignore[arg-type]
        others = [load(s) for s in self.exclude]
        loaded = ([own_scores] if own_scores is not None else []) + others
        sets = ([own] if own is not None else []) + [self._pick(s, src) for s, src in zip(others, self.exclude, strict=True)]
        k = len(own) if own is not None else self.top_k or share_of_heads(n_layers * n_heads)
        # never draw a head of a layer without softmax heads (a NaN row in any of the score files)
        unscored = {Head(int(i), h) for s in loaded for i in s.scores.isnan().all(dim=1).nonzero().flatten().tolist()
                    for h in range(n_heads)}
        return random_heads(n_layers, n_heads, k, self.random_seed, exclude={h for s in sets for h in s} | unscored,
                            layer_matched_to=sets[0] if self.layer_matched else None)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The selection as JSON (for run metadata); score files by path."""
        return {
            "scores": _source_name(self.scores) if self.scores is not None else None,
            "heads": heads_to_strings(self.heads) if self.heads is not None else None,
            "top_k": self.top_k, "threshold": self.threshold, "random_seed": self.random_seed,
            "exclude": [_source_name(s) for s in self.exclude], "layer_matched": self.layer_matched,
            **({"allow_other_model": True} if self.allow_other_model else {}),
        }  # fmt: skip

    @classmethod
    def from_args(cls, heads: Any = None, top_k: int | str | None = None, threshold: float | str | None = None,
                  random_seed: int | str | None = None, exclude: str | Sequence[ScoreSource] | None = None,
                  layer_matched: bool | str = False, allow_other_model: bool | str = False) -> HeadSelection:
        """A selection from loosely typed arguments, as lm-eval's ``model_args`` give them.

        ``heads``: a :class:`HeadSelection`, :class:`HeadScores` or list of heads; or a string — a
        head-score file, a head list ``"3-25;3-27"`` (``L.H`` works too, but lm-eval reads a lone
        ``3.10`` as the number 3.1), ``none`` (nothing masked) or ``random`` (a random control, seed 0
        unless ``random_seed``). ``exclude``: score files, ``"A.json;B.json"`` as one string.
        """
        if isinstance(heads, HeadSelection):
            return heads
        if isinstance(heads, (bool, int, float)):
            raise ValueError(f"heads={heads!r} was read as a number; write a head list as 'L-H;L-H' (e.g. heads=3-10)")
        if isinstance(exclude, (str, Path)):
            exclude = [p.strip() for p in str(exclude).split(";") if p.strip()]
        args = {
            "top_k": None if top_k in (None, "") else int(top_k),
            "threshold": None if threshold in (None, "") else float(threshold),
            "random_seed": None if random_seed in (None, "") else int(random_seed),
            "exclude": tuple(exclude or ()),
            "layer_matched": layer_matched if isinstance(layer_matched, bool) else layer_matched.lower() == "true",
        }
        if isinstance(allow_other_model, str):
            allow_other_model = allow_other_model.lower() == "true"
        if allow_other_model:
            args["allow_other_model"] = True
        if isinstance(heads, HeadScores):
            return cls(scores=heads, **args)
        if heads is not None and not isinstance(heads, (str, Path)):
            return cls(heads=tuple(heads), **args)
        text = str(heads or "").strip()
        if text.lower() == "random":
            text, args["random_seed"] = "", args["random_seed"] or 0
        if text.lower() in ("", "none"):
            return cls(**args) if args["random_seed"] is not None else cls(heads=(), **args)
        if Path(text).is_file():
            return cls(scores=text, **args)
        try:
            listed = tuple(Head.parse(p) for p in text.split(";") if p.strip())
        except ValueError:
            raise FileNotFoundError(
                f"heads={text!r} is neither a head-score file, 'random', 'none', nor a head list like '3-10;0-2'"
            ) from None
        return cls(heads=listed, **args)

    @classmethod
    def parse(cls, text: str) -> HeadSelection:
        """From ``key=value`` pairs split by commas: ``heads=rh.json,top_k=6``, ``heads=3.25;3.27``, ``random_seed=1``.

        >>> HeadSelection.parse("random_seed=1,top_k=2")
        HeadSelection(scores=None, heads=None, top_k=2, threshold=None, random_seed=1, exclude=(), layer_matched=False, allow_other_model=False)
        """
        parts = [[x.strip() for x in p.split("=", 1)] for p in text.split(",") if p.strip()]
        keys = ("heads", "top_k", "threshold", "random_seed", "exclude", "layer_matched", "allow_other_model")
        if any(len(p) != 2 or p[0] not in keys for p in parts):
            raise ValueError(f"head selection {text!r}: expected KEY=VALUE with KEY one of {', '.join(keys)}")
        return cls.from_args(**dict(parts))


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


def concentration(scores: HeadScores, threshold: float = SCORE_THRESHOLD, top: int = 10) -> dict[str, float]:
    """How concentrated a score map is (RetMask links gains to this).

    Returns heads above ``threshold`` (count and fraction), the top-``top``
    share of the total score, the Gini coefficient, and the entropy (nats and
    normalised to [0, 1]).
    """
    flat = [x for x in scores.scores.flatten().clamp(min=0).tolist() if x == x]  # NaN: no softmax heads there
    total, ranked, n, ent = sum(flat), sorted(flat, reverse=True), len(flat), entropy(flat)
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
    return {"intersection": inter, "jaccard": inter / union if union else 0.0,
            "overlap_coefficient": inter / min(len(sa), len(sb)) if sa and sb else 0.0}
