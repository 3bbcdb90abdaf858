"""Prefix sharing: the key/value states of the tokens a group of prompts starts with, computed once.

Every prompt built from one haystack shares the tokens before its needle. A
grid groups its prompts by their longest common token prefix
(:func:`prefix_groups`), runs that prefix once with batch 1
(:func:`compute_prefix`, outside any capture: none of its rows is scored) and
starts each batch of the group from a copy of it (:func:`prefix_cache`), so
that only each prompt's rest goes through the model.

Layout of a batch that continues a prefix of ``P`` tokens (see
:func:`headatlas.generation.left_pad` with ``n_prefix=P``): columns
``[0, P)`` hold the prefix, each row's remaining tokens are right-aligned and
the padding sits between; position ids skip the padding, so each row sees
exactly the keys (and RoPE positions) of its unpadded sequence. Token ``p`` of
row ``b`` sits at column ``p`` if ``p < P`` else ``p + shift[b]``
(:func:`columns`). With ``P = 0`` this is plain left padding.

Only models whose cache is a plain list of full-attention layers share
(:func:`can_share_prefix`); others (sliding windows, linear attention) run
unshared, with the same results.

>>> prefix_groups([[1, 2, 3, 4], [1, 2, 3, 9], [7, 8]], min_prefix=2)
[([0, 1], 3), ([2], 0)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache, DynamicLayer, StaticCache


@dataclass
class Prefix:
    """Key/value states ``(1, H_kv, P, D)`` per layer of ``tokens``, the start every prompt of a group shares."""

    tokens: tuple[int, ...]
    states: list[tuple[torch.Tensor, torch.Tensor]]

    def __len__(self) -> int:
        return len(self.tokens)


def can_share_prefix(model: PreTrainedModel) -> bool:
    """Whether ``model``'s KV cache is a list of plain full-attention layers (what a copied prefix needs)."""
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - an unknown cache structure: do not share
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists.

    >>> common_prefix_len([1, 2, 3], [1, 2, 4, 5])
    2
    """
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def prefix_groups(seqs: Sequence[Sequence[int]], min_prefix: int = 64) -> list[tuple[list[int], int]]:
    """Group prompts (indices into ``seqs``) that share a prefix worth computing once.

    In lexicographic order the common prefix of a run of sequences is the
    smallest common prefix of its neighbours, and a group of ``n`` prompts
    sharing ``P`` tokens saves ``(n - 1) * P`` tokens; the partition into runs
    that saves the most is found by dynamic programming. The shared length
    leaves at least one token of each prompt to run (its last row predicts the
    answer); groups sharing fewer than ``min_prefix`` tokens get ``P = 0``.
    Returns ``(indices, P)`` pairs.
    """
    order = sorted(range(len(seqs)), key=lambda i: tuple(seqs[i]))
    ordered = [seqs[i] for i in order]
    # adj[k]: tokens shareable by ordered[k] and ordered[k + 1]
    adj = [min(common_prefix_len(a, b), len(a) - 1, len(b) - 1) for a, b in zip(ordered, ordered[1:], strict=False)]
    best = [0] * (len(order) + 1)  # best[j]: most tokens saved over the first j sequences
    cut = list(range(len(order) + 1))  # cut[j]: where the last group of that best partition starts
    for j in range(len(order)):
        best[j + 1], cut[j + 1] = best[j], j
        shared = None
        for i in range(j - 1, -1, -1):
            shared = adj[i] if shared is None else min(shared, adj[i])
            if shared < min_prefix:
                break
            if best[i] + (j - i) * shared > best[j + 1]:
                best[j + 1], cut[j + 1] = best[i] + (j - i) * shared, i
    groups = []
    end = len(order)
    while end > 0:
        start = cut[end]
        shared = min(adj[start : end - 1]) if end - start > 1 else 0
        groups.append((sorted(order[start:end]), shared))
        end = start
    return groups[::-1]


@torch.no_grad()
def compute_prefix(model: PreTrainedModel, tokens: Sequence[int]) -> Prefix:
    """Run ``tokens`` once (batch 1, the model's own backend) and keep their key/value states.

    Call it outside :func:`headatlas.capture_attention`: the prefix's
    rows are never scored, and a captured forward would count as a step.
    """
    device = next(model.parameters()).device
    ids = torch.tensor([list(tokens)], dtype=torch.long, device=device)  # (1, P)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
    return Prefix(tuple(int(t) for t in tokens), [(layer.keys, layer.values) for layer in cache.layers])


#: Tokens: a shorter common prefix is not worth a forward of its own.
MIN_SHARED_PREFIX = 64


class PrefixKeeper:
    """The shared prefix of the batch group being run: computed when the group starts, reused by its batches.

    Batches come group by group (:func:`plan_batches`). The last group's states are freed before the next
    group's prefix is computed, so at most one prefix is held; pass :meth:`get`'s result straight on.
    """

    def __init__(self, model: PreTrainedModel):
        self.model, self.current = model, None

    def get(self, tokens: Sequence[int]) -> Prefix | None:
        """The prefix holding ``tokens`` (``None`` for no tokens)."""
        tokens = tuple(tokens)
        if not tokens:
            self.current = None
        elif self.current is None or self.current.tokens != tokens:
            self.current = None  # free the last group's states first
            self.current = compute_prefix(self.model, tokens)
        return self.current


def prefix_cache(model: PreTrainedModel, prefix: Prefix | None, batch: int, max_cache_len: int | None = None):
    """A fresh cache for ``batch`` rows holding ``prefix`` (``None``: empty).

    Dynamic by default; ``max_cache_len`` makes it a transformers
    ``StaticCache`` of that many slots (the compiled decode path). The shared
    prefix tensors are copied, never written to.
    """
    if max_cache_len is None:
        if prefix is None:
            return DynamicCache(config=model.config)
        data = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prefix.states]
        return DynamicCache(ddp_cache_data=data)
    cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
    if prefix is not None:
        for layer, (k, v) in zip(cache.layers, prefix.states, strict=True):
            layer.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
    return cache


def columns(positions: torch.Tensor, n_prefix: int, shift: torch.Tensor) -> torch.Tensor:
    """Columns of token positions ``(B, ...)`` in a batch laid out after an ``n_prefix``-token prefix.

    >>> columns(torch.tensor([[0, 3], [1, 2]]), 2, torch.tensor([0, 1])).tolist()
    [[0, 3], [1, 3]]
    """
    shift = shift.reshape(-1, *([1] * (positions.ndim - 1)))
    return torch.where(positions < n_prefix, positions, positions + shift)


def span_columns(spans: Sequence[tuple[int, int]], n_prefix: int, shift: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Half-open answer spans ``(B,)`` start and end as columns of a padded batch (see :func:`columns`).

    Padding columns inside a span (one straddling the prefix's end) are
    masked keys, never a head's top-1, so the copy rule is unchanged.
    """
    pos = torch.tensor([[s, e - 1] for s, e in spans], device=shift.device)  # (B, 2)
    cols = columns(pos, n_prefix, shift)
    return cols[:, 0], cols[:, 1] + 1


def plan_batches(seqs: Sequence[Sequence[int]], batch_size: int, min_prefix: int | None = 64
                 ) -> list[tuple[list[int], int]]:
    """Batches ``(indices, shared prefix length)`` of ``seqs``: each batch within one prefix group.

    ``min_prefix=None`` turns sharing off (every batch gets 0). Within a group
    prompts are sorted by length, so that a batch pads little.

    >>> plan_batches([[1, 2, 3], [1, 2, 4, 5], [9]], 2, min_prefix=2)
    [([0, 1], 2), ([2], 0)]
    >>> plan_batches([[1, 2, 3], [1, 2, 4, 5], [9]], 2, min_prefix=None)
    [([2, 0], 0), ([1], 0)]
    """
    groups = [(list(range(len(seqs))), 0)] if min_prefix is None else prefix_groups(seqs, min_prefix)
    batches = []
    for members, shared in groups:
        members = sorted(members, key=lambda i: len(seqs[i]))
        batches += [(members[k : k + batch_size], shared) for k in range(0, len(members), batch_size)]
    return batches
