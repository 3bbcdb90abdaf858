"""Greedy mode: the model answers each prompt greedily; every emitted token is checked for copy events.

A batched greedy loop over the KV cache (left padding, explicit position ids)
runs inside :func:`retrieval_heads.capture_attention` with ``rows="last"``, so
each forward records, for every layer and head, the top-1 key position of the
row that predicts the next token — ``O(context)`` per step instead of the
reference's full attention maps and a Python loop with a host sync per head.

Stopping: a row stops at an EOS id (:func:`retrieval_heads.model_spec.eos_token_ids`)
or at the first token whose decoded text contains a newline once the answer
has started (a leading newline, as some chat models emit, does not end the
answer). The stop token itself is not scored; the text before its newline is
kept in the response. Newline tokens are found by decoding the whole
vocabulary, never from hard-coded ids.

>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)).eval()
>>> stops = StopTokens(eos=torch.zeros(64, dtype=torch.bool), newline=torch.zeros(64, dtype=torch.bool),
...                    blank=torch.zeros(64, dtype=torch.bool))
>>> out = greedy_batch(model, [[5, 6, 7, 5], [8, 9]], [(0, 2), (0, 1)], max_new_tokens=3, stops=stops)
>>> out.counts.shape, out.tokens.shape, out.n_scored.tolist()
(torch.Size([2, 2, 4]), torch.Size([2, 3]), [3, 3])
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from ..capture import capture_attention
from ..model_spec import ModelSpec, eos_token_ids
from .events import EventScorer, copy_events
from .inputs import left_pad


@dataclass
class StopTokens:
    """Vocabulary-sized masks: EOS ids, tokens whose text contains a newline, whitespace-only tokens."""

    eos: torch.Tensor  # (V,) bool
    newline: torch.Tensor  # (V,) bool
    blank: torch.Tensor  # (V,) bool

    @classmethod
    def from_tokenizer(
        cls, model: PreTrainedModel, tokenizer: Any, stop_on_newline: bool = True
    ) -> StopTokens:
        """Resolve the stop tokens of ``model``/``tokenizer`` by decoding every vocabulary entry once."""
        vocab = int(model.get_output_embeddings().weight.shape[0])
        n_tok = min(vocab, len(tokenizer))
        texts = tokenizer.batch_decode([[i] for i in range(n_tok)], skip_special_tokens=False)
        newline = torch.zeros(vocab, dtype=torch.bool)
        blank = torch.zeros(vocab, dtype=torch.bool)
        if stop_on_newline:
            newline[:n_tok] = torch.tensor(["\n" in t for t in texts], dtype=torch.bool)
        blank[:n_tok] = torch.tensor([not t.strip() for t in texts], dtype=torch.bool)
        eos = torch.zeros(vocab, dtype=torch.bool)
        for i in eos_token_ids(model, tokenizer):
            if 0 <= i < vocab:
                eos[i] = True
        return cls(eos=eos, newline=newline, blank=blank)

    def to(self, device: torch.device | str) -> StopTokens:
        return StopTokens(self.eos.to(device), self.newline.to(device), self.blank.to(device))


def _cache_argument(model: PreTrainedModel) -> str:
    """The forward keyword of the KV cache: ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(output: Any) -> Any:
    cache = output.get("cache")
    return cache if cache is not None else output.get("past_key_values")


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
) -> GreedyOutput:
    """Decode ``seqs`` greedily as one left-padded batch and count copy events per prompt and head.

    ``spans`` are the half-open answer spans, as positions in each unpadded
    sequence. Results do not depend on the batch composition (each row is
    masked from the others; finished rows keep decoding but are not scored).
    ``scorer`` replaces the copy-event rule (e.g. the retrieval-transition
    rule); it gets ``(top1, tokens, key_tokens, span_start, span_end, valid)``.
    """
    device = next(model.parameters()).device
    ids, mask, positions = (t.to(device) for t in left_pad(seqs, pad_id))
    bsz, width = ids.shape
    stops = stops.to(device)
    lengths = torch.tensor([len(s) for s in seqs], device=device)
    pad = width - lengths  # (B,) left padding of each row
    span_start = torch.tensor([s for s, _ in spans], device=device) + pad
    span_end = torch.tensor([e for _, e in spans], device=device) + pad

    emitted: list[torch.Tensor] = []
    n_scored = torch.full((bsz,), max_new_tokens, dtype=torch.long, device=device)
    reason = torch.zeros(bsz, dtype=torch.long, device=device)  # 0 max_new_tokens, 1 eos, 2 newline
    done = torch.zeros(bsz, dtype=torch.bool, device=device)
    started = torch.zeros(bsz, dtype=torch.bool, device=device)
    cache_arg = _cache_argument(model)
    with capture_attention(model, keys_per_row=1, rows="last", spec=spec) as rec:
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        for step in range(max_new_tokens):
            token = out.logits[:, -1].argmax(-1)  # (B,)
            emitted.append(token)
            is_eos = stops.eos[token]
            is_newline = stops.newline[token] & started
            stop_now = (is_eos | is_newline) & ~done
            n_scored = torch.where(stop_now, step, n_scored)
            reason = torch.where(stop_now, torch.where(is_eos, 1, 2), reason)
            done = done | stop_now
            started = started | ~stops.blank[token]
            if step == max_new_tokens - 1 or bool(done.all()):  # one host sync per step, not per head
                break
            mask = torch.cat([mask, mask.new_ones(bsz, 1)], dim=1)
            positions = positions[:, -1:] + 1
            out = model(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{cache_arg: _cache_of(out)},
            )
    captured = rec.stacked()  # indices (S, L, B, H, 1, 1): step s is the row that predicted emitted[s]
    top1 = captured.indices[..., 0, 0].permute(2, 0, 1, 3).to(device)  # (B, S, L, H)
    tokens = torch.stack(emitted, dim=1)  # (B, S)
    valid = torch.arange(tokens.shape[1], device=device)[None, :] < n_scored[:, None]
    if scorer is None:
        counts = copy_events(top1, tokens, ids, span_start, span_end, valid=valid, dedup=dedup)
    else:
        counts = scorer(top1, tokens, ids, span_start, span_end, valid)
    names = ("max_new_tokens", "eos", "newline")
    return GreedyOutput(
        counts=counts.cpu(),
        tokens=tokens.cpu(),
        n_scored=n_scored.clamp(max=tokens.shape[1]).cpu(),
        stop_reason=[names[int(r)] for r in reason.tolist()],
    )


def response_text(tokenizer: Any, tokens: Sequence[int], n_scored: int, stop_reason: str) -> str:
    """The decoded answer: the scored tokens, plus the text before the newline of a newline stop token."""
    text = tokenizer.decode(list(tokens[:n_scored]), skip_special_tokens=True)
    if stop_reason == "newline" and n_scored < len(tokens):
        text += tokenizer.decode([int(tokens[n_scored])], skip_special_tokens=True).split("\n", 1)[0]
    return text.strip()
