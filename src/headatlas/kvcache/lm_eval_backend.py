"""``kv-hf``: lm-eval's Hugging Face backend reading and writing a compressed KV cache.

A subclass of lm-eval's ``HFLM`` whose every forward runs over a fresh :class:`HeadSplitCache`: the
KV heads chosen by ``kv_heads`` keep every token, every other KV head an attention sink plus a recent
window. Loglikelihoods are computed in chunked prefill (``prefill_chunk`` tokens per forward, so the
streaming heads never hold more than sink + window + one chunk); generations run ``model.generate`` with
that cache and transformers' own ``prefill_chunk_size``. Registered beside ``masked-hf`` and
``decore-hf`` whenever ``headatlas lm-eval`` runs::

    headatlas lm-eval run --model kv-hf \\
        --model_args pretrained=organism,heads=runs/rh/head_scores.json,kv_heads=retrieval,sink=4,window=256 ...

``model_args`` (and every ``hf`` argument):

- ``heads``, ``top_k``, ``threshold``: the head selection (as ``masked-hf``) whose KV heads
  ``kv_heads=retrieval`` keeps whole (the ``any`` rule, :func:`~headatlas.kvcache.kv_heads_of`);
- ``kv_heads``: ``retrieval``; ``random`` (as many KV heads as ``retrieval`` keeps, or ``budget``,
  drawn with ``seed`` outside the retrieval ones: equal memory); ``top`` (the ``budget`` best KV heads
  by their query heads' ``aggregate`` score); ``all`` (the full cache, through the same code); ``none``
  (every KV head streams); or a list ``"L.G;L.G"`` of KV heads;
- ``budget``, ``seed`` (0), ``aggregate`` (``max``), ``sink`` (4), ``window`` (256), ``prefill_chunk`` (512).

Rows of a batch share cache positions: with left padding (generation) a short row's sink lies in its
padding; ``batch_size=1`` gives every row its own sink.
"""

from __future__ import annotations

from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from ..model_spec import ModelSpec, resolve_model_path
from ..selection import HeadSelection
from .attention import compressed_attention
from .cache import HeadSplitCache
from .plan import AGGREGATES, KVHead, full_per_layer, kv_heads_of, random_kv_heads, top_kv_heads

__all__ = ["KVHFLM", "KV_CHOICES", "choose_kv_heads"]

KV_CHOICES = ("retrieval", "random", "top", "all", "none")


def choose_kv_heads(kv_heads: str, spec: ModelSpec, selection: HeadSelection | None, budget: int | None = None,
                    seed: int = 0, aggregate: str = "max") -> list[KVHead]:
    """The KV heads kept whole for a ``kv_heads`` choice (see the module docstring); one-line errors."""
    choice = str(kv_heads).strip().lower()
    every = [KVHead(layer, g) for layer in range(spec.n_layers) for g in range(spec.n_kv_heads)]
    if choice == "all":
        return every
    if choice == "none":
        return []
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate={aggregate!r}: choose one of {', '.join(AGGREGATES)}")
    if choice not in KV_CHOICES:
        try:
            listed = sorted({KVHead(*map(int, part.strip().split("."))) for part in choice.split(";") if part.strip()})
        except (TypeError, ValueError):
            raise ValueError(f"kv_heads={kv_heads!r}: choose one of {', '.join(KV_CHOICES)} or a list 'L.G;L.G'") from None
        bad = [str(k) for k in listed if k not in set(every)]
        if bad:
            raise ValueError(f"kv_heads={kv_heads!r}: {', '.join(bad)} not in the model's {spec.n_layers} layers x "
                             f"{spec.n_kv_heads} KV heads")
        return listed
    if choice == "top":
        if selection is None or selection.scores is None or budget is None:
            raise ValueError("kv_heads=top needs heads=<head_scores.json> and budget=N")
        from ..heads import HeadScores

        scores = selection.scores if isinstance(selection.scores, HeadScores) else HeadScores.load(selection.scores)
        return sorted(top_kv_heads(scores, spec.n_kv_heads, _budget(budget, len(every)), aggregate))  # type: ignore[arg-type]
    if selection is None:
        raise ValueError(f"kv_heads={choice} needs heads= (a head-score file or a head list)")
    retrieval = kv_heads_of(selection.resolve(spec.n_layers, spec.n_heads), spec.n_heads, spec.n_kv_heads)
    if choice == "retrieval":
        return retrieval
    n = len(retrieval) if budget is None else _budget(budget, len(every))
    return random_kv_heads(spec.n_layers, spec.n_kv_heads, n, seed, exclude=retrieval)


