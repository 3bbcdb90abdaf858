"""A KV cache that keeps some KV heads whole and the others as an attention sink plus a recent window.

Per layer, :class:`HeadSplitLayer` stores the *full* KV heads ``(B, n_full, T, D)`` (every token) and the
*streaming* KV heads ``(B, n_stream, S, D)``, ``S <= sink + window`` (DuoAttention's streaming heads), with
the absolute position of each kept token. Evicted tokens leave memory at every update. During one forward
the streaming heads also see the new block's own keys (each query of a prefill block has its own window);
those are trimmed when the update returns, so the transient size is bounded by the prefill chunk
(``generate(..., prefill_chunk=)``).

The attention over the two groups is :mod:`headatlas.kvcache.attention`'s. Used without it, the cache
notices at the next update (the streaming view of the last forward was never read) and raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

ATTN_PREFIX = "rh_kvsplit_"  # the AttentionInterface names this package registers start with it
PENDING_KEY = "rh_kvsplit_layer"  # the kwargs entry through which the attention function finds its layer


@dataclass
class StreamBlock:
    """What the streaming heads attend to in the current forward (transient; released after attention)."""

    keys: torch.Tensor  # (B, n_stream, S', D)
    values: torch.Tensor  # (B, n_stream, S', D)
    positions: torch.Tensor  # (S',) absolute cache index of each key
    query_start: int  # absolute index of the block's first query


class HeadSplitLayer(CacheLayerMixin):
    """One layer's cache: full KV heads ``full`` whole, every other KV head as sink + recent window."""

    is_sliding = False
    is_croppable = False

    def __init__(self, n_kv_heads: int, full: Sequence[int], sink: int, window: int) -> None:
        super().__init__()
        if sink < 0 or window < 1:
            raise ValueError(f"sink must be >= 0 and window >= 1 (got sink={sink}, window={window})")
        full = sorted(set(int(h) for h in full))
        if any(not 0 <= h < n_kv_heads for h in full):
            raise ValueError(f"KV heads {full} do not all exist (the layer has {n_kv_heads})")
        self.n_kv_heads = n_kv_heads
        self.full = torch.tensor(full, dtype=torch.long)
        self.stream = torch.tensor([h for h in range(n_kv_heads) if h not in full], dtype=torch.long)
        self.sink, self.window = sink, window
        self.cumulative_length = 0
        self.stream_keys: torch.Tensor | None = None  # (B, n_stream, S, D), S <= sink + window
        self.stream_values: torch.Tensor | None = None
        self.stream_positions = torch.zeros(0, dtype=torch.long)  # (S,)
        self.pending: StreamBlock | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        b, _, _, d = key_states.shape
        empty = dict(dtype=key_states.dtype, device=self.device)
        self.keys = torch.zeros(b, len(self.full), 0, d, **empty)
        self.values = torch.zeros(b, len(self.full), 0, value_states.shape[-1], **empty)
        self.stream_keys = torch.zeros(b, len(self.stream), 0, d, **empty)
        self.stream_values = torch.zeros(b, len(self.stream), 0, value_states.shape[-1], **empty)
        self.stream_positions = torch.zeros(0, dtype=torch.long, device=self.device)
        self.full, self.stream = self.full.to(self.device), self.stream.to(self.device)
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store a block of ``L`` new tokens ``(B, n_kv, L, D)``; return the full heads' keys and values.

        The streaming heads' view for this forward is left in ``self.pending``
        and handed to the attention function through the model's attention
        kwargs (``kwargs["kwargs"]``, the dict the attention module passes on).
        """
        if self.pending is not None:
            raise RuntimeError(
                "HeadSplitCache was used without its attention: the streaming heads of the last forward were never "
                "read. Run the model inside headatlas.kvcache.compressed_attention(model) (or a press)."
            )
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, n_new = self.cumulative_length, key_states.shape[-2]
        self.cumulative_length += n_new
        if len(self.full) == self.n_kv_heads:  # nothing streams: exactly a DynamicLayer
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
        else:
            self.keys = torch.cat([self.keys, key_states.index_select(1, self.full)], dim=-2)
            self.values = torch.cat([self.values, value_states.index_select(1, self.full)], dim=-2)
            new_pos = torch.arange(start, start + n_new, device=self.device)
            keys = torch.cat([self.stream_keys, key_states.index_select(1, self.stream)], dim=-2)  # (B, n_s, S', D)
            values = torch.cat([self.stream_values, value_states.index_select(1, self.stream)], dim=-2)
            positions = torch.cat([self.stream_positions, new_pos])
            self.pending = StreamBlock(keys, values, positions, start)
            keep = (positions < self.sink) | (positions >= self.cumulative_length - self.window)
            self.stream_keys, self.stream_values = keys[:, :, keep].contiguous(), values[:, :, keep].contiguous()
            self.stream_positions = positions[keep]
        attention_kwargs = kwargs.get("kwargs")
        if isinstance(attention_kwargs, dict):
            attention_kwargs[PENDING_KEY] = self
        return self.keys, self.values

    def take_pending(self) -> StreamBlock | None:
        """The streaming view of the current forward, released from the layer (the caller drops it after use)."""
        block, self.pending = self.pending, None
        return block

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cumulative_length + query_length, 0

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.keys = self.values = self.stream_keys = self.stream_values = None
        self.stream_positions = torch.zeros(0, dtype=torch.long)
        self.pending = None
        self.is_initialized = False
        self.cumulative_length = 0

    def _map(self, fn) -> None:  # noqa: ANN001 - tensor -> tensor, applied to every stored tensor
        if self.is_initialized:
            for name in ("keys", "values", "stream_keys", "stream_values"):
                setattr(self, name, fn(getattr(self, name)))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices, ...])

    def stored_bytes(self) -> int:
        """Bytes held by this layer's key and value tensors (full and streaming heads)."""
        tensors = (self.keys, self.values, self.stream_keys, self.stream_values) if self.is_initialized else ()
        return sum(t.numel() * t.element_size() for t in tensors)


