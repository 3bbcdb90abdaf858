"""What niah-eval and compare share: the masking settings (:class:`MaskedEvalConfig`), the conditions
they make (:func:`build_conditions`: ``unmasked``; per head set, its top-K masked; ``random-s{seed}``:
K random heads drawn outside *every* set's top-K, or with ``layer_matched`` one family per set,
``random-{NAME}-s{seed}``, with that set's heads per layer).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..heads import Head, HeadScores, heads_to_strings
from ..masking import MASK_MODES, load_means
from ..selection import HeadSelection, HeadSelectionError, load_scores

_NAME = re.compile(r"^[A-Za-z0-9_.]+$")


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


def check_head_sets(head_sets: Mapping[str, str | Path]) -> None:
    """Raise unless every head set has a usable condition name and an existing score file."""
    for name, path in head_sets.items():
        if not _NAME.match(name) or name == "unmasked" or name.startswith("random"):
            raise ValueError(f"head-set name {name!r}: use letters, digits, '_' or '.', not 'unmasked' or 'random...'")
        if not Path(path).is_file():
            raise FileNotFoundError(f"head set {name!r}: no file {path}")


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


@dataclass(kw_only=True)
class MaskedEvalConfig:
    """The settings :class:`~.compare.CompareConfig` and :class:`~.niah_eval.NiahEvalConfig` share.

    model: hub id, local checkpoint, or ``organism``; ``device``, ``device_map`` (accelerate, e.g.
    ``auto``; replaces ``device``) and ``dtype`` load it. out: the output folder.
    heads: head-set name -> head-score file (names: letters, digits, ``_`` and ``.``).
    top_k: heads masked per set (and drawn per random control); None: 5 % of the model's heads.
    mode: ``zero`` | ``mean`` | ``uniform``; ``means`` is the mean-output file for ``mean``.
    random_seeds: number of random controls (seeds ``0 .. n-1``); 0 for none.
    layer_matched: draw each random control with the layer distribution of a set's top-K.
    overwrite: discard an earlier run in ``out`` made with other settings (else it is refused).
    allow_other_model: use score files whose metadata names another model of the same shape.
    """

    model: str
    out: str
    heads: dict[str, str] = field(default_factory=dict)
    top_k: int | None = None
    mode: str = "zero"
    means: str | None = None
    random_seeds: int = 0
    layer_matched: bool = False
    device: str | None = None
    device_map: str | None = None
    dtype: str = "auto"
    overwrite: bool = field(default=False, metadata={"help": "Recompute what was made with other settings."})
    allow_other_model: bool = field(default=False, metadata={"help": "Use --heads made for another model of the same shape."})

    def __post_init__(self) -> None:
        if self.mode not in MASK_MODES:
            raise ValueError(f"unknown mask mode {self.mode!r}; choose one of {MASK_MODES}")
        if self.mode == "mean" and not self.means:
            raise ValueError("mode 'mean' needs means (a per-head mean-output file)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.random_seeds < 0:
            raise ValueError(f"random_seeds must be >= 0, got {self.random_seeds}")
        if self.layer_matched and not self.heads:
            raise ValueError("layer_matched needs at least one head set to match")
        check_head_sets(self.heads)

    def prepare(self, model: Any = None, tokenizer: Any = None) -> tuple[Any, Any, Any, list[Condition], Any]:
        """``(model, tokenizer, spec, conditions, means)``: ``model`` as given (with its tokenizer) or loaded
        from :attr:`model`, its :class:`~headatlas.model_spec.ModelSpec`, the conditions and the means."""
        from ..model_spec import ModelSpec, load_model

        if model is None:
            model, tokenizer, _ = load_model(self.model, dtype=self.dtype, device=self.device,
                                             device_map=self.device_map)  # fmt: skip
        elif tokenizer is None:
            raise ValueError("pass the tokenizer with the model")
        spec = ModelSpec.from_model(model)
        conditions = build_conditions(self.heads, self.top_k, self.random_seeds, spec.n_layers, spec.n_heads,
                                      self.layer_matched, self.model, self.allow_other_model)  # fmt: skip
        return model, tokenizer, spec, conditions, load_means(self.means) if self.means else None

