"""Greedy mode: the model answers each prompt greedily; every emitted token is checked for copy events.

The batched greedy decoding of :func:`headatlas.generation.generate` runs
inside :func:`headatlas.capture_attention` with ``rows="last"``: each step
records, per layer and head, the top-1 key of the row that predicts the next
token (``O(context)`` per step, no attention maps). This module only counts the
events of the decoded steps; the stop token itself is not scored.

>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)).eval()
>>> out = greedy_batch(model, [[5, 6, 7, 5], [8, 9]], [(0, 2), (0, 1)], max_new_tokens=3, stops=StopTokens.none(64))
>>> out.counts.shape, out.tokens.shape, out.n_scored.tolist()
(torch.Size([2, 2, 4]), torch.Size([2, 3]), [3, 3])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from ..capture import capture_attention
from ..generation import StopTokens, generate
from ..model_spec import ModelSpec
from ..prefix import Prefix, span_columns
from .events import EventScorer, copy_scorer


@dataclass
class GreedyOutput:
    """One batch: copy-event counts ``(B, L, H)``, emitted tokens ``(B, S)``, scored steps and stop reasons."""

    counts: torch.Tensor
    tokens: torch.Tensor
    n_scored: torch.Tensor  # (B,) tokens before the stop (the scored steps)
    stop_reason: list[str]  # "eos" | "newline" | "max_new_tokens"


@torch.no_grad()
def greedy_batch(
    model: PreTrainedModel,
    seqs: Sequence[Sequence[int]],
    spans: Sequence[tuple[int, int]],
    max_new_tokens: int,
    stops: StopTokens,
    dedup: bool = False,
    pad_id: int = 0,
    spec: ModelSpec | None = None,
    scorer: EventScorer | None = None,
    prefix: Prefix | None = None,
) -> GreedyOutput:
    """Decode ``seqs`` greedily as one left-padded batch and count copy events per prompt and head.

    ``spans`` are the half-open answer spans, as positions in each unpadded
    sequence. Results do not depend on the batch composition (each row is
    masked from the others; finished rows keep decoding but are not scored).
    ``scorer`` replaces the copy-event rule (e.g. the retrieval-transition
    rule); it gets ``(top1, tokens, key_tokens, span_start, span_end, valid)``.
    ``prefix``: a shared prefix of every sequence, computed once (see
    :mod:`headatlas.prefix`); the scores do not change.
    """
    with capture_attention(model, keys_per_row=1, rows="last", spec=spec) as rec:
        rec.buffered = True  # records leave the (possibly compiled) forward through flush(), once per step
        out = generate(model, seqs, max_new_tokens, stops, pad_id=pad_id, prefix=prefix, on_step=rec.flush)
    ids = out.ids  # (B, T) padded prompts
    device = ids.device
    pad = ids.shape[1] - torch.tensor([len(s) for s in seqs], device=device)  # (B,) padding of each row
    span_start, span_end = span_columns(spans, out.n_prefix, pad)
    captured = rec.stacked()  # indices (S, L, B, H, 1, 1): step s is the row that predicted tokens[:, s]
    top1 = captured.indices[..., 0, 0].permute(2, 0, 1, 3).to(device)  # (B, S, L, H)
    tokens = out.tokens.to(device)  # (B, S)
    n_scored = out.n_tokens.to(device)
    valid = torch.arange(tokens.shape[1], device=device)[None, :] < n_scored[:, None]
    counts = (scorer or copy_scorer(dedup))(top1, tokens, ids, span_start, span_end, valid)
    return GreedyOutput(counts=counts.cpu(), tokens=out.tokens, n_scored=out.n_tokens, stop_reason=out.stop_reason)