class HeadSplitCache(Cache):
    """The KV cache of a model whose KV heads ``full[layer]`` (a list per layer) are kept whole and the rest stream.

    Use it inside :func:`headatlas.kvcache.compressed_attention` (or a press), which routes the
    model's attention through the function that reads both groups::

        with compressed_attention(model):
            model.generate(ids, cache=HeadSplitCache(full, n_kv, sink=4, window=64))

    ``peak_bytes`` is the most bytes the cache tensors held after any update.
    """

    def __init__(self, full: Sequence[Sequence[int]], n_kv_heads: int, sink: int = 4, window: int = 64) -> None:
        layers = [HeadSplitLayer(n_kv_heads, heads, sink, window) for heads in full]
        super().__init__(layers=layers)
        self.sink, self.window = sink, window
        self.peak_bytes = 0

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attention_kwargs = kwargs.get("kwargs")
        if not isinstance(attention_kwargs, dict):
            raise RuntimeError(
                "this model's attention does not pass its kwargs to cache.update, so HeadSplitCache cannot hand the "
                "streaming heads to the attention function"
            )
        out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        self.peak_bytes = max(self.peak_bytes, self.stored_bytes())
        return out

    def stored_bytes(self) -> int:
        """Bytes held now by every layer's key and value tensors."""
        return sum(layer.stored_bytes() for layer in self.layers)


def expected_bytes(
    full: Sequence[Sequence[int]], n_kv_heads: int, seq_len: int, sink: int, window: int, head_dim: int,
    dtype_size: int, batch: int = 1,
) -> int:
    """Bytes a :class:`HeadSplitCache` holds after ``seq_len`` tokens:
    sum over layers of (full x seq + streaming x min(seq, sink + window)) x head_dim x 2 (K and V) x dtype size.

    >>> expected_bytes([[0], []], n_kv_heads=2, seq_len=100, sink=4, window=8, head_dim=16, dtype_size=4)
    17408
    """
    total = 0
    for heads in full:
        n_full = len(set(heads))
        total += (n_full * seq_len + (n_kv_heads - n_full) * min(seq_len, sink + window)) * head_dim * 2 * dtype_size
    return total * batch
