"""Attention-mass scorers: ``qr`` (QRHead) and ``mass`` (HeadKV's R2 without the copy test).

Both read, for chosen query rows, the attention each head puts on chosen keys, computed by the capture
engine beside the top-1 keys in the same forward (:meth:`headatlas.capture.AttentionRecorder.set_keys`):
no attention map is materialised. :func:`attention_on_keys` is that forward; the definitions and the
deviations from the papers' code are in ``docs/atlas.md``.

>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)).eval()
>>> probs, _ = attention_on_keys(model, [[5, 6, 7, 8], [9, 10]], [[3], [1]], [[0, 1, 2], [0, 1, -1]])
>>> probs.shape                      # (B, L, H, R, K)
torch.Size([2, 2, 4, 1, 3])
>>> bool(torch.allclose(probs[1, ..., :2].sum(-1), torch.ones(2, 4, 1)))  # row 1 sees only keys 0-1
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel

from ..capture import capture_attention
from ..generation import left_pad
from ..model_spec import ModelSpec
from ..niah import rouge1_recall
from .inputs import PromptError, PromptItem
from .scorers import BatchContext, PromptScorer, values_dict


@torch.no_grad()
def attention_on_keys(
    model: PreTrainedModel,
    seqs: Sequence[Sequence[int]],
    rows: Sequence[Sequence[int]],
    keys: Sequence[Sequence[int]] | Sequence[Sequence[Sequence[int]]],
    pad_id: int = 0,
    spec: ModelSpec | None = None,
    logits_to_keep: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over ``seqs`` (left-padded batch): the attention of query ``rows`` on ``keys``.

    ``rows[b]``: positions of sequence ``b`` (unpadded) whose attention is read; ``keys[b]``: key positions
    (``-1``: none), either one list for every row of ``b`` or one list per row. Returns the probabilities
    ``(B, L, H, R, K)`` (zero on padding rows and ``-1`` keys) and the logits of the last ``logits_to_keep``
    positions.
    """
    device = next(model.parameters()).device
    ids, mask, positions = (t.to(device) for t in left_pad(seqs, pad_id))
    bsz, width = ids.shape
    pad = [width - len(s) for s in seqs]
    n_rows = max(len(r) for r in rows)
    per_row = [list(k) if k and isinstance(k[0], Sequence) else [list(k)] * len(r) for k, r in zip(keys, rows, strict=True)]
    n_keys = max((len(k) for kr in per_row for k in kr), default=0)
    row_t = torch.full((bsz, n_rows), width - 1, dtype=torch.long)
    key_t = torch.full((bsz, n_rows, max(n_keys, 1)), -1, dtype=torch.long)
    for b in range(bsz):
        for r, pos in enumerate(rows[b]):
            row_t[b, r] = pos + pad[b]
            ks = [k + pad[b] if k >= 0 else -1 for k in per_row[b][r]]
            key_t[b, r, : len(ks)] = torch.tensor(ks, dtype=torch.long)
    with capture_attention(model, keys_per_row=1, rows="explicit", spec=spec) as rec:
        rec.set_rows(row_t.to(device))
        rec.set_keys(key_t.to(device))
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                    logits_to_keep=logits_to_keep)
    probs = rec.stacked().key_probs[0].permute(1, 0, 2, 3, 4)  # (L, B, H, R, K) -> (B, L, H, R, K)
    valid = torch.zeros(bsz, n_rows, dtype=torch.bool, device=probs.device)
    for b in range(bsz):
        valid[b, : len(rows[b])] = True
    return probs * valid[:, None, None, :, None], out.logits


# ---- qr: QRHead -----------------------------------------------------------------------------------
def qr_document_score(query: torch.Tensor, null: torch.Tensor, n_doc: int) -> torch.Tensor:
    """QRHead's per-document score of each head from per-token attention ``(..., K)`` to the document.

    ``query``/``null``: attention to each document token, averaged over the query rows, with the real and
    the null query. Calibrated per-token scores are ``query - null``; tokens under ``mean - 2 std`` (per
    head, over the document's ``n_doc`` tokens) are dropped; the rest are summed.

    >>> qr_document_score(torch.tensor([[0.3, 0.2, 0.1]]), torch.tensor([[0.1, 0.1, 0.1]]), 3)
    tensor([0.3000])
    """
    calibrated = (query - null)[..., :n_doc]
    threshold = calibrated.mean(-1, keepdim=True) - 2 * calibrated.std(-1, keepdim=True)
    return calibrated.masked_fill(~(calibrated > threshold), 0.0).sum(-1)


