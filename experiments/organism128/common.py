"""What the 128-head experiments share, on the package's public API: accuracy with heads masked, per-key splits."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from headatlas.heads import Head
from headatlas.masking import masked_heads
from headatlas.organism.tasks import generate_answers


def accuracy(model: Any, tokenizer: Any, examples: Sequence[Any], heads: Sequence[Head] = (),
             batch_size: int = 8) -> tuple[float, list[bool]]:
    """Exact-match accuracy with ``heads`` zeroed, and which examples were answered right."""
    with masked_heads(model, list(heads), mode="zero"):
        answers = generate_answers(model, tokenizer, examples, batch_size)
    ok = [a == ex.answer.strip() for a, ex in zip(answers, examples, strict=True)]
    return sum(ok) / len(ok), ok


def accuracy_by(examples: Sequence[Any], ok: Sequence[bool], key: Callable[[Any], Any]) -> dict[str, float]:
    """Accuracy per value of ``key(example)`` (e.g. the context length)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for ex, right in zip(examples, ok, strict=True):
        groups[str(key(ex))].append(right)
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(groups.items())}
