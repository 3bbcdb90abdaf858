"""The organism's task examples as NIAH prompts, so detection and evaluation run on them unchanged.

An organism :class:`~headatlas.organism.corpus.Example` carries the
character offsets of its needle and of the answer value inside it; this
module tokenizes the prompt once with offsets (exactly as the organism was
trained: BOS + prompt) and maps them to token spans, like
:func:`headatlas.niah.build_prompt` does for built-in haystacks.

>>> from headatlas.organism import load_organism
>>> model, tok = load_organism()                                        # doctest: +SKIP
>>> prompts = organism_prompts(tok, "mono", n=8, seed=0, langs=["en"])  # doctest: +SKIP
>>> prompts[0].needle.answer in prompts[0].text                         # doctest: +SKIP
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..niah.needles import Needle
from ..niah.prompts import NiahPrompt, add_counterfactual, relative_offsets, token_span
from .corpus import RELATIONS, Example, fact_sentence


def example_to_prompt(tokenizer: Any, example: Example, prompt_id: str) -> NiahPrompt:
    """One organism example as a :class:`NiahPrompt` (first needle = the one the answer is read from)."""
    if not example.needles:
        raise ValueError(f"{prompt_id}: a {example.task!r} example has no needle (parametric recall?)")
    span = example.needles[0]
    text = example.prompt
    cross = example.lang_question != example.lang_needle
    question = text.rsplit("Question:", 1)[-1].split("\n", 1)[0].strip() or "?"
    needle = Needle(text=text[span.start : span.end], question=question, answer=text[span.answer_start : span.answer_end],
                    lang=example.lang_needle, id=prompt_id.split("|", 1)[0],
                    target_answer=example.answer if cross else None, target_lang=example.lang_question if cross else None)
    enc = tokenizer(text, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    answer_chars = (span.answer_start, span.answer_end)
    answer_span = token_span(offsets, *answer_chars)
    question_char = text.rfind("Question:")
    query_start = token_span(offsets, question_char, question_char + 1)[0] if question_char >= 0 else 0
    meta = {"prompt_id": prompt_id, "requested_context_length": example.length, "task": example.task,
            "query_token_start": query_start,
            "answer_char_span": answer_chars,
            "answer_token_char_offsets": relative_offsets(offsets, answer_span, answer_chars),
            "expected_answer": example.answer, "expected_lang": example.lang_question,
            "expected_continuation": " " + example.answer,
            "n_needles": len(example.needles) + len(example.distractors)}
    return NiahPrompt(input_ids=ids, text=text, context_length=len(ids), depth=example.depth, needle=needle,
                      needle_token_span=token_span(offsets, span.start, span.end), answer_token_span=answer_span,
                      answer_token_ids=ids[answer_span[0] : answer_span[1]], meta=meta)


def organism_prompts(
    tokenizer: Any, task: str, n: int, seed: int = 0, lengths: Sequence[int] | None = None,
    langs: Sequence[str] | None = None, depths: Sequence[float] | None = None, generator: Any = None,
    n_distractors: int | None = None,
) -> list[NiahPrompt]:
    """``n`` held-out organism examples of ``task`` (``mono``, ``cross``, ``multihop``, ``multikey``) as prompts.

    ``langs`` restricts the languages (for ``cross``: the ordered pairs of them).
    Prompt ids are ``organism/{task}/{needle-lang}>{question-lang}/{i}|L{length}|D{depth}`` (``|N{needles}``
    added for ``multikey`` with ``n_distractors`` given).
    """
    from .tasks import DEFAULT_DEPTHS, DEFAULT_LENGTHS, make_eval_set

    examples = make_eval_set(
        task, n, seed, lengths=lengths or DEFAULT_LENGTHS, langs=langs, depths=depths or DEFAULT_DEPTHS,
        generator=generator, n_distractors=n_distractors,
    )
    out = []
    for i, ex in enumerate(examples):
        pid = f"organism/{task}/{ex.lang_needle}>{ex.lang_question}/s{seed}n{i}|L{ex.length}|D{ex.depth:.3f}"
        if n_distractors is not None:
            pid += f"|N{n_distractors + 1}"
        out.append(example_to_prompt(tokenizer, ex, pid))
    return out


def counterfactual_needle(needle_text: str, answer: str, target_answer: str, lang: str, target_lang: str) -> str:
    """The organism's needle sentence ``needle_text`` (in ``lang``) rewritten in ``target_lang``: same key, relation
    and fact, value ``target_answer``.

    >>> counterfactual_needle("The home country of Anna is Kenya.", "Kenya", "Kenia", "en", "de")
    'Das Heimatland von Anna ist Kenia.'
    """
    for relation in RELATIONS:
        template, _ = fact_sentence(lang, relation, "\x00", answer)
        pre, post = template.split("\x00")
        if needle_text.startswith(pre) and needle_text.endswith(post) and len(needle_text) > len(pre) + len(post):
            subject = needle_text[len(pre) : len(needle_text) - len(post)]
            if fact_sentence(lang, relation, subject, answer)[0] == needle_text:
                return fact_sentence(target_lang, relation, subject, target_answer)[0]
    raise ValueError(f"{needle_text!r} is no organism fact sentence in {lang!r} with value {answer!r}")


def organism_counterfactuals(tokenizer: Any, prompts: Sequence[NiahPrompt]) -> list[NiahPrompt]:
    """Cross-lingual organism prompts with their counterfactuals (the target-language needle in place,
    :func:`headatlas.niah.prompts.add_counterfactual`)."""
    out = []
    for p in prompts:
        n = p.needle
        if n.target_lang is None or n.target_answer is None:
            raise ValueError(f"prompt {p.prompt_id}: a counterfactual needs a cross-lingual needle")
        text = counterfactual_needle(n.text, n.answer, n.target_answer, n.lang, n.target_lang)
        out.append(add_counterfactual(tokenizer, p, text, n.target_answer))
    return out
