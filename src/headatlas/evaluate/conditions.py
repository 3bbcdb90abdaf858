"""What niah-eval and compare share: the conditions
they make (:func:`build_conditions`: ``unmasked``; per head set, its top-K masked; ``random-s{seed}``:
K random heads drawn outside *every* set's top-K, or with ``layer_matched`` one family per set,
``random-{NAME}-s{seed}``, with that set's heads per layer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..heads import Head, HeadScores, heads_to_strings
from ..selection import HeadSelection, HeadSelectionError, load_scores


@dataclass(frozen=True)
class Condition:
    """One masking condition: its name, which heads (``selection``; ``None``: unmasked) and those heads
    resolved against the model."""

    name: str
    selection: HeadSelection | None = None
    heads: tuple[Head, ...] = ()
    head_set: str | None = None  # the set (kind "heads"), or the set a layer-matched control follows

    @property
    def kind(self) -> str:
        """``unmasked``, ``heads`` (a set's top-K) or ``random`` (a control)."""
        if self.selection is None:
            return "unmasked"
        return "heads" if self.selection.random_seed is None else "random"

    @property
    def seed(self) -> int | None:
        return self.selection.random_seed if self.selection is not None else None

    @property
    def group(self) -> str:
        """The summary row this condition belongs to (random seeds are pooled)."""
        if self.kind != "random":
            return self.name
        return f"random-{self.head_set}" if self.head_set else "random"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "heads": heads_to_strings(self.heads),
                "head_set": self.head_set, "seed": self.seed}  # fmt: skip


def build_conditions(
    head_sets: Mapping[str, str | Path | HeadScores],
    top_k: int | None,
    random_seeds: int,
    n_layers: int,
    n_heads: int,
    layer_matched: bool = False,
    model: str | None = None,
    allow_other_model: bool = False,
) -> list[Condition]:
    """The conditions of a comparison: unmasked, each set's top-K (``None``: 5 % of the heads), and
    random controls drawn outside the top-K of every set (:class:`HeadSelection`'s one rule).

    Given the ``model``'s name, a score file made for another model is refused unless ``allow_other_model``.

    >>> import torch
    >>> s = HeadScores(torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.8, 0.0]]))
    >>> [c.name for c in build_conditions({"rh": s}, top_k=2, random_seeds=2, n_layers=2, n_heads=3)]
    ['unmasked', 'rh', 'random-s0', 'random-s1']
    """
    sets = {name: load_scores(src, n_layers, n_heads, model, allow_other_model)  # checked once
            for name, src in head_sets.items()}
    every = tuple(sets.values())
    plan: list[tuple[str, HeadSelection | None, str | None]] = [("unmasked", None, None)]
    plan += [(name, HeadSelection(scores=s, top_k=top_k), name) for name, s in sets.items()]
    if layer_matched:
        plan += [(f"random-{name}-s{seed}", HeadSelection(scores=s, top_k=top_k, random_seed=seed, exclude=every,
                                                          layer_matched=True), name)
                 for name, s in sets.items() for seed in range(random_seeds)]  # fmt: skip
    else:
        plan += [(f"random-s{seed}", HeadSelection(top_k=top_k, random_seed=seed, exclude=every), None)
                 for seed in range(random_seeds)]  # fmt: skip

    def resolve(sel: HeadSelection, head_set: str | None) -> tuple[Head, ...]:
        try:
            return tuple(sel.resolve(n_layers, n_heads))
        except HeadSelectionError as err:  # the sets are loaded: name the file
            where = f"{head_set}={head_sets[head_set]}: " if head_set and not isinstance(head_sets[head_set], HeadScores) else ""
            raise HeadSelectionError(f"{where}{err}") from None

    return [Condition(name, sel, resolve(sel, head_set) if sel else (), head_set)
            for name, sel, head_set in plan]  # fmt: skip

