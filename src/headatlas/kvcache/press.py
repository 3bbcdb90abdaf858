"""A press-shaped front end (kvpress's ``BasePress``: ``compress`` and ``with press(model):``).

kvpress 0.5.5 requires transformers < 5.3 (this toolkit needs >= 5.23), so it cannot host this press
today; :class:`RetrievalHeadsPress` keeps its shape so that a later kvpress can. ``compress`` lists the
streaming heads' evicted positions in ``module.masked_key_indices`` (kvpress's head-wise convention:
masking, not a smaller cache); ``with press(model): model.generate(...)`` routes attention through
:func:`compressed_attention` and gives every fresh forward a :class:`HeadSplitCache`, which really
stores less (``press.last_cache`` holds the last one).

>>> press = RetrievalHeadsPress(full=[[0], []], n_kv_heads=2, sink=1, window=2)
>>> import torch
>>> k = torch.zeros(1, 2, 5, 4)
>>> m = torch.nn.Module()
>>> _ = press.compress(m, None, k, k, None, {})
>>> sorted(m.masked_key_indices[2].tolist())  # layer-less module: the first layer's plan; KV head 1 streams
[1, 2]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel

from ..heads import Head
from ..model_spec import ModelSpec
from .attention import compressed_attention
from .cache import HeadSplitCache
from .plan import full_per_layer, kv_heads_of


@dataclass
class RetrievalHeadsPress:
    """Keep the KV heads ``full[layer]`` whole; every other KV head holds ``sink`` + the last ``window`` tokens."""

    full: list[list[int]]
    n_kv_heads: int
    sink: int = 4
    window: int = 64
    last_cache: HeadSplitCache | None = field(default=None, repr=False)

    @classmethod
    def from_heads(cls, heads: Iterable[Head], spec: ModelSpec, sink: int = 4, window: int = 64) -> RetrievalHeadsPress:
        """Keep the KV heads that hold any of ``heads`` (the ``any`` rule)."""
        kv = kv_heads_of(heads, spec.n_heads, spec.n_kv_heads)
        return cls(full_per_layer(kv, spec.n_layers), spec.n_kv_heads, sink, window)

    def make_cache(self) -> HeadSplitCache:
        """A fresh cache for one generation."""
        return HeadSplitCache(self.full, self.n_kv_heads, self.sink, self.window)

    def compress(
        self, module: torch.nn.Module, hidden_states: torch.Tensor | None, keys: torch.Tensor, values: torch.Tensor,
        attentions: torch.Tensor | None, kwargs: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """kvpress's hook: ``keys``/``values`` ``(B, n_kv, L, D)`` of one layer; the evicted ones go to ``masked_key_indices``."""
        bsz, n_kv, length, _ = keys.shape
        full = set(self.full[getattr(module, "layer_idx", 0)])
        pos = torch.arange(length)
        evicted = pos[(pos >= self.sink) & (pos < length - self.window)]  # (E,)
        stream = torch.tensor([h for h in range(n_kv) if h not in full], dtype=torch.long)
        b, h, s = torch.meshgrid(torch.arange(bsz), stream, evicted, indexing="ij")
        module.masked_key_indices = (b.flatten(), h.flatten(), s.flatten())
        return keys, values

    @contextmanager
    def __call__(self, model: PreTrainedModel) -> Iterator[RetrievalHeadsPress]:
        """Inside the block every forward that starts a cache (none given, or an empty ``DynamicCache``) gets a fresh
        :class:`HeadSplitCache`, and attention reads it; hooks are removed on exit."""

        def swap_cache(_module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
            name = "cache" if "cache" in kwargs or "past_key_values" not in kwargs else "past_key_values"
            cache = kwargs.get(name)
            fresh = cache is None or (type(cache) is DynamicCache and cache.get_seq_length() == 0)
            if fresh and kwargs.get("use_cache", model.config.use_cache):
                self.last_cache = self.make_cache()
                kwargs[name] = self.last_cache
            return args, kwargs

        with ExitStack() as stack:
            stack.enter_context(compressed_attention(model))
            handle = model.register_forward_pre_hook(swap_cache, with_kwargs=True)
            stack.callback(handle.remove)
            yield self
