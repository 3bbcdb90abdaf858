"""Needle-in-a-haystack prompts with the needle and answer located in token space.

:func:`build_prompt` cuts a haystack to a context length (in tokens of the
given tokenizer), inserts a needle at a depth moved back to the nearest
sentence boundary found in the text, renders :data:`DEFAULT_TEMPLATE`
(optionally wrapped in the tokenizer's chat template), tokenizes once with
``return_offsets_mapping=True`` and maps the needle and answer character spans
to token spans through the offsets. No token id is ever hard-coded.

Layout of the context (character level)::

    [filler up to a sentence boundary] [needle] [rest of the filler]

and of the prompt: ``"{context}\\n\\nQuestion: {question}\\nAnswer:"``; the
model's expected continuation is ``" " + answer``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
import unicodedata
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from .haystack import CJK_LANGS, Haystack, encode, is_cjk_char, require_fast, sentence_boundaries
from .needles import Needle

#: The prompt layout used across the toolkit (and by the built-in organism model).
DEFAULT_TEMPLATE = "{context}\n\nQuestion: {question}\nAnswer:"


def length_tolerance(context_length: int) -> int:
    """How far the context's token count may be from the requested length: ``max(16, ceil(5 %))``.

    The filler ends at a sentence boundary within ``tolerance - 4`` tokens of
    its budget (else at the budget) and the needle's tokens may merge with
    their neighbours, so the count is usually at or a little below the request.

    Example:
        >>> length_tolerance(100), length_tolerance(1000), length_tolerance(32000)
        (16, 50, 1600)
    """
    return max(16, math.ceil(0.05 * context_length))


def prompt_id(needle: Needle, context_length: int, depth: float) -> str:
    """Stable id of a grid cell, used to resume sweeps.

    Example:
        >>> n = Needle("A b c.", "Q?", "b c", "en", "x")
        >>> prompt_id(n, 1000, 0.5)
        'x|L1000|D0.500'
    """
    return f"{needle.id}|L{context_length}|D{depth:.3f}"


@dataclass
class NiahPrompt:
    """A tokenized NIAH prompt and where its needle and answer sit.

    Attributes:
        input_ids: the prompt tokens (special tokens included).
        text: the prompt string that was tokenized.
        context_length: tokens of the haystack+needle part (measured).
        depth: the requested depth in [0, 1] (the actual one is
            ``meta["needle_depth"]``).
        needle: the needle inserted.
        needle_token_span: half-open token range of the needle sentence.
        answer_token_span: half-open token range covering the answer inside
            the inserted needle (every token overlapping its characters): the
            source span a retrieval head copies from.
        answer_token_ids: ``input_ids[answer_token_span[0]:answer_token_span[1]]``.
        meta: ``prompt_id``, requested length, character spans, template, etc.
    """

    input_ids: list[int]
    text: str
    context_length: int
    depth: float
    needle: Needle
    needle_token_span: tuple[int, int]
    answer_token_span: tuple[int, int]
    answer_token_ids: list[int]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def prompt_id(self) -> str:
        """The stable id of this prompt (see :func:`prompt_id`)."""
        return self.meta["prompt_id"]

    @property
    def expected_answer(self) -> str:
        """The answer the model should produce (``target_answer`` for cross-lingual needles)."""
        return self.needle.expected_answer


@dataclass(frozen=True)
class _Filler:
    """A haystack excerpt tokenized once; cut to any budget up to its length."""

    text: str
    ends: list[int]  # ends[k]: character end of the first k + 1 tokens
    bounds: list[int]  # sentence boundaries in text (increasing, starts with 0)

    @classmethod
    def build(cls, tokenizer: Any, haystack: Haystack, n_tokens: int) -> _Filler:
        text, offsets = haystack.tokenized_text(tokenizer, n_tokens)
        ends = list(accumulate((end for _, end in offsets), max))  # byte-level tokens of one character overlap
        return cls(text, ends, sentence_boundaries(text))

    def tokens_before(self, pos: int) -> int:
        """Number of tokens that end at or before character ``pos``."""
        return bisect_right(self.ends, pos)

    def cut(self, budget: int, slack: int) -> str:
        """``budget`` tokens of text, ending at a sentence boundary if one is within ``slack`` tokens."""
        if budget <= 0:
            return ""
        end = self.ends[budget - 1]
        boundary = self.bounds[bisect_right(self.bounds, end) - 1]
        if boundary > 0 and budget - self.tokens_before(boundary) <= slack:
            end = boundary
        return self.text[:end].rstrip()

    def insertion_point(self, cut: str, depth: float) -> int:
        """Character position for a needle at ``depth``, moved back to a sentence boundary of ``cut``.

        Depth 1 is the end of ``cut`` (just before the question), whether or
        not ``cut`` ends a sentence. A text without any sentence ender (code,
        word lists) falls back to the nearest preceding whitespace.
        """
        if depth >= 1.0:
            return len(cut)
        bounds = sentence_boundaries(cut)  # holds len(cut) iff cut ends with a sentence ender
        k = round(depth * self.tokens_before(len(cut)))
        target = min(self.ends[k - 1] if k > 0 else 0, len(cut))
        if len([b for b in bounds if 0 < b < len(cut)]) == 0 and target > 0:
            space = max(cut.rfind(c, 0, target) for c in " \n\t")
            return space + 1 if space >= 0 else 0
        return bounds[bisect_right(bounds, target) - 1]


def _separator(left: str | None, right: str | None) -> str:
    """A space between two texts unless either side is empty, whitespace or CJK."""
    if not left or not right or left.isspace() or right.isspace() or is_cjk_char(left) or is_cjk_char(right):
        return ""
    return " "


def _render(template: str, context: str, question: str) -> tuple[str, int]:
    """Render ``template``; return the text and the character offset of the context."""
    parts: list[str] = []
    ctx_start: int | None = None
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"malformed template {template!r}: {e}") from e
    for literal, name, spec, conv in fields:
        parts.append(literal)
        if name is None:
            continue
        if spec or conv:
            raise ValueError(f"template field {{{name}}} must not have a format spec or conversion")
        if name not in ("context", "question"):
            raise ValueError(f"unknown template field {{{name}}}: only {{context}} and {{question}} are allowed")
        if name == "context":
            if ctx_start is not None:
                raise ValueError("template must contain {context} exactly once")
            ctx_start = sum(len(p) for p in parts)
        parts.append(context if name == "context" else question)
    if ctx_start is None or not any(name == "question" for _, name, _, _ in fields):
        raise ValueError(f"template {template!r} must contain {{context}} and {{question}}")
    return "".join(parts), ctx_start


def _wrap_chat(tokenizer: Any, user: str, system_prompt: str | None) -> tuple[str, int]:
    """Apply the tokenizer's chat template; return the text and the user message's offset."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__!r} has no "
            "chat template; drop --chat-template (chat_template=False: the plain DEFAULT_TEMPLATE prompt) or "
            "set tokenizer.chat_template"
        )
    messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    messages.append({"role": "user", "content": user})
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    start = text.find(user)
    if start < 0:
        raise ValueError("the chat template altered the user message, so the needle cannot be located in it")
    return text, start