class QrScorer(PromptScorer):
    """QRHead (Wu, Zhang et al., EMNLP 2025): query-focused retrieval heads.

    Per prompt: the attention of the query rows (question + answer lead-in) on each token of the gold
    document (the needle's sentence), averaged over query rows, minus the same with the null query
    (``--null-query``, "N/A") in place of question and lead-in; per head, calibrated tokens under mean - 2 sd
    dropped, the rest summed. Head score: the mean over prompts (every prompt counts, as in QRHead).
    """

    name = "qr"
    method = "qr-score"
    kind = "qr"

    def fingerprint(self) -> dict[str, Any]:
        return {"scorer": self.name, "null_query": self.config.null_query, "seed": self.config.seed}

    def items(self, prompts: Sequence[Any], tokenizer: Any, spec: ModelSpec) -> list[PromptItem]:
        items = super().items(prompts, tokenizer, spec)
        self._null = list(tokenizer(" " + self.config.null_query, add_special_tokens=False)["input_ids"])
        for it in items:
            if not (0 < it.query_start <= len(it.input_ids) - 1 and it.needle_span[1] > it.needle_span[0]):
                raise PromptError(f"prompt {it.prompt_id}: the qr scorer needs the needle's sentence and where the "
                                  "question starts (NiahPrompt.needle_token_span, meta['context_token_span'] or "
                                  "meta['query_token_start'])")
            if it.needle_span[1] > it.query_start:
                raise PromptError(f"prompt {it.prompt_id}: the needle must lie before the question")
        return items

    def score_batch(self, ctx: BatchContext, batch: Sequence[PromptItem]) -> list[dict[str, Any]]:
        null = getattr(self, "_null", None) or list(
            ctx.tokenizer(" " + self.config.null_query, add_special_tokens=False)["input_ids"])
        docs = [list(range(*it.needle_span)) for it in batch]
        real = [list(it.input_ids) for it in batch]
        nulls = [list(it.input_ids[: it.query_start]) + null for it in batch]
        q_rows = [list(range(it.query_start, len(s))) for it, s in zip(batch, real, strict=True)]
        n_rows = [list(range(it.query_start, len(s))) for it, s in zip(batch, nulls, strict=True)]
        q_probs, _ = attention_on_keys(ctx.model, real, q_rows, docs, ctx.pad_id, ctx.spec)
        n_probs, _ = attention_on_keys(ctx.model, nulls, n_rows, docs, ctx.pad_id, ctx.spec)
        records = []
        for b in range(len(batch)):
            q = q_probs[b, :, :, : len(q_rows[b])].mean(2)  # (L, H, K): averaged over the query rows
            n = n_probs[b, :, :, : len(n_rows[b])].mean(2)
            score = qr_document_score(q, n, len(docs[b]))
            records.append({"counted": True, "query_rows": len(q_rows[b]), "doc_tokens": len(docs[b]),
                            "values": values_dict(score)})
        return records


# ---- mass: HeadKV's R2 without the copy test --------------------------------------------------------------
class MassScorer(PromptScorer):
    """Attention mass on the needle's answer span while the answer is produced (teacher-forced).

    Per prompt: the answer span's own tokens follow the prompt (as ``--mode teacher``); for each row that
    predicts an answer token, the attention probability summed over the answer span; the mean over rows.
    A prompt counts when the argmax reproduces the answer (token accuracy > ``--rouge-threshold``), as in
    teacher mode. Head score: the mean over counted prompts. Null level: the mass a uniform head would put
    on the span (span / visible keys), averaged over the counted prompts.
    """

    name = "mass"
    method = "mass-score"
    kind = "mass"

    def fingerprint(self) -> dict[str, Any]:
        return {"scorer": self.name, "rouge_threshold": self.config.rouge_threshold, "seed": self.config.seed}

    def score_batch(self, ctx: BatchContext, batch: Sequence[PromptItem]) -> list[dict[str, Any]]:
        answers = [list(it.input_ids[it.span[0]: it.span[1]]) for it in batch]
        seqs = [list(it.input_ids) + a for it, a in zip(batch, answers, strict=True)]
        rows = [list(range(len(it.input_ids) - 1, len(it.input_ids) - 1 + len(a))) for it, a in zip(batch, answers, strict=True)]
        spans = [list(range(*it.span)) for it in batch]
        width = max(len(s) for s in seqs)
        n_logits = width - min(r[0] for r in rows)
        probs, logits = attention_on_keys(ctx.model, seqs, rows, spans, ctx.pad_id, ctx.spec, logits_to_keep=n_logits)
        records = []
        for b, it in enumerate(batch):
            n = len(answers[b])
            mass = probs[b, :, :, :n].sum(-1).mean(-1)  # (L, H): mass on the span, mean over answer rows
            first = n_logits - (len(seqs[b]) - rows[b][0])  # the logit row predicting answer token 0
            predicted = logits[b, first: first + n].argmax(-1).tolist()
            accuracy = sum(p == a for p, a in zip(predicted, answers[b], strict=True)) / n
            uniform = sum(it.span_len / (r + 1) for r in rows[b]) / n
            response = ctx.tokenizer.decode(predicted, skip_special_tokens=True).strip()
            records.append({"counted": accuracy > self.config.rouge_threshold, "token_accuracy": round(accuracy, 6),
                            "response": response, "rouge": round(rouge1_recall(response, it.answer, it.lang), 6),
                            "uniform_mass": round(uniform, 7),
                            "values": values_dict(mass)})
        return records

    def null_level(self, records: Sequence[dict[str, Any]]) -> float:
        counted = [r["uniform_mass"] for r in records if r["counted"]]
        return round(sum(counted) / len(counted), 7) if counted else 0.0
