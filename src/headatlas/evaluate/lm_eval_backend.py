"""``masked-hf``: lm-eval's Hugging Face backend with attention heads masked.

A subclass of lm-eval's ``HFLM`` (``hf``) that runs every forward (loglikelihood, rolling,
generate_until) inside :func:`headatlas.masked_heads`, as lm-eval's ``hf_steered.py`` wraps
``_model_call`` and ``_model_generate`` in its hooks. With no heads it *is* ``hf``: same numbers.
lm-eval has no plugin entry point, so ``headatlas lm-eval`` imports this module, then runs
lm-eval's own CLI::

    headatlas lm-eval run --model masked-hf \\
        --model_args pretrained=DIR,heads=rth/head_scores.json,top_k=25,mode=zero \\
        --tasks mgsm_native_cot_de --include_path TASKS_DIR --device cpu

``model_args`` (:meth:`~headatlas.selection.HeadSelection.from_args`, plus every ``hf`` argument;
``pretrained=organism`` loads the built-in model):

- ``heads``: a head-score file (its ``top_k`` best heads, or those above ``threshold``); a list
  ``"L-H;L-H"`` (``3-10``, not ``3.10``, which lm-eval would read as a float); ``none``; or ``random``;
- ``top_k`` (default: 5 % of the model's heads) or ``threshold``;
- ``random_seed``: a random control, K heads drawn outside the selection of ``heads`` and of every
  file in ``exclude`` (``PATH1;PATH2``), ``layer_matched`` (false) to the first of them;
- ``mode`` (``zero`` | ``mean`` | ``uniform``), ``means`` (``[n_layers, n_heads, head_dim]``, ``.pt`` or
  ``.safetensors``, for ``mean``);
- ``allow_other_model`` (false): use a score file whose metadata names another model of the same shape
  (refused otherwise, naming both models).

>>> from headatlas import load_model, Head
>>> model, tok, _ = load_model("organism")                                     # doctest: +SKIP
>>> lm = MaskedHFLM.from_model(model, tok, heads=[Head(2, 1)], mode="zero")   # doctest: +SKIP
>>> import lm_eval; lm_eval.simple_evaluate(model=lm, tasks=["organism_mono"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from ..heads import Head, check_heads, heads_to_strings
from ..masking import MASK_MODES, load_means, masked_heads
from ..model_spec import ModelSpec, resolve_model_path
from ..selection import HeadSelection

__all__ = ["MaskedHFLM"]


@register_model("masked-hf")
class MaskedHFLM(HFLM):
    """lm-eval's ``HFLM`` whose forwards run with ``heads`` masked (``mode`` zero, mean or uniform).

    ``heads`` and the selection arguments are those of
    :meth:`HeadSelection.from_args <headatlas.selection.HeadSelection.from_args>`;
    ``self.heads`` is the resolved list and may be reassigned between
    evaluations (the comparison runner does so per condition). ``device``
    defaults to CUDA when available, else CPU.

    >>> lm = MaskedHFLM(pretrained="organism", heads="runs/rh/head_scores.json", top_k=6)  # doctest: +SKIP
    >>> lm.heads[:2]                                                                          # doctest: +SKIP
    [Head(layer=2, head=1), Head(layer=3, head=0)]
    """

    def __init__(self, pretrained: Any, heads: Any = None, top_k: int | None = None, mode: str = "zero",
                 threshold: float | None = None, random_seed: int | None = None,
                 exclude: str | Sequence[str] | None = None, layer_matched: bool = False,
                 means: str | Path | torch.Tensor | None = None, device: str | None = None,
                 allow_other_model: bool | str = False, **kwargs: Any) -> None:
        if mode not in MASK_MODES:
            raise ValueError(f"unknown mask mode {mode!r}; choose one of {MASK_MODES}")
        name = pretrained if isinstance(pretrained, str) else None  # a score file of another model is refused
        if isinstance(pretrained, str):
            pretrained = resolve_model_path(pretrained)
        super().__init__(pretrained=pretrained, device=device, **kwargs)
        self.spec = ModelSpec.from_model(self.model)
        self.mode = mode
        self.means = load_means(means) if isinstance(means, (str, Path)) else means
        if mode == "mean" and self.means is None:
            raise ValueError("mode=mean needs means=PATH (per-head mean outputs, see headatlas.head_output_means)")
        self.selection = HeadSelection.from_args(heads, top_k, threshold, random_seed, exclude, layer_matched,
                                                 allow_other_model)
        self.heads = self.selection.resolve(self.spec.n_layers, self.spec.n_heads, name)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, heads: Iterable[Head | tuple[int, int]] = (), mode: str = "zero",
                   means: torch.Tensor | None = None, **kwargs: Any) -> MaskedHFLM:
        """Wrap a loaded model and tokenizer; ``heads`` is an explicit head list, ``kwargs`` go to ``HFLM``.

        >>> lm = MaskedHFLM.from_model(model, tokenizer, heads=[Head(0, 1)])  # doctest: +SKIP
        """
        return cls(pretrained=model, tokenizer=tokenizer, heads=list(heads), mode=mode, means=means, **kwargs)

    @property
    def heads(self) -> list[Head]:
        """The heads masked in every forward (sorted, checked against the model)."""
        return self._heads

    @heads.setter
    def heads(self, value: Iterable[Head | tuple[int, int]]) -> None:
        self._heads = check_heads(value, self.spec.n_layers, self.spec.n_heads)

    def _masking(self):
        return masked_heads(self.model, self._heads, mode=self.mode, means=self.means, spec=self.spec)  # type: ignore[arg-type]

    def _model_call(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with self._masking():
            return super()._model_call(*args, **kwargs)

    def _model_generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with self._masking():
            return super()._model_generate(*args, **kwargs)

    def get_model_info(self) -> dict[str, Any]:
        """lm-eval's model info plus the masked heads and mode (lands in the results' ``config``)."""
        info = super().get_model_info()
        info.update({"masked_heads": heads_to_strings(self._heads), "mask_mode": self.mode})
        return info
