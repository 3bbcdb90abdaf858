"""Teacher mode: one forward over prompt + answer, scoring only the rows that predict the answer.

The answer span's own tokens (``input_ids[span]``, usually those of
``" " + answer``, so every fed token has a source position to copy from) are
appended to the prompt, and only the answer-predicting rows are recorded
(``rec.set_rows``): one forward plus ``|answer| x context`` scores per layer.

Event at answer row ``j``: the model's own argmax equals the answer token
``a_j`` AND the copy rule holds. A prompt counts when its token accuracy (the
share of rows where argmax == ``a_j``) is above the threshold. Unlike greedy
mode, teacher forcing never drifts after an early mistake; the two agree on
prompts the model answers correctly.

>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)).eval()
>>> out = teacher_batch(model, [[5, 6, 7, 5, 9], [8, 9, 4]], [(1, 3), (0, 1)])
>>> out.counts.shape, out.predictions.shape, out.correct.shape
(torch.Size([2, 2, 4]), torch.Size([2, 2]), torch.Size([2, 2]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from ..capture import capture_attention
from ..generation import cache_argument, left_pad
from ..model_spec import ModelSpec
from ..prefix import Prefix, prefix_cache, span_columns
from .events import EventScorer, copy_scorer


@dataclass
class TeacherOutput:
    """One batch: copy-event counts ``(B, L, H)``; argmax ``predictions`` and ``correct`` ``(B, R)``."""

    counts: torch.Tensor
    predictions: torch.Tensor
    correct: torch.Tensor  # (B, R) argmax == answer token, False on padding rows
    n_answer: torch.Tensor  # (B,) answer tokens of each prompt

    def token_accuracy(self) -> torch.Tensor:
        """Fraction of answer tokens the model's argmax reproduces, ``(B,)``."""
        return self.correct.sum(dim=1).float() / self.n_answer.float()


@torch.no_grad()
def teacher_batch(
    model: PreTrainedModel,
    seqs: Sequence[Sequence[int]],
    spans: Sequence[tuple[int, int]],
    dedup: bool = False,
    pad_id: int = 0,
    spec: ModelSpec | None = None,
    continuations: Sequence[Sequence[int]] | None = None,
    scorer: EventScorer | None = None,
    prefix: Prefix | None = None,
) -> TeacherOutput:
    """Teacher-force each prompt's answer span tokens after the prompt and count copy events.

    ``spans`` are half-open answer spans in each (unpadded) prompt; the
    continuation is ``seq[start:end]`` unless ``continuations`` gives other
    tokens (the target-language answer of a transition run). ``scorer``
    replaces the copy-event rule (see :func:`greedy_batch`). ``prefix``: a
    shared prefix of every prompt, computed once (:mod:`headatlas.prefix`):
    only the rest of each prompt and its answer run, with the same scores.
    """
    device = next(model.parameters()).device
    if continuations is None:  # the answer span's own tokens
        continuations = [seq[s:e] for seq, (s, e) in zip(seqs, spans, strict=True)]
    answers = [list(c) for c in continuations]
    full = [list(seq) + ans for seq, ans in zip(seqs, answers, strict=True)]
    n_prefix = len(prefix) if prefix is not None else 0
    if prefix is not None and any(tuple(s[:n_prefix]) != prefix.tokens or len(s) <= n_prefix for s in seqs):
        raise ValueError("every prompt must start with the prefix and extend past it")
    ids, mask, positions = (t.to(device) for t in left_pad(full, pad_id, n_prefix))
    bsz, width = ids.shape
    n_answer = torch.tensor([len(a) for a in answers], device=device)  # (B,)
    n_rows = int(n_answer.max())
    pad = width - torch.tensor([len(f) for f in full], device=device)

    # row j of prompt b predicts answer token j; it sits at width - n_answer[b] - 1 + j
    j = torch.arange(n_rows, device=device)[None, :]  # (1, R)
    valid = j < n_answer[:, None]  # (B, R)
    first_row = width - n_answer - 1  # (B,)
    rows = torch.where(valid, first_row[:, None] + j, width - 2)  # padding rows: any real row, masked later
    targets = torch.where(valid, ids.gather(1, (rows + 1).clamp(max=width - 1)), pad_id)  # (B, R)

    cache = {} if prefix is None else {cache_argument(model): prefix_cache(model, prefix, bsz)}
    with capture_attention(model, keys_per_row=1, rows="explicit", spec=spec) as rec:
        rec.set_rows(rows)
        # logits only for the last n_rows + 1 positions: they cover every answer-predicting row
        out = model(
            input_ids=ids[:, n_prefix:], attention_mask=mask, position_ids=positions[:, n_prefix:],
            use_cache=prefix is not None, logits_to_keep=n_rows + 1, **cache,
        )
    logit_rows = rows - (width - n_rows - 1)  # (B, R) index into the kept logits
    logits = out.logits.gather(1, logit_rows[:, :, None].expand(-1, -1, out.logits.shape[-1]))
    predictions = logits.argmax(-1)  # (B, R)
    correct = (predictions == targets) & valid
    top1 = rec.stacked().indices[0, ..., 0].permute(1, 3, 0, 2).to(device)  # (L, B, H, R) -> (B, R, L, H)
    span_start, span_end = span_columns(spans, n_prefix, pad)
    counts = (scorer or copy_scorer(dedup))(top1, targets, ids, span_start, span_end, correct)
    return TeacherOutput(counts=counts.cpu(), predictions=predictions.cpu(), correct=correct.cpu(), n_answer=n_answer.cpu())