def token_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """Half-open range of the tokens overlapping characters ``[start, end)``."""
    hits = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
    if not hits:
        raise RuntimeError(f"no token overlaps characters [{start}, {end})")
    return hits[0], hits[-1] + 1


def relative_offsets(
    offsets: Sequence[tuple[int, int]], span: tuple[int, int], chars: tuple[int, int]
) -> list[tuple[int, int]]:
    """Each token of ``span``'s characters, clipped to ``chars`` and relative to its start (for word alignments)."""
    return [(max(a, chars[0]) - chars[0], min(b, chars[1]) - chars[0]) for a, b in offsets[span[0] : span[1]]]


def _check_args(tokenizer: Any, context_length: int, depth: float, max_model_length: int | None) -> None:
    require_fast(tokenizer)
    if context_length <= 0:
        raise ValueError(f"context_length must be positive, got {context_length}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if max_model_length is not None and context_length > max_model_length:
        raise ValueError(
            f"context length {context_length} exceeds the model's window of {max_model_length} tokens; "
            f"use lengths up to {max_model_length} (--lengths)"
        )


def _needle_tokens(tokenizer: Any, needle: Needle, context_length: int) -> int:
    n = len(tokenizer(needle.text, add_special_tokens=False, verbose=False)["input_ids"])
    if n >= context_length:
        raise ValueError(
            f"needle {needle.id!r} has {n} tokens and does not fit in a context of {context_length} tokens"
        )
    return n


def _build(
    tokenizer: Any, filler: _Filler, haystack: Haystack, needle: Needle, context_length: int, depth: float,
    n_needle: int, template: str, chat_template: bool, system_prompt: str | None, max_model_length: int | None,
) -> NiahPrompt:
    tol = length_tolerance(context_length)
    # 1. Cut the filler and insert the needle, all at the character level.
    cut = filler.cut(context_length - n_needle, slack=max(tol - 4, 0))
    pos = filler.insertion_point(cut, depth)
    left, right = cut[:pos], cut[pos:]
    pre = _separator(left[-1:], needle.text[0])
    post = _separator(needle.text[-1], right[:1])
    context = left + pre + needle.text + post + right
    needle_start = len(left) + len(pre)

    # 2. Render the template (and chat template); track the context's offset.
    text, ctx_start = _render(template, context, needle.question)
    if chat_template:
        text, user_start = _wrap_chat(tokenizer, text, system_prompt)
        ctx_start += user_start
    elif system_prompt is not None:
        raise ValueError("system_prompt needs chat_template=True")
    needle_char = (ctx_start + needle_start, ctx_start + needle_start + len(needle.text))
    answer_start = needle_char[0] + needle.answer_start
    answer_char = (answer_start, answer_start + len(needle.answer))
    context_char = (ctx_start, ctx_start + len(context))

    # 3. Tokenize once; map character spans to token spans through the offsets.
    # A chat-rendered string already holds its special tokens (BOS, headers).
    input_ids, offsets = encode(tokenizer, text, add_special_tokens=not chat_template)
    needle_span = token_span(offsets, *needle_char)
    answer_span = token_span(offsets, *answer_char)
    context_span = token_span(offsets, *context_char)
    n_context = context_span[1] - context_span[0]

    if abs(n_context - context_length) > tol:  # by construction; a failure here is a bug
        raise RuntimeError(f"context has {n_context} tokens, outside {context_length} +/- {tol}; please report this")
    if max_model_length is not None and len(input_ids) > max_model_length:
        raise ValueError(
            f"prompt has {len(input_ids)} tokens, more than the model's window "
            f"max_model_length={max_model_length}; use a smaller context_length"
        )
    n_filler = n_context - (needle_span[1] - needle_span[0])
    expected = needle.expected_answer
    return NiahPrompt(
        input_ids=input_ids,
        text=text,
        context_length=n_context,
        depth=depth,
        needle=needle,
        needle_token_span=needle_span,
        answer_token_span=answer_span,
        answer_token_ids=input_ids[answer_span[0] : answer_span[1]],
        meta={
            "prompt_id": prompt_id(needle, context_length, depth),
            "requested_context_length": context_length,
            "length_tolerance": tol,
            "needle_depth": (needle_span[0] - context_span[0]) / max(n_filler, 1),
            "needle_at_sentence_boundary": pos in sentence_boundaries(cut),
            "context_token_span": context_span,
            "context_char_span": context_char,
            "needle_char_span": needle_char,
            "answer_char_span": answer_char,
            # each answer-span token's characters, relative to the answer's start (for word alignments)
            "answer_token_char_offsets": relative_offsets(offsets, answer_span, answer_char),
            "chat_template": chat_template,
            "system_prompt": system_prompt,
            "template": template,
            "haystack_source": haystack.source,
            "haystack_lang": haystack.lang,
            "expected_answer": expected,
            "expected_lang": needle.expected_lang,
            "expected_continuation": expected if chat_template or text[-1:].isspace() else " " + expected,
        },
    )


def build_prompt(
    tokenizer: Any,
    haystack: Haystack,
    needle: Needle,
    context_length: int,
    depth: float,
    *,
    template: str = DEFAULT_TEMPLATE,
    chat_template: bool = False,
    system_prompt: str | None = None,
    max_model_length: int | None = None,
) -> NiahPrompt:
    """Build one NIAH prompt.

    Args:
        tokenizer: a fast Hugging Face tokenizer (offsets are required).
        haystack: the filler text (repeated cyclically if too short).
        needle: the needle to insert.
        context_length: tokens of the haystack+needle part; the result is
            within :func:`length_tolerance` of it.
        depth: 0 = start of the context, 1 = end (just before the question);
            in between, the needle goes to the last sentence boundary at or
            before that fraction of the filler tokens.
        template: the prompt layout, with ``{context}`` and ``{question}``.
        chat_template: wrap the rendered prompt as the user message of the
            tokenizer's chat template (with a generation prompt).
        system_prompt: optional system message (chat template only).
        max_model_length: the model's window (``model.config.max_position_embeddings``);
            a longer prompt raises.

    Raises:
        ValueError: needle does not fit in ``context_length``; prompt longer
            than ``max_model_length``; no chat template; bad template or depth.

    Example:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import PreTrainedTokenizerFast
        >>> from headatlas.niah import load_haystack, load_needles
        >>> needle = load_needles(lang="en")[0]
        >>> words = ["[UNK]", *dict.fromkeys(needle.text.replace(".", " .").split())]
        >>> raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
        >>> raw.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> tok = PreTrainedTokenizerFast(tokenizer_object=raw)
        >>> p = build_prompt(tok, load_haystack("en"), needle, context_length=500, depth=0.5)
        >>> tok.decode(p.answer_token_ids)
        'eat a sandwich and sit in Dolores Park on a sunny day'
        >>> abs(p.context_length - 500) <= length_tolerance(500)
        True
    """
    return build_grid(
        tokenizer, haystack, [needle], [context_length], [depth], template=template, chat_template=chat_template,
        system_prompt=system_prompt, max_model_length=max_model_length,
    )[0]


def build_grid(
    tokenizer: Any,
    haystack: Haystack,
    needles: Sequence[Needle] | Needle,
    lengths: Sequence[int],
    depths: Sequence[float],
    *,
    template: str = DEFAULT_TEMPLATE,
    chat_template: bool = False,
    system_prompt: str | None = None,
    max_model_length: int | None = None,
) -> list[NiahPrompt]:
    """All prompts of a needles x lengths x depths sweep, in that nesting order.

    The haystack is tokenized once for the longest length. Each prompt's
    ``meta["prompt_id"]`` (``"{needle.id}|L{length}|D{depth:.3f}"``) is stable
    across runs, so a sweep can skip the prompts it has already scored.
    The options are those of :func:`build_prompt`.

    Example:
        >>> from transformers import PreTrainedTokenizerFast
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from headatlas.niah import load_haystack, load_needles
        >>> raw = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
        >>> raw.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> tok = PreTrainedTokenizerFast(tokenizer_object=raw)
        >>> grid = build_grid(tok, load_haystack("en"), load_needles()[:2], [200, 400], [0.0, 1.0])
        >>> len(grid), grid[0].prompt_id
        (8, 'en/sandwich|L200|D0.000')
    """
    if isinstance(needles, Needle):
        needles = [needles]
    if not needles or not lengths or not depths:
        raise ValueError("build_grid needs at least one needle, one length and one depth")
    for length in lengths:
        for depth in depths:
            _check_args(tokenizer, length, depth, max_model_length)
    n_needles = {n.id: _needle_tokens(tokenizer, n, min(lengths)) for n in needles}
    filler = _Filler.build(tokenizer, haystack, max(lengths))
    opts = (template, chat_template, system_prompt, max_model_length)
    return [
        _build(tokenizer, filler, haystack, n, length, depth, n_needles[n.id], *opts)
        for n in needles
        for length in lengths
        for depth in depths
    ]


def _needle_char_span(prompt: NiahPrompt) -> tuple[int, int]:
    """Characters of the inserted needle in ``prompt.text`` (from meta, or from the answer's place in it)."""
    span = prompt.meta.get("needle_char_span")
    if span is not None:
        return int(span[0]), int(span[1])
    start = int(prompt.meta["answer_char_span"][0]) - prompt.needle.answer_start
    end = start + len(prompt.needle.text)
    if start < 0 or prompt.text[start:end] != prompt.needle.text:
        raise ValueError(f"prompt {prompt.prompt_id}: cannot locate its needle in the prompt text")
    return start, end


def add_counterfactual(tokenizer: Any, prompt: NiahPrompt, needle_text: str, answer: str) -> NiahPrompt:
    """``prompt`` with its counterfactual: the same text with ``needle_text`` in place of the needle.

    The counterfactual prompt (the first author's retrieval-transition rule,
    ``docs/multilingual.md``) keeps the haystack, the needle's place and the
    question; only the needle sentence is the target-language one, whose
    answer ``answer`` (a substring of ``needle_text``) is what the model is
    asked to write. Adds to ``meta``: ``counterfactual_input_ids``,
    ``counterfactual_answer_token_span`` and ``counterfactual_answer_token_ids``
    (the tokens :func:`headatlas.detect.transition.counterfactual_events`
    compares the emitted tokens with).
    """
    if answer not in needle_text:
        raise ValueError(f"prompt {prompt.prompt_id}: counterfactual answer {answer!r} is not in {needle_text!r}")
    start, end = _needle_char_span(prompt)
    text = prompt.text[:start] + needle_text + prompt.text[end:]
    answer_char = (start + needle_text.index(answer), start + needle_text.index(answer) + len(answer))
    # a chat-rendered text holds its special tokens
    ids, offsets = encode(tokenizer, text, add_special_tokens=not prompt.meta.get("chat_template", False))
    span = token_span(offsets, *answer_char)
    meta = {**prompt.meta, "counterfactual_needle": needle_text, "counterfactual_input_ids": ids,
            "counterfactual_answer_token_span": span, "counterfactual_answer_token_ids": ids[span[0] : span[1]]}
    return dataclasses.replace(prompt, meta=meta)


def builtin_counterfactual(tokenizer: Any, prompt: NiahPrompt) -> NiahPrompt:
    """:func:`add_counterfactual` for a built-in cross-lingual needle (``en/sandwich>de``): the ``de/sandwich`` needle."""
    from .needles import load_needles

    needle = prompt.needle
    key = needle.id.split(">", 1)[0].split("/", 1)[-1]
    if needle.target_lang is None:
        raise ValueError(f"prompt {prompt.prompt_id}: needle {needle.id!r} is not cross-lingual")
    target = {n.id.split("/", 1)[-1]: n for n in load_needles(lang=needle.target_lang)}.get(key)
    if target is None:
        raise ValueError(f"prompt {prompt.prompt_id}: no built-in {needle.target_lang} needle {key!r}")
    return add_counterfactual(tokenizer, prompt, target.text, target.answer)


def _numbers(text: str, sep: str, cast: type, usage: str) -> list:
    """``cast`` of each non-blank ``sep``-separated part of ``text``; else ValueError("cannot parse {usage}")."""
    try:
        return [cast(p) for p in text.split(sep) if p.strip()]
    except ValueError:
        raise ValueError(f"cannot parse {usage}") from None


def parse_lengths(spec: str | int | Sequence[int]) -> list[int]:
    """Context lengths from ``"start:stop:count"`` (linear, inclusive), a comma list, or ints.

    Values are rounded to ints; duplicates (from rounding) are dropped.

    Example:
        >>> parse_lengths("1000:8000:8")
        [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000]
        >>> parse_lengths("512, 1024"), parse_lengths(4096)
        ([512, 1024], [4096])
    """
    if isinstance(spec, int):
        values = [spec]
    elif isinstance(spec, str):
        usage = f"lengths {spec!r}: use 'start:stop:count' (e.g. '1000:8000:8') or '1000,2000'"
        if ":" in spec:
            parts = _numbers(spec, ":", int, usage) if spec.count(":") == 2 else []
            if len(parts) != 3 or parts[2] < 1:
                raise ValueError(f"cannot parse {usage}")
            start, stop, count = parts
            step = (stop - start) / (count - 1) if count > 1 else 0.0
            values = [int(math.floor(start + i * step + 0.5)) for i in range(count)]
        else:
            values = _numbers(spec, ",", int, usage)
    else:
        values = [int(v) for v in spec]
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"lengths must be positive integers, got {values}")
    return list(dict.fromkeys(values))


