"""What detection needs from a NIAH prompt.

Detection reads these attributes of a prompt (a
:class:`headatlas.niah.NiahPrompt`, or any object with the same
fields): ``input_ids``, ``answer_token_span`` (half-open range of the answer
tokens inside ``input_ids``), ``answer_token_ids``, ``context_length``,
``depth``, ``needle`` (``.id``, ``.answer``, ``.lang``) and ``meta["prompt_id"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


class PromptError(ValueError):
    """A prompt does not carry what detection needs (or its answer span does not match its tokens)."""


@dataclass(frozen=True)
class PromptItem:
    """One prompt, reduced to what the detectors use."""

    prompt_id: str
    input_ids: tuple[int, ...]
    span: tuple[int, int]  # half-open answer span, positions in input_ids
    answer: str  # the needle's answer text (ROUGE reference)
    lang: str
    needle_id: str
    length: int  # the grid's (requested) context length
    depth: float
    # transition kind only: the answer expected in the target language and how the source span is tokenized
    target_answer: str | None = None
    target_lang: str | None = None
    target_continuation: str | None = None  # the text the model should write (e.g. " " + target_answer)
    answer_token_char_offsets: tuple[tuple[int, int], ...] = ()
    # the answer tokens of the counterfactual prompt (target-language needle in place), when built
    counterfactual_answer_ids: tuple[int, ...] = ()
    # the needle's sentence (the qr scorer's gold document) and where the question starts (0: not known)
    needle_span: tuple[int, int] = (0, 0)
    query_start: int = 0

    @property
    def span_len(self) -> int:
        return self.span[1] - self.span[0]


def _as_list(ids: Any) -> list[int]:
    return [int(x) for x in (ids.flatten().tolist() if isinstance(ids, torch.Tensor) else ids)]


def prompt_item(prompt: Any, kind: str = "retrieval") -> PromptItem:
    """Validate a NiahPrompt-like object and reduce it to a :class:`PromptItem`.

    ``kind="transition"`` requires a cross-lingual needle (``target_answer`` in
    another language) and keeps what the transition score needs.
    """
    meta = getattr(prompt, "meta", None)
    meta = meta if isinstance(meta, dict) else {}
    pid = meta.get("prompt_id")
    if not pid:
        raise PromptError("prompt has no meta['prompt_id']: build prompts with headatlas.niah.build_prompt")
    ids = _as_list(prompt.input_ids)
    start, end = (int(x) for x in prompt.answer_token_span)
    if not 0 <= start < end <= len(ids):
        raise PromptError(f"prompt {pid}: answer_token_span {(start, end)} is empty or outside its {len(ids)} tokens")
    expected = getattr(prompt, "answer_token_ids", None)
    if expected is not None and _as_list(expected) != ids[start:end]:
        raise PromptError(
            f"prompt {pid}: answer_token_ids {_as_list(expected)} differ from input_ids[{start}:{end}] "
            f"{ids[start:end]}: the span must index input_ids"
        )
    needle = prompt.needle
    target_lang = getattr(needle, "target_lang", None)
    cross = target_lang is not None and target_lang != getattr(needle, "lang", target_lang)
    if kind == "transition":
        if not cross or not getattr(needle, "target_answer", None):
            raise PromptError(
                f"prompt {pid}: the transition score needs a cross-lingual needle (answer expected in another "
                f"language), got needle {getattr(needle, 'id', '')!r}; see niah.cross_lingual_needles"
            )
        offsets = meta.get("answer_token_char_offsets")
        if not offsets or len(offsets) != end - start:
            raise PromptError(f"prompt {pid}: meta['answer_token_char_offsets'] must give one range per answer token")
        continuation = meta.get("expected_continuation") or " " + str(needle.target_answer)
        extra = {
            "target_answer": str(needle.target_answer),
            "target_lang": str(target_lang),
            "target_continuation": str(continuation),
            "answer_token_char_offsets": tuple((int(a), int(b)) for a, b in offsets),
            "counterfactual_answer_ids": tuple(int(t) for t in meta.get("counterfactual_answer_token_ids") or ()),
        }
    elif cross:
        raise PromptError(
            f"prompt {pid}: needle {getattr(needle, 'id', '')!r} is cross-lingual ({needle.lang} -> {target_lang}); "
            "the retrieval score counts copies, so use same-language needles here and "
            "headatlas.multilingual for retrieval-transition heads"
        )
    else:
        extra = {}
    length = meta.get("requested_context_length")
    needle_span = tuple(int(x) for x in getattr(prompt, "needle_token_span", None) or (0, 0))
    query_start = meta.get("query_token_start") or (meta.get("context_token_span") or (0, 0))[1]
    return PromptItem(
        prompt_id=str(pid),
        input_ids=tuple(ids),
        span=(start, end),
        answer=str(needle.answer),
        lang=str(getattr(needle, "lang", "en") or "en"),
        needle_id=str(getattr(needle, "id", "")),
        length=int(length if length is not None else getattr(prompt, "context_length", len(ids))),
        depth=float(getattr(prompt, "depth", 0.0)),
        needle_span=(needle_span[0], needle_span[1]),
        query_start=int(query_start),
        **extra,
    )
