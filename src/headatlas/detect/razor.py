"""Data-free scorers after RazorAttention: ``echo`` and ``induction`` heads on repeated random tokens.

One sequence: a block of ``n`` random token ids (special tokens excluded, seeded) repeated ``repeats``
times, as long as the model's window allows (``n = (window - 1) // repeats``; a BOS token first when the
tokenizer has one). One forward; every row in the 2nd..last repeat is read (in chunks: never an attention
map). For the row at position ``p`` with earlier copies of its token at ``p - n, p - 2n, ...``:

- echo: the attention on those earlier copies (summed);
- induction: the attention on the tokens right after them (``p - n + 1, ...``): the token that comes next.

A head's score is the mean over rows. Null level: the same mass under uniform attention (copies / visible
keys, averaged over rows). The definitions and deviations are in ``docs/atlas.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..model_spec import ModelSpec
from .inputs import PromptItem
from .mass import attention_on_keys
from .scorers import BatchContext, PromptScorer, values_dict


def repeated_tokens(vocab_size: int, n: int, repeats: int, seed: int, exclude: Sequence[int] = (),
                    bos: int | None = None) -> list[int]:
    """``n`` random ids (none in ``exclude``) repeated ``repeats`` times, after ``bos`` when given.

    >>> ids = repeated_tokens(50, 4, 3, seed=0, exclude=[0, 1], bos=1)
    >>> len(ids), ids[1:5] == ids[5:9] == ids[9:13], ids[0]
    (13, True, 1)
    """
    allowed = torch.tensor(sorted(set(range(vocab_size)) - set(exclude)))
    draw = torch.randint(0, len(allowed), (n,), generator=torch.Generator().manual_seed(seed))
    block = allowed[draw].tolist()
    return ([bos] if bos is not None else []) + block * repeats


def copy_keys(position: int, start: int, n: int, shift: int) -> list[int]:
    """Key positions of the earlier copies of ``position``'s token (``shift=0``) or of the tokens after them
    (``shift=1``), in a sequence whose repeated blocks of ``n`` start at ``start``.

    >>> copy_keys(10, 1, 3, 0), copy_keys(10, 1, 3, 1)
    ([7, 4, 1], [8, 5, 2])
    """
    k = (position - start) // n
    return [position - m * n + shift for m in range(1, k + 1)]


class EchoScorer(PromptScorer):
    """RazorAttention's echo heads: attention to the current token's earlier copies."""

    name = "echo"
    method = "echo-score"
    kind = "echo"
    shift = 0

    def fingerprint(self) -> dict[str, Any]:
        c = self.config
        return {"scorer": self.name, "repeats": c.repeats, "repeat_tokens": c.repeat_tokens, "seed": c.seed}

    def items(self, prompts: Sequence[Any], tokenizer: Any, spec: ModelSpec) -> list[PromptItem]:
        c = self.config
        bos = getattr(tokenizer, "bos_token_id", None)
        window = spec.max_positions or 2048
        n = c.repeat_tokens or (window - (bos is not None)) // c.repeats
        if n < 2 or n * c.repeats + (bos is not None) > window:
            raise ValueError(f"repeat_tokens {n} x repeats {c.repeats} does not fit the model's window of {window}")
        vocab = int(getattr(tokenizer, "vocab_size", 0) or len(tokenizer))
        ids = repeated_tokens(vocab, n, c.repeats, c.seed, getattr(tokenizer, "all_special_ids", ()), bos)
        start = int(bos is not None)
        return [PromptItem(prompt_id=f"random/{n}x{c.repeats}/seed{c.seed}", input_ids=tuple(ids),
                           span=(start, start + n), answer="", lang="", needle_id="random", length=len(ids), depth=0.0)]

    def score_batch(self, ctx: BatchContext, batch: Sequence[PromptItem]) -> list[dict[str, Any]]:
        records = []
        for it in batch:  # one forward per sequence
            start, n = it.span[0], it.span_len
            rows = list(range(start + n, len(it.input_ids)))
            keys = [copy_keys(p, start, n, self.shift) for p in rows]
            probs, _ = attention_on_keys(ctx.model, [list(it.input_ids)], [rows], [keys], ctx.pad_id, ctx.spec)
            score = probs[0].sum(-1).mean(-1)  # (L, H): mass on the copies, mean over rows
            uniform = sum(len(k) / (p + 1) for p, k in zip(rows, keys, strict=True)) / len(rows)
            records.append({"counted": True, "rows": len(rows), "uniform_mass": round(uniform, 7),
                            "values": values_dict(score)})
        return records

    def null_level(self, records: Sequence[dict[str, Any]]) -> float:
        return round(sum(r["uniform_mass"] for r in records) / max(len(records), 1), 7)


class InductionScorer(EchoScorer):
    """RazorAttention's induction heads: attention to the token after the current token's earlier copies."""

    name = "induction"
    method = "induction-score"
    kind = "induction"
    shift = 1
