"""KV-cache compression by retrieval heads: keep the KV heads holding them whole, stream the rest.

- :class:`HeadSplitCache`: a transformers ``Cache`` storing full and
  streaming (sink + window) KV heads separately; real memory savings.
- :func:`compressed_attention`: routes a model's attention through the split
  attention that reads it (SDPA, eager ...; nests with ``masked_heads``).
- :class:`RetrievalHeadsPress`: the kvpress-shaped front end.
- :mod:`.plan`: which KV heads stay whole (``any`` rule, ``max``/``mean`` budget, random).

See docs/kv-compression.md.
"""

from ..lazy import exports, lazy_exports

_EXPORTS = exports({
    ".cache": "HeadSplitCache HeadSplitLayer expected_bytes",
    ".plan": "KVHead full_per_layer kv_heads_of kv_scores random_kv_heads top_kv_heads",
    ".press": "RetrievalHeadsPress",
    ".attention": "compressed_attention",
})

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
