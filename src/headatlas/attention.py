"""The one attention function through which the toolkit observes and steers heads.

It is registered with transformers' ``AttentionInterface`` (and, under the same
name, the mask function of the backend it wraps, via ``AttentionMaskInterface``
— without that the model would hand it ``attention_mask=None`` and causal
masking would be silently lost). For every call it

1. zeroes the queries of heads asked to attend *uniformly* (``mode="uniform"``
   masking; a zero query gives equal logits, so the head outputs the mean of
   its visible values),
2. calls the backend the model was using (SDPA, eager, flash ...) unchanged, so
   outputs are exactly the backend's own,
3. hands the query and key states to an attached recorder, which scores only
   the query rows it selected (memory O(rows x context), never O(context^2)).

Nothing happens unless a context manager (:func:`headatlas.capture_attention`,
:func:`headatlas.masked_heads`) has attached state to an attention module;
they install the wrapper for their duration and restore the model's backend.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel

WRAPPER_PREFIX = "headatlas_"
UNIFORM_ATTR = "_rh_uniform_heads"  # LongTensor of head indices, on the attention module
RECORDER_ATTR = "_rh_recorder"  # an AttentionObserver, on the attention module
_INSTALLED_ATTR = "_rh_engine_depth"
_BASE_ATTR = "_rh_engine_base"


class AttentionObserver(Protocol):
    """What the wrapper calls after each attention call of a module it is attached to."""

    def observe(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                attention_mask: torch.Tensor | None, kwargs: dict[str, Any]) -> None: ...


def base_function(base: str, module: torch.nn.Module) -> Callable[..., Any]:
    """The attention function the model would call for ``base``."""
    if base == "eager":
        modeling = sys.modules[type(module).__module__]
        fn = getattr(modeling, "eager_attention_forward", None)
        if fn is None:
            raise RuntimeError(f"{type(module).__name__} has no eager_attention_forward to wrap")
        return fn
    return ALL_ATTENTION_FUNCTIONS[base]


def _make_wrapper(base: str) -> Callable[..., Any]:
    def headatlas_attention(
        module: torch.nn.Module,
        query: torch.Tensor,  # (B, H, Lq, D)
        key: torch.Tensor,  # (B, H_kv, Lk, D)
        value: torch.Tensor,  # (B, H_kv, Lk, D)
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        uniform = getattr(module, UNIFORM_ATTR, None)
        if uniform is not None:
            query = query.index_fill(1, uniform.to(query.device), 0.0)
        out = base_function(base, module)(module, query, key, value, attention_mask, **kwargs)
        recorder = getattr(module, RECORDER_ATTR, None)
        if recorder is not None:
            recorder.observe(module, query, key, attention_mask, kwargs)
        return out

    headatlas_attention.__name__ = f"headatlas_attention_{base}"
    return headatlas_attention


def register_over(prefix: str, base: str, make: Callable[[str], Callable[..., Any]]) -> str:
    """Register (once) ``make(base)`` as attention ``prefix + base``, with ``base``'s mask function; return the name."""
    name = prefix + base
    if name not in ALL_ATTENTION_FUNCTIONS:
        if base not in ALL_MASK_ATTENTION_FUNCTIONS:
            raise ValueError(
                f"cannot wrap attention backend {base!r}: transformers has no mask function for it "
                f"(known: {sorted(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping)})"
            )
        AttentionInterface.register(name, make(base))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


def wrapper_name(base: str) -> str:
    """Register (once) and return the AttentionInterface name that wraps ``base``."""
    return register_over(WRAPPER_PREFIX, base, _make_wrapper)


def base_backend(model: PreTrainedModel) -> str:
    """The backend the model uses when the toolkit is not attached."""
    current = model.config._attn_implementation or "eager"
    return current.removeprefix(WRAPPER_PREFIX)