def parse_depths(spec: int | str | Sequence[float]) -> list[float]:
    """Depths in [0, 1]: a count of evenly spaced depths (ends included) or a comma list.

    Example:
        >>> parse_depths(5)
        [0.0, 0.25, 0.5, 0.75, 1.0]
        >>> parse_depths("0, 0.5, 1"), parse_depths("3")
        ([0.0, 0.5, 1.0], [0.0, 0.5, 1.0])
    """
    if isinstance(spec, str):
        s = spec.strip()
        try:
            spec = int(s)
        except ValueError:
            spec = _numbers(s, ",", float, f"depths {s!r}: use a count ('10') or a list ('0,0.5,1')")
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec < 2:
            raise ValueError(
                f"a depth count must be >= 2 (got {spec}); for one depth give it as a float, e.g. '0.5'"
            )
        values = [i / (spec - 1) for i in range(spec)]
    else:
        values = [float(v) for v in spec]  # type: ignore[union-attr]
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"depths are fractions in [0, 1], got {values}")
    return list(dict.fromkeys(round(v, 6) for v in values))


_CJK_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_MIXED_TOKEN = re.compile(rf"[{_CJK_RANGES}]|(?:(?![{_CJK_RANGES}])[^\W_])+")
_WORD_TOKEN = re.compile(r"[^\W_]+")