def _budget(budget: Any, total: int) -> int:
    n = int(budget)
    if not 0 <= n <= total:
        raise ValueError(f"budget={budget!r}: the model has {total} KV heads; give 0..{total}")
    return n


@register_model("kv-hf")
class KVHFLM(HFLM):
    """lm-eval's ``HFLM`` whose forwards read a :class:`HeadSplitCache` keeping the KV heads ``self.kv_heads`` whole.

    >>> lm = KVHFLM(pretrained="organism", heads="runs/rh/head_scores.json", kv_heads="retrieval")  # doctest: +SKIP
    >>> lm.kv_heads                                                                                  # doctest: +SKIP
    [KVHead(layer=3, kv_head=3)]
    """

    def __init__(self, pretrained: Any, heads: Any = None, top_k: int | None = None, threshold: float | None = None,
                 kv_heads: str = "retrieval", budget: int | None = None, seed: int = 0, aggregate: str = "max",
                 sink: int = 4, window: int = 256, prefill_chunk: int = 512, device: str | None = None,
                 **kwargs: Any) -> None:
        if int(sink) < 0 or int(window) < 1 or int(prefill_chunk) < 1:
            raise ValueError(f"sink={sink}, window={window}, prefill_chunk={prefill_chunk}: need sink >= 0, "
                             "window >= 1, prefill_chunk >= 1")
        if isinstance(pretrained, str):
            pretrained = resolve_model_path(pretrained)
        super().__init__(pretrained=pretrained, device=device, **kwargs)
        self.spec = ModelSpec.from_model(self.model)
        selection = None if heads is None and top_k is None else HeadSelection.from_args(heads, top_k, threshold)
        self.sink, self.window, self.prefill_chunk = int(sink), int(window), int(prefill_chunk)
        self.kv_choice = str(kv_heads)
        self.kv_heads = choose_kv_heads(kv_heads, self.spec, selection, None if budget in (None, "") else budget,
                                        int(seed), aggregate)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, **kwargs: Any) -> KVHFLM:
        """Wrap a loaded model and tokenizer; ``kwargs`` are the ``model_args`` above and ``HFLM``'s."""
        return cls(pretrained=model, tokenizer=tokenizer, **kwargs)

    def make_cache(self) -> HeadSplitCache:
        """A fresh cache for one forward pass or generation."""
        return HeadSplitCache(full_per_layer(self.kv_heads, self.spec.n_layers), self.spec.n_kv_heads, self.sink,
                              self.window)

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        if attn_mask is not None or labels is not None:
            raise NotImplementedError("kv-hf runs decoder-only models")
        cache, chunks = self.make_cache(), []
        with torch.no_grad(), compressed_attention(self.model):
            for start in range(0, inps.shape[1], self.prefill_chunk):
                part = inps[:, start : start + self.prefill_chunk]
                chunks.append(self.model(part, past_key_values=cache, use_cache=True).logits)
        return torch.cat(chunks, dim=1)

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any) -> torch.Tensor:
        generation_kwargs.setdefault("prefill_chunk_size", self.prefill_chunk)
        with compressed_attention(self.model):
            return super()._model_generate(context, max_length, stop, past_key_values=self.make_cache(),
                                           **generation_kwargs)

    def get_model_info(self) -> dict[str, Any]:
        """lm-eval's model info plus the kept KV heads and the window (lands in the results' ``config``)."""
        info = super().get_model_info()
        info.update({"kv_heads": self.kv_choice, "kv_heads_kept": [str(k) for k in self.kv_heads],
                     "kv_sink": self.sink, "kv_window": self.window})
        return info
