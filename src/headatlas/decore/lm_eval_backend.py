"""``decore-hf``: lm-eval's Hugging Face backend decoding with DeCoRe's contrastive distribution.

Registered next to ``masked-hf`` whenever ``headatlas lm-eval`` runs::

    headatlas lm-eval run --model decore-hf \\
        --model_args pretrained=organism,heads=runs/rh/head_scores.json,top_k=6,alpha=1 --tasks ...

``generate_until`` runs :func:`headatlas.decore.decore_generate` per row (``do_sample`` and
``temperature`` honoured); ``loglikelihood`` scores with the softmax of ``(1 + a) log p_base - a log p_masked``
at every position, the masked forward masking the context too. ``model_args``: the head selection as
``masked-hf`` takes it (:meth:`headatlas.selection.HeadSelection.from_args`), ``alpha`` (1.0),
``dynamic``, ``normalise``, ``cap``, ``mode`` (``uniform``) and every ``hf`` argument.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from ..heads import Head, heads_to_strings
from ..masking import masked_heads
from ..model_spec import ModelSpec, resolve_model_path
from ..selection import HeadSelection
from .decoding import DecoreSettings, contrast, decore_generate

__all__ = ["DecoreHFLM"]


def _flag(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes")


@register_model("decore-hf")
class DecoreHFLM(HFLM):
    """lm-eval's ``HFLM`` whose next-token distribution is DeCoRe's contrast against ``heads`` masked."""

    def __init__(
        self, pretrained: Any, heads: Any = None, top_k: int | None = None, alpha: float = 1.0, dynamic: Any = False,
        normalise: Any = False, cap: float | None = None, mode: str = "uniform", threshold: float | None = None,
        random_seed: int | None = None, exclude: Any = None, layer_matched: Any = False, device: str | None = None,
        allow_other_model: Any = False, **kwargs: Any,
    ) -> None:
        name = pretrained if isinstance(pretrained, str) else None  # a score file of another model is refused
        if isinstance(pretrained, str):
            pretrained = resolve_model_path(pretrained)
        super().__init__(pretrained=pretrained, device=device, **kwargs)
        self.spec = ModelSpec.from_model(self.model)
        self.settings = DecoreSettings(alpha=float(alpha), dynamic=_flag(dynamic), normalise=_flag(normalise),
                                       cap=None if cap in (None, "", "none") else float(cap), mode=mode)  # type: ignore[arg-type]
        self.selection = HeadSelection.from_args(heads, top_k, threshold, random_seed, exclude, layer_matched,
                                                 allow_other_model)
        self.heads: list[Head] = self.selection.resolve(self.spec.n_layers, self.spec.n_heads, name)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, heads: Iterable[Head | tuple[int, int]] = (), **kwargs: Any) -> DecoreHFLM:
        """Wrap a loaded model and tokenizer; ``heads`` is an explicit head list."""
        return cls(pretrained=model, tokenizer=tokenizer, heads=list(heads), **kwargs)

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        base = super()._model_call(inps, attn_mask, labels)  # (B, T, V)
        with masked_heads(self.model, self.heads, mode=self.settings.mode, spec=self.spec):
            masked = super()._model_call(inps, attn_mask, labels)
        return contrast(base, masked, self.settings)[0]

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any) -> torch.Tensor:
        mask = generation_kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(context)
        new = max_length - context.shape[1]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = torch.full((context.shape[0], context.shape[1] + new), pad, dtype=context.dtype, device=context.device)
        out[:, : context.shape[1]] = context
        sample = bool(generation_kwargs.get("do_sample")) and float(generation_kwargs.get("temperature") or 0) > 0
        for row in range(context.shape[0]):
            ids = context[row][mask[row].bool()].tolist()
            res = decore_generate(
                self.model, self.tokenizer, [ids], self.heads, alpha=self.settings.alpha, dynamic=self.settings.dynamic,
                normalise=self.settings.normalise, cap=self.settings.cap, mode=self.settings.mode, sample=sample,
                temperature=float(generation_kwargs.get("temperature") or 1.0), max_new_tokens=new,
                stop_strings=stop or (), stop_on_newline=False,
            )[0]  # fmt: skip
            toks = res.tokens + ([self.tokenizer.eos_token_id] if res.stop_reason == "eos" else [])
            out[row, context.shape[1] : context.shape[1] + len(toks)] = torch.tensor(toks[:new], dtype=context.dtype)
        return out

    def get_model_info(self) -> dict[str, Any]:
        """lm-eval's model info plus the contrast settings (lands in the results' ``config``)."""
        info = super().get_model_info()
        info.update({"decore_heads": heads_to_strings(self.heads), "decore_alpha": self.settings.alpha,
                     "decore_dynamic": self.settings.dynamic, "mask_mode": self.settings.mode})
        return info