def _rouge_tokens(text: str, cjk: bool) -> list[str]:
    text = unicodedata.normalize("NFKC", text).casefold()
    return (_MIXED_TOKEN if cjk else _WORD_TOKEN).findall(text)


def rouge1_recall(prediction: str, reference: str, lang: str | None = None) -> float:
    """ROUGE-1 recall: the share of the reference's tokens found in the prediction.

    Text is NFKC-normalised and case-folded; punctuation is dropped. Tokens
    are words (runs of letters/digits), except that Chinese and Japanese
    characters are one token each when ``lang`` is ``"zh"``/``"ja"`` or
    ``None`` (auto: mixed text works). Overlap counts are clipped (a
    reference word twice needs two occurrences). An empty reference gives 0.

    Example:
        >>> rouge1_recall("Eat a sandwich!", "eat a sandwich in the park")
        0.5
        >>> rouge1_recall("吃三明治", "吃个三明治", lang="zh")
        0.8
    """
    cjk = lang is None or lang in CJK_LANGS
    ref = Counter(_rouge_tokens(reference, cjk))
    if not ref:
        return 0.0
    pred = Counter(_rouge_tokens(prediction, cjk))
    overlap = sum(min(c, pred[t]) for t, c in ref.items())
    return overlap / sum(ref.values())
