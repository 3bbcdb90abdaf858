"""Attention over a :class:`HeadSplitCache`: full KV heads and streaming KV heads computed separately.

The function registered here (``rh_kvsplit_<backend>``) gets the full heads' keys from the cache and the
streaming heads' through the attention kwargs. It splits the query heads by the KV head they read (GQA),
calls the wrapped backend once per group — the streaming group with a mask letting query ``q`` see key
``k`` only if ``k <= q`` and (``k < sink`` or ``k > q - window``) — and puts the outputs back in head order.
The masking engine's wrapper sits outside it (either nesting order works); attention *capture* over
streaming heads is not supported and raises.

Memory: the streaming group never sees the whole context (its keys are at most sink + window + the
block, its mask ``(Lq, S')``); over SDPA on a CPU (or with no mask) both groups call
``scaled_dot_product_attention(..., enable_gqa=True)`` directly, so no group repeats its keys and values
per query head (transformers' SDPA path copies them ``n_heads / n_kv_heads`` times when a mask is given:
4x the kept heads' cache, per layer, at every prefill chunk). Measured in docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers.modeling_utils import PreTrainedModel

from ..attention import RECORDER_ATTR, WRAPPER_PREFIX, base_function, register_over, sink_logits, wrapper_name
from .cache import ATTN_PREFIX, PENDING_KEY, HeadSplitLayer, StreamBlock


def _query_heads(kv_heads: torch.Tensor, groups: int) -> torch.Tensor:
    """Query heads reading ``kv_heads`` (repeat_kv order)."""
    return (kv_heads[:, None] * groups + torch.arange(groups, device=kv_heads.device)).flatten()


def stream_mask(
    block: StreamBlock, q_len: int, sink: int, window: int, attention_mask: torch.Tensor | None, as_float: bool,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """The streaming heads' mask ``(B or 1, 1, Lq, S')`` for the block's keys; ``None`` when it equals the causal mask.

    Columns come from the model's own mask (padding, causality) at the kept
    positions, intersected with the sink/window rule.
    """
    kpos = block.positions  # (S',)
    last_query = block.query_start + q_len - 1
    if kpos.numel() == last_query + 1 and last_query - window < sink:  # nothing evicted, nothing out of window
        return attention_mask
    qpos = block.query_start + torch.arange(q_len, device=kpos.device)  # (Lq,)
    allowed = (kpos[None, :] <= qpos[:, None]) & ((kpos[None, :] < sink) | (kpos[None, :] > qpos[:, None] - window))
    if attention_mask is not None and attention_mask.ndim == 4:
        cols = attention_mask.index_select(-1, kpos.to(attention_mask.device))  # (B, 1, Lq, S')
        if cols.dtype == torch.bool:
            cols = cols & allowed
            return torch.where(cols, 0.0, torch.finfo(dtype).min).to(dtype) if as_float else cols
        return cols.masked_fill(~allowed, torch.finfo(cols.dtype).min)
    allowed = allowed[None, None]
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype) if as_float else allowed


class _SinkSubset(torch.nn.Module):
    """``module`` seen by a backend called on a subset of its query heads: its per-head attention sinks
    (GPT-OSS ``sinks``) are sliced to those heads; every other attribute is the module's."""

    def __init__(self, module: torch.nn.Module, sinks: torch.Tensor) -> None:
        super().__init__()
        object.__setattr__(self, "_inner", module)
        object.__setattr__(self, "sinks", sinks)

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_inner"), name)


