"""The retrieval-transition event rule (this project's definition; see docs/multilingual.md).

The needle is in a source language; the model answers in a target language.
At a scored step ``s`` of prompt ``b`` the model emits (greedy) or is fed
(teacher forcing) target-language token ``t``. Head ``(l, h)`` makes a
*transition event* iff its top-1 key position ``i``

1. lies in the needle's source answer span,
2. holds a source word whose target-language rendering contains ``t``
   (``aligned[b, s, i - span_start]``; alignments from a parallel lexicon), and
3. does not hold ``t`` itself (a copy is a retrieval event, not a transition).

Per-prompt score = events / |target answer tokens|; the head score is the
mean over prompts answered correctly in the target language.

Pivot-free variant (``alignment="span"``): every source-span position is
aligned with every token of the target answer (2 becomes "t is part of the
target answer"), so no lexicon is needed.

The first author's rule (``alignment="counterfactual"``, :func:`counterfactual_events`):
a second prompt holds the target-language needle at the same place; an
event is counted when ``i`` lies in the source answer span and ``t`` equals
the counterfactual prompt's token at the same position (offsets anchored at
the two answers' first tokens; no copy exclusion).

>>> import torch
>>> top1 = torch.tensor([[[[5, 2]], [[6, 5]]]])           # (B=1, S=2, L=1, H=2)
>>> targets = torch.tensor([[40, 41]])                    # target-language tokens emitted
>>> key_tokens = torch.tensor([[0, 1, 2, 3, 4, 30, 31, 9]])
>>> aligned = torch.ones(1, 2, 2, dtype=torch.bool)       # (B, S, span width)
>>> transition_events(top1, targets, key_tokens, torch.tensor([5]), torch.tensor([7]), aligned)
tensor([[[2, 1]]])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .events import counted_steps, row_lookup, span_hits


def _span_width(span_start: Tensor, span_end: Tensor, width: int, name: str) -> None:
    if int((span_end - span_start).max()) > width:
        raise ValueError(f"{name} is narrower than the widest source span")


def transition_events(
    top1: Tensor, targets: Tensor, key_tokens: Tensor, span_start: Tensor, span_end: Tensor, aligned: Tensor,
    valid: Tensor | None = None,
) -> Tensor:
    """Transition events per prompt and head ``(B, L, H)``.

    ``top1`` ``(B, S, L, H)`` absolute key positions; ``targets`` ``(B, S)``;
    ``key_tokens`` ``(B, T)``; ``span_start``/``span_end`` ``(B,)`` the source
    answer span; ``aligned`` ``(B, S, W)`` whether the token emitted at step
    ``s`` belongs to the target rendering of the source word at span offset
    ``w`` (``W`` >= the widest span); ``valid`` ``(B, S)`` the steps that count.
    """
    top1, start, in_span = span_hits(top1, span_start, span_end)
    bsz, steps = top1.shape[:2]
    if aligned.shape[:2] != (bsz, steps):
        raise ValueError(f"aligned must start with {(bsz, steps)}, got {tuple(aligned.shape)}")
    width = aligned.shape[2]
    _span_width(span_start, span_end, width, "aligned")
    offset = (top1 - start).reshape(bsz * steps, -1)  # (B*S, L*H) offsets into the span
    is_aligned = row_lookup(aligned.bool().reshape(bsz * steps, width), offset).view_as(top1)
    not_copy = row_lookup(key_tokens.long(), top1) != targets.to(top1.device).long()[:, :, None, None]
    return counted_steps(in_span & is_aligned & not_copy, valid).sum(dim=1)


# ---- alignment: which target tokens render which source position --------------------------------
def align_answer(
    source_answer: str,
    target_answer: str,
    lexicon_pairs: Sequence[tuple[str, str]] = (),
) -> list[tuple[tuple[int, int], str]]:
    """Aligned units of an answer: ``[((char_start, char_end) in source_answer, target phrase)]``.

    The needle's own (answer, target answer) is an aligned pair; lexicon pairs
    found in both answers refine it into word pairs (longest first, without
    overlaps). Source characters no pair covers are aligned to the whole
    target answer only when no lexicon pair matched at all.

    >>> align_answer("Paris and Kenya", "Paris und Kenia", [("Kenya", "Kenia"), ("Paris", "Paris")])
    [((0, 5), 'Paris'), ((10, 15), 'Kenia')]
    >>> align_answer("Nairobi", "内罗毕")
    [((0, 7), '内罗毕')]
    """
    units: list[tuple[tuple[int, int], str]] = []
    taken = [False] * len(source_answer)
    for src, tgt in sorted(lexicon_pairs, key=lambda p: -len(p[0])):
        if not src or tgt not in target_answer:
            continue
        pos = source_answer.find(src)
        while pos >= 0 and any(taken[pos : pos + len(src)]):
            pos = source_answer.find(src, pos + 1)
        if pos < 0:
            continue
        taken[pos : pos + len(src)] = [True] * len(src)
        units.append(((pos, pos + len(src)), tgt))
    if not units:
        units = [((0, len(source_answer)), target_answer)]
    return sorted(units)


def aligned_table(
    source_token_char_spans: Sequence[tuple[int, int]],
    units: Sequence[tuple[tuple[int, int], str]],
    target_unit_token_ids: Sequence[set[int]],
    step_tokens: Sequence[int],
    width: int | None = None,
) -> Tensor:
    """``(S, W)`` bool: step token ``s`` renders the source token at span offset ``w``.

    ``source_token_char_spans``: each source-span token's character range
    relative to the source answer; ``units`` from :func:`align_answer`;
    ``target_unit_token_ids[u]``: the token ids of unit ``u``'s target phrase
    (as tokenized in context, with and without a leading space);
    ``step_tokens``: the token emitted/fed at each scored step.
    """
    width = width or len(source_token_char_spans)
    table = torch.zeros(len(step_tokens), width, dtype=torch.bool)
    for w, (a, b) in enumerate(source_token_char_spans):
        # the target tokens of every unit whose characters the source token overlaps
        ids = set().union(*(target_unit_token_ids[u] for u, ((ua, ub), _) in enumerate(units) if a < ub and ua < b))
        table[:, w] = torch.tensor([tok in ids for tok in step_tokens], dtype=torch.bool)
    return table


# ---- the scorer plugged into detection ----------------------------------------------------------
def lexicon_pairs(source_lang: str, target_lang: str, path: str | None = None) -> list[tuple[str, str]]:
    """(source form, target form) pairs of a parallel lexicon: the built-in CLDR one or a JSONL file."""
    from ..lexicon import Lexicon, load_lexicon

    if path:
        lex = Lexicon.from_jsonl(path, langs=(source_lang, target_lang))
    else:
        try:
            lex = load_lexicon((source_lang, target_lang))
        except (KeyError, ValueError):  # a language CLDR does not know: the needle's own pair remains
            return []
    return [(e.forms[source_lang], e.forms[target_lang]) for e in lex]


def phrase_token_ids(tokenizer, phrase: str) -> set[int]:  # noqa: ANN001 - any HF tokenizer
    """Token ids of ``phrase`` as written after a space and on its own (both occur in answers)."""
    return {i for text in (" " + phrase, phrase) for i in tokenizer(text, add_special_tokens=False)["input_ids"]}


def make_transition_scorer(items, tokenizer, alignment: str = "lexicon", lexicon: str | None = None):  # noqa: ANN001
    """An event scorer for a batch of transition ``PromptItem`` s (see :data:`~headatlas.detect.events.EventScorer`).

    ``alignment="lexicon"`` refines each answer into word pairs found in the
    lexicon; ``"span"`` (pivot-free) aligns the whole source answer with the
    whole target answer; ``"counterfactual"`` is the first author's rule
    (:func:`make_counterfactual_scorer`).
    """
    if alignment == "counterfactual":
        return make_counterfactual_scorer(items)
    pairs: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (source, target language) -> lexicon pairs
    per_item = []
    for it in items:
        langs = (it.lang, it.target_lang)
        if alignment == "lexicon" and langs not in pairs:
            pairs[langs] = lexicon_pairs(*langs, lexicon)
        units = align_answer(it.answer, it.target_answer, pairs.get(langs, []))
        unit_ids = [phrase_token_ids(tokenizer, target) for _, target in units]
        per_item.append((it.answer_token_char_offsets, units, unit_ids))
    width = max(it.span_len for it in items)

    def scorer(top1, tokens, key_tokens, span_start, span_end, valid):  # noqa: ANN001 - EventScorer
        aligned = torch.stack([aligned_table(offsets, units, unit_ids, tokens[b].tolist(), width)
                               for b, (offsets, units, unit_ids) in enumerate(per_item)])  # (B, S, W)
        return transition_events(top1, tokens, key_tokens, span_start, span_end, aligned, valid)

    return scorer


# ---- the first author's rule: a counterfactual prompt with the target-language needle ------------
def counterfactual_events(
    top1: Tensor, targets: Tensor, span_start: Tensor, span_end: Tensor, counterfactual: Tensor,
    valid: Tensor | None = None,
) -> Tensor:
    """Counterfactual events per prompt and head ``(B, L, H)``.

    ``top1`` ``(B, S, L, H)`` absolute key positions; ``targets`` ``(B, S)``
    the emitted/fed tokens; ``span_start``/``span_end`` ``(B,)`` the source
    answer span (same coordinates as ``top1``); ``counterfactual`` ``(B, W)``
    the counterfactual prompt's token at source-span offset ``w``
    (:func:`counterfactual_tokens`; ``-1`` where it has none); ``valid``
    ``(B, S)`` the steps that count. Head ``(l, h)`` makes an event at step
    ``s`` iff ``span_start <= top1 < span_end`` and
    ``targets[b, s] == counterfactual[b, top1 - span_start]``.

    >>> top1 = torch.tensor([[[[5, 6]], [[6, 5]]]])           # (B=1, S=2, L=1, H=2)
    >>> targets = torch.tensor([[40, 41]])                    # emitted target-language tokens
    >>> cf = torch.tensor([[40, 41]])                         # counterfactual tokens at span offsets 0, 1
    >>> counterfactual_events(top1, targets, torch.tensor([5]), torch.tensor([7]), cf)
    tensor([[[2, 0]]])
    """
    top1, start, in_span = span_hits(top1, span_start, span_end)
    bsz = top1.shape[0]
    if counterfactual.ndim != 2 or counterfactual.shape[0] != bsz:
        raise ValueError(f"counterfactual must be (batch={bsz}, width), got {tuple(counterfactual.shape)}")
    _span_width(span_start, span_end, counterfactual.shape[1], "counterfactual")
    cf_at = row_lookup(counterfactual.long(), top1 - start)  # (B, S, L, H)
    hit = in_span & (cf_at == targets.to(top1.device).long()[:, :, None, None]) & (cf_at >= 0)
    return counted_steps(hit, valid).sum(dim=1)


def counterfactual_tokens(item, width: int) -> Tensor:  # noqa: ANN001 - a transition PromptItem
    """``(width,)``: the counterfactual prompt's answer tokens by source-span offset, ``-1`` past their end.

    The two prompts share the haystack and the needle's place, so source
    offset ``w`` (from the source answer's first token) corresponds to the
    counterfactual answer's token ``w``.
    """
    ids = list(item.counterfactual_answer_ids)
    if not ids:
        raise ValueError(
            f"prompt {item.prompt_id}: alignment 'counterfactual' needs the counterfactual prompt's answer tokens "
            "(meta['counterfactual_answer_token_ids']); build the prompts with niah.add_counterfactual or "
            "organism.prompts.organism_counterfactuals"
        )
    return torch.tensor((ids + [-1] * width)[:width], dtype=torch.long)


def make_counterfactual_scorer(items):  # noqa: ANN001, ANN201 - PromptItems -> EventScorer
    """The event scorer of the first author's rule for a batch of transition items (see :func:`counterfactual_events`)."""
    width = max(it.span_len for it in items)
    table = torch.stack([counterfactual_tokens(it, width) for it in items])  # (B, W)

    def scorer(top1, tokens, key_tokens, span_start, span_end, valid):  # noqa: ANN001, ARG001 - EventScorer
        return counterfactual_events(top1, tokens, span_start, span_end, table.to(top1.device), valid)

    return scorer
