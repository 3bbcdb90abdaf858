"""The copy-paste event rule of the retrieval score, as pure tensor functions.

At a scored step ``s`` of prompt ``b`` the model emits (greedy) or is fed
(teacher forcing) token ``t = targets[b, s]``. For every layer ``l`` and query
head ``h``, ``i = top1[b, s, l, h]`` is the key position the head attends to
most on the query row that predicts ``t``. The head makes a *copy event* iff

    span_start[b] <= i < span_end[b]   and   key_tokens[b, i] == t   and   valid[b, s]

(``valid`` masks steps after the stop token, padding steps and, in teacher
mode, rows where the model's own argmax is not ``t``). A prompt's score for a
head is ``events / |answer span|``; with ``dedup`` each span position counts
at most once per head and prompt, so the score is then never above 1.

Everything is vectorised over ``(batch, steps, layers, heads)``: no Python loop
over heads and no host synchronisation.

>>> import torch
>>> top1 = torch.tensor([[[[5, 1]], [[5, 6]]]])          # (B=1, S=2, L=1, H=2)
>>> targets = torch.tensor([[7, 7]])                     # the token emitted at each step
>>> key_tokens = torch.tensor([[0, 3, 3, 3, 3, 7, 7, 3]])  # token at each key position
>>> counts = copy_events(top1, targets, key_tokens, torch.tensor([5]), torch.tensor([7]))
>>> counts                                               # (B, L, H): head 0 copied twice
tensor([[[2, 1]]])
>>> copy_events(top1, targets, key_tokens, torch.tensor([5]), torch.tensor([7]), dedup=True)
tensor([[[1, 1]]])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# (top1 (B,S,L,H), emitted tokens (B,S), key tokens (B,T), span_start (B,), span_end (B,), valid (B,S)) -> (B,L,H)
EventScorer = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


def span_hits(top1: Tensor, span_start: Tensor, span_end: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The prologue of every event rule: ``top1`` ``(B, S, L, H)`` as int64, ``start`` ``(B, 1, 1, 1)``, in-span mask."""
    if top1.ndim != 4:
        raise ValueError(f"top1 must be (batch, steps, layers, heads), got {tuple(top1.shape)}")
    top1 = top1.long()
    start = span_start.to(top1.device).long().view(-1, 1, 1, 1)
    end = span_end.to(top1.device).long().view(-1, 1, 1, 1)
    return top1, start, (top1 >= start) & (top1 < end)


def row_lookup(table: Tensor, index: Tensor) -> Tensor:
    """``table[b, index[b, ...]]`` for ``table`` ``(B, T)``; ``index`` is clamped into ``[0, T)`` to gather safely."""
    safe = index.clamp(0, max(table.shape[1] - 1, 0))
    return torch.gather(table.to(index.device), 1, safe.flatten(1)).view_as(index)


def counted_steps(hit: Tensor, valid: Tensor | None) -> Tensor:
    """``hit`` ``(B, S, L, H)`` at the steps that count (``valid`` ``(B, S)``; None: every step)."""
    return hit if valid is None else hit & valid.to(hit.device).bool()[:, :, None, None]


def copy_event_mask(
    top1: Tensor, targets: Tensor, key_tokens: Tensor, span_start: Tensor, span_end: Tensor, valid: Tensor | None = None
) -> Tensor:
    """Boolean ``(B, S, L, H)``: whether head ``(l, h)`` made a copy event at step ``s`` of prompt ``b``.

    ``top1`` ``(B, S, L, H)`` holds absolute key positions (the coordinates of
    ``key_tokens``, padding included); ``targets`` ``(B, S)`` the emitted
    tokens; ``key_tokens`` ``(B, T)`` the token at every key position the answer
    span can cover; ``span_start``/``span_end`` ``(B,)`` the half-open answer
    span in the same coordinates; ``valid`` ``(B, S)`` the steps that count.
    """
    top1, _, in_span = span_hits(top1, span_start, span_end)
    if targets.shape != top1.shape[:2]:
        raise ValueError(f"targets must be {tuple(top1.shape[:2])}, got {tuple(targets.shape)}")
    token_at = row_lookup(key_tokens.long(), top1)  # positions past the key tokens are never in the span
    return counted_steps(in_span & (token_at == targets.to(top1.device).long()[:, :, None, None]), valid)


def copy_events(
    top1: Tensor, targets: Tensor, key_tokens: Tensor, span_start: Tensor, span_end: Tensor,
    valid: Tensor | None = None, dedup: bool = False,
) -> Tensor:
    """Copy events per prompt and head, ``(B, L, H)`` int64 (arguments as in :func:`copy_event_mask`).

    ``dedup=False`` is the paper's rule: every event counts, so a head that
    attends to the same span position at several steps scores each time (a
    per-prompt score above 1 is possible). ``dedup=True`` counts each span
    position at most once per head and prompt.
    """
    hit = copy_event_mask(top1, targets, key_tokens, span_start, span_end, valid)  # (B, S, L, H)
    if not dedup:
        return hit.sum(dim=1)
    bsz, _, n_layers, n_heads = hit.shape
    start = span_start.to(hit.device).long()
    width = int((span_end.to(hit.device).long() - start).max().clamp(min=0))
    # offset of the attended position inside the span; misses go to a spare slot at index `width`
    offset = torch.where(hit, top1.long() - start.view(bsz, 1, 1, 1), width)  # (B, S, L, H)
    seen = torch.zeros(bsz, n_layers, n_heads, width + 1, dtype=torch.bool, device=hit.device)
    seen.scatter_(3, offset.permute(0, 2, 3, 1), True)  # (B, L, H, width + 1)
    return seen[..., :width].sum(dim=-1)


def copy_scorer(dedup: bool = False) -> EventScorer:
    """The copy-event rule as an :data:`EventScorer` (the default of both detection modes)."""
    return lambda top1, targets, keys, start, end, valid: copy_events(top1, targets, keys, start, end, valid, dedup)


def prompt_scores(counts: Tensor, span_lengths: Tensor) -> Tensor:
    """Per-prompt head scores ``(B, L, H)``: events divided by the answer span length of each prompt.

    >>> prompt_scores(torch.tensor([[[2, 1]]]), torch.tensor([4]))
    tensor([[[0.5000, 0.2500]]])
    """
    return counts.float() / span_lengths.to(counts.device).float().view(-1, 1, 1)


def mean_head_scores(per_prompt: Tensor, counted: Tensor) -> Tensor:
    """Head scores ``(L, H)``: the mean per-prompt score over the counted prompts (``counted`` ``(B,)`` bool).

    >>> mean_head_scores(torch.tensor([[[1.0]], [[0.0]], [[0.5]]]), torch.tensor([True, False, True]))
    tensor([[0.7500]])
    """
    counted = counted.to(per_prompt.device).bool()
    n = int(counted.sum())
    if n == 0:
        raise ValueError("no counted prompt: head scores are undefined")
    return per_prompt[counted].sum(dim=0) / n