def _for_heads(module: torch.nn.Module, kwargs: dict[str, Any], heads: torch.Tensor
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The module and kwargs to call the backend with for query ``heads`` only (sinks sliced; else unchanged)."""
    sinks = getattr(module, "sinks", None)
    if isinstance(kwargs.get("s_aux"), torch.Tensor):
        kwargs = {**kwargs, "s_aux": kwargs["s_aux"][heads.to(kwargs["s_aux"].device)]}
    if isinstance(sinks, torch.Tensor):
        return _SinkSubset(module, sinks[heads.to(sinks.device)]), kwargs
    return module, kwargs


def _sdpa_gqa(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None, **_: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA over grouped KV heads without copying them per query head; output ``(B, Lq, H, Dv)`` as transformers'."""
    q_len = query.shape[2]
    causal = attention_mask is None and q_len > 1 and bool(getattr(module, "is_causal", True))
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=causal,
        enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


def _grouped_sdpa_fits(base: str, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None,
                      module: torch.nn.Module, kwargs: dict[str, Any]) -> bool:
    """Whether :func:`_sdpa_gqa` replaces the backend: SDPA on a CPU (GQA with a mask copies nothing there),
    or with no mask anywhere; CUDA kernels with a mask would fall back to the math path, so they keep
    transformers' own call, and so does a maskless block over a longer past (``is_causal`` aligns top-left)
    and a module with attention sinks (plain SDPA has no sink column)."""
    if mask is None and query.shape[2] > 1 and key.shape[2] != query.shape[2]:
        return False
    if sink_logits(module, kwargs) is not None:
        return False
    return base == "sdpa" and (query.device.type == "cpu" or mask is None)


def _make_split_attention(base: str) -> Callable[..., Any]:
    def rh_kvsplit_attention(
        module: torch.nn.Module,
        query: torch.Tensor,  # (B, H, Lq, D)
        key: torch.Tensor,  # (B, n_full, Lk, D): the full KV heads only
        value: torch.Tensor,  # (B, n_full, Lk, D)
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        layer: HeadSplitLayer | None = kwargs.pop(PENDING_KEY, None)
        fn = base_function(base, module)
        if layer is None or len(layer.stream) == 0:  # no split cache, or nothing streams
            return fn(module, query, key, value, attention_mask, **kwargs)
        if getattr(module, RECORDER_ATTR, None) is not None:
            raise NotImplementedError("capturing attention over a cache with streaming KV heads is not supported")
        block = layer.take_pending()
        bsz, n_heads, q_len, _ = query.shape
        groups = n_heads // layer.n_kv_heads
        out = query.new_empty(bsz, q_len, n_heads, value.shape[-1])  # (B, Lq, H, Dv)
        if len(layer.full):
            q_full = _query_heads(layer.full, groups)
            sub, kw = _for_heads(module, kwargs, q_full)
            call = _sdpa_gqa if _grouped_sdpa_fits(base, query, key, attention_mask, sub, kw) else fn
            out[:, :, q_full] = call(sub, query[:, q_full], key, value, attention_mask, **kw)[0]
        q_stream = _query_heads(layer.stream, groups)
        as_float = base == "eager" or (attention_mask is not None and attention_mask.dtype != torch.bool)
        mask = stream_mask(block, q_len, layer.sink, layer.window, attention_mask, as_float, query.dtype)
        sub, kw = _for_heads(module, kwargs, q_stream)
        call = _sdpa_gqa if _grouped_sdpa_fits(base, query, block.keys, mask, sub, kw) else fn
        out[:, :, q_stream] = call(sub, query[:, q_stream], block.keys, block.values, mask, **kw)[0]
        return out, None

    rh_kvsplit_attention.__name__ = f"rh_kvsplit_attention_{base}"
    return rh_kvsplit_attention


def split_attention_name(base: str) -> str:
    """Register (once) and return the AttentionInterface name of the split attention over ``base``."""
    return register_over(ATTN_PREFIX, base, _make_split_attention)


@contextmanager
def compressed_attention(model: PreTrainedModel) -> Iterator[None]:
    """Route ``model``'s attention through the split attention for the duration; restored on exit.

    Outside a :class:`HeadSplitCache` the split attention is the wrapped
    backend unchanged. Nests with :func:`headatlas.masked_heads` in
    either order (the masking wrapper stays outermost).
    """
    previous = model.config._attn_implementation or "eager"
    if previous.removeprefix(WRAPPER_PREFIX).startswith(ATTN_PREFIX):  # already inside one
        yield
        return
    if previous.startswith(WRAPPER_PREFIX):  # the masking/capture engine is installed: stay inside it
        name = wrapper_name(split_attention_name(previous.removeprefix(WRAPPER_PREFIX)))
    else:
        name = split_attention_name(previous)
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
