"""The head-split KV cache of a hybrid model: the model's own recurrent-state layers beside head-split softmax layers.

A hybrid model (Qwen3.5, Qwen3-Next, Granite-MoE-Hybrid, Jamba, LFM2) interleaves linear-attention, SSM or
convolution layers, whose cache is a fixed-size recurrent/conv state, with softmax-attention layers. Its
cache for kv-compress is a :class:`~headatlas.kvcache.cache.HeadSplitCache` whose softmax layers are
:class:`~headatlas.kvcache.cache.HeadSplitLayer` and whose other layers are the very layer classes
transformers' ``DynamicCache`` builds for the model (``LinearAttentionLayer``), so the model reads and writes
its recurrent state as it always does. Only the softmax layers are compressed; the recurrent state (constant
in the sequence length) is counted in ``stored_bytes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..model_spec import ModelSpec
from .cache import HeadSplitCache


def _state_bytes(layer: Any) -> int:
    """Bytes held by a recurrent-state layer's conv and recurrent state tensors."""
    total = 0
    for name in ("conv_states", "recurrent_states"):
        states = getattr(layer, name, None) or {}
        for t in (states.values() if isinstance(states, dict) else states):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def _recurrent_layer(config: Any, layer: int) -> Any:
    """The cache layer transformers' ``DynamicCache`` gives ``layer`` of ``config``, with ``stored_bytes``."""
    from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING, get_layer_types_and_kwargs

    types, kwargs = get_layer_types_and_kwargs(config)
    base = DYNAMIC_LAYER_TYPE_MAPPING[types[layer]]
    cls = type(f"Measured{base.__name__}", (base,), {"stored_bytes": _state_bytes})
    return cls(**kwargs[layer])


def make_split_cache(spec: ModelSpec, config: Any, full: Sequence[Sequence[int]], sink: int, window: int
                     ) -> HeadSplitCache:
    """A :class:`HeadSplitCache` keeping KV heads ``full[layer]`` whole, with the model's own recurrent-state
    layers where ``spec`` says a layer has no softmax heads (``kind == "linear"``)."""
    cache = HeadSplitCache(full, spec.n_kv_heads, sink, window)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for i, kind in enumerate(spec.layer_kinds):
        if kind == "linear":
            cache.layers[i] = _recurrent_layer(text_config, i)
    return cache