@contextmanager
def engine_installed(model: PreTrainedModel) -> Iterator[None]:
    """Route ``model``'s attention through the wrapper for the duration (re-entrant)."""
    depth = getattr(model, _INSTALLED_ATTR, 0)
    if depth == 0:
        base = base_backend(model)
        setattr(model, _BASE_ATTR, model.config._attn_implementation)
        model.set_attn_implementation(wrapper_name(base))
    setattr(model, _INSTALLED_ATTR, depth + 1)
    try:
        yield
    finally:
        depth = getattr(model, _INSTALLED_ATTR) - 1
        setattr(model, _INSTALLED_ATTR, depth)
        if depth == 0:
            model.set_attn_implementation(getattr(model, _BASE_ATTR))


# ---- scores of selected query rows, as the backend computes them --------------------------------
def selected_row_probs(
    module: torch.nn.Module,
    query_rows: torch.Tensor,  # (B, H, R, D): queries of the selected rows
    key: torch.Tensor,  # (B, H_kv, Lk, D)
    row_index: torch.Tensor,  # (B, R): row of each selection inside the current block of Lq rows
    q_len: int,
    attention_mask: torch.Tensor | None,
    kwargs: dict[str, Any],
) -> torch.Tensor:
    """Attention probabilities ``(B, H, R, Lk)`` of the selected rows, in float32.

    Applies the same scaling, soft-capping, causal/sliding-window and padding
    masks the backend applies. Keys are not repeated for GQA: queries are
    grouped per KV head instead.
    """
    bsz, n_heads, n_rows, dim = query_rows.shape
    n_kv, k_len = key.shape[1], key.shape[2]
    groups = n_heads // n_kv
    scaling = kwargs["scaling"] if kwargs.get("scaling") is not None else dim**-0.5
    q = query_rows.float().reshape(bsz, n_kv, groups * n_rows, dim)  # (B, H_kv, g*R, D)
    scores = torch.matmul(q, key.float().transpose(-1, -2)) * scaling  # (B, H_kv, g*R, Lk)
    scores = scores.reshape(bsz, n_heads, n_rows, k_len)
    softcap = kwargs.get("softcap")
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None and attention_mask.ndim == 4:
        # (B or 1, 1 or H, Lq, Lk') -> rows; the mask already holds causality, windows and padding
        mask = attention_mask[..., :k_len].expand(bsz, -1, -1, -1)
        rows = torch.gather(mask, 2, row_index[:, None, :, None].expand(-1, mask.shape[1], -1, mask.shape[-1]))
        if rows.dtype == torch.bool:
            scores = scores.masked_fill(~rows, float("-inf"))
        else:
            scores = scores + rows.float()
    else:
        # no 4D mask: the backend relies on causality (and a 2D padding mask for flash attention)
        q_pos = (k_len - q_len + row_index)[:, None, :, None]  # (B, 1, R, 1) absolute key index
        k_pos = torch.arange(k_len, device=key.device)[None, None, None, :]
        allowed = k_pos <= q_pos
        window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
        if window:
            allowed = allowed & (k_pos > q_pos - window)
        if attention_mask is not None and attention_mask.ndim == 2:
            allowed = allowed & attention_mask[:, None, None, -k_len:].bool()
        scores = scores.masked_fill(~allowed, float("-inf"))
    sinks = attention_sinks(module, kwargs)
    if sinks is not None:
        # a learned sink logit per head joins the softmax's denominator and takes no key (GPT-OSS)
        sink = sinks.float().reshape(1, n_heads, 1, 1).expand(bsz, -1, n_rows, 1)
        return torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :k_len]
    return torch.softmax(scores, dim=-1)


def attention_sinks(module: torch.nn.Module, kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The per-head attention-sink logits ``(H,)`` a model adds to the softmax denominator, or None.

    GPT-OSS keeps them as the module's ``sinks`` parameter and hands them to its attention function as
    ``s_aux``; with them, the probabilities of the real keys sum to less than 1 (the rest goes to the sink).
    """
    sinks = kwargs.get("s_aux")
    if sinks is None:
        sinks = getattr(module, "sinks", None)
    return sinks if isinstance(sinks, torch.Tensor) else None
