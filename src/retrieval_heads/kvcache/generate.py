"""The one decoding loop of the KV-cache experiments: chunked prefill, then greedy steps over any cache.

Chunked prefill keeps the streaming heads' transient keys to one chunk (the
stored cache never exceeds ``sink + window`` for them); the prompt is read
with the compressed cache, so the question sees only what the cache kept.
When the toolkit's generation module lands, this loop moves there (it is a
plain greedy loop with an injected cache and stop set).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from ..generation import StopTokens, _cache_argument


@torch.no_grad()
def greedy_answer(
    model: PreTrainedModel,
    input_ids: Sequence[int],
    cache: Cache,
    max_new_tokens: int,
    stops: StopTokens,
    prefill_chunk: int = 256,
) -> list[int]:
    """Greedy tokens after ``input_ids`` (one prompt), stopping before EOS or a newline token once the answer began."""
    device = next(model.parameters()).device
    kw = {_cache_argument(model): cache, "use_cache": True}  # `cache` (transformers >= 5.24) or `past_key_values`
    ids = torch.tensor([list(input_ids)], device=device)  # (1, T)
    for start in range(0, ids.shape[1] - 1, prefill_chunk):
        model(ids[:, start : min(start + prefill_chunk, ids.shape[1] - 1)], **kw)
    token = ids[:, -1:]
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(token, **kw).logits[0, -1]  # (V,)
        nxt = int(logits.argmax())
        if stops.eos[nxt] or (stops.newline[nxt] and any(not stops.blank[t] for t in out)):
            break
        out.append(nxt)
        token = torch.tensor([[nxt]], device=device)
    return out
