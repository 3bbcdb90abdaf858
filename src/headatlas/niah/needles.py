"""Needles: a fact sentence hidden in a haystack and the question that retrieves it.

The answer is a span of the needle sentence: the text a retrieval head copies
from the context. Built-in needles (4 per language, ``needles/{lang}.jsonl``)
are parallel across languages: the same key (``"sandwich"``, ``"soup"``,
``"chest"``, ``"sunday"``) is the same fact, which
:func:`cross_lingual_needles` uses to pair a source-language needle with the
answer expected in a target language.

JSONL format (one object per line)::

    {"id": "en/sandwich", "text": "...", "question": "...", "answer": "...", "lang": "en"}

``text``, ``question`` and ``answer`` are required; ``id`` defaults to
``"{file stem}/{line number}"``, ``lang`` to the ``lang`` argument of
:func:`load_needles`; ``target_answer`` and ``target_lang`` are optional.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .haystack import BUILTIN_LANGS

_FIELDS = ("id", "text", "question", "answer", "lang", "target_answer", "target_lang")
_REQUIRED = ("text", "question", "answer")


@dataclass(frozen=True)
class Needle:
    """A needle sentence, its question and the answer span.

    Attributes:
        text: the sentence inserted into the haystack.
        question: the question asked after the context.
        answer: the expected answer; must be a substring of ``text`` (the span
            a retrieval head copies from).
        lang: language of ``text``.
        id: a stable identifier (used in prompt ids of resumable sweeps).
        target_answer: for cross-lingual prompts, the answer expected in
            ``target_lang`` (a translation of ``answer``); ``None`` otherwise.
        target_lang: the language of ``target_answer``.

    Example:
        >>> n = Needle(text="The code is blue fox.", question="What is the code?",
        ...            answer="blue fox", lang="en", id="demo")
        >>> n.answer_start, n.expected_answer
        (12, 'blue fox')
    """

    text: str
    question: str
    answer: str
    lang: str
    id: str
    target_answer: str | None = None
    target_lang: str | None = None

    def __post_init__(self) -> None:
        for name in ("text", "question", "answer", "lang", "id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"needle {self.id!r}: {name} must be a non-empty string, got {value!r}")
        if self.answer not in self.text:
            raise ValueError(
                f"needle {self.id!r}: answer {self.answer!r} is not a substring of its text {self.text!r}"
            )
        if (self.target_answer is None) != (self.target_lang is None):
            raise ValueError(f"needle {self.id!r}: give both target_answer and target_lang, or neither")
        if self.target_answer is not None and not self.target_answer.strip():
            raise ValueError(f"needle {self.id!r}: target_answer must not be empty")

    @property
    def answer_start(self) -> int:
        """Character offset of ``answer`` in ``text`` (its first occurrence)."""
        return self.text.index(self.answer)

    @property
    def expected_answer(self) -> str:
        """The answer the model should produce: ``target_answer`` if set, else ``answer``."""
        return self.target_answer if self.target_answer is not None else self.answer

    @property
    def expected_lang(self) -> str:
        """The language of :attr:`expected_answer`."""
        return self.target_lang if self.target_lang is not None else self.lang

    def to_dict(self) -> dict[str, Any]:
        """The needle as a JSON-ready dict (the JSONL line format), without ``None`` fields."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def _parse_line(line: str, where: str, default_id: str, lang: str) -> Needle:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e.msg})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {list(_FIELDS)}")
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise ValueError(f"{where}: missing required field(s) {missing}")
    fields = {"id": default_id, "lang": lang, **obj}
    try:
        return Needle(**fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from e


def _read_jsonl(text: str, name: str, stem: str, lang: str) -> list[Needle]:
    needles: list[Needle] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name}, line {lineno}"
        needle = _parse_line(line, where, f"{stem}/{lineno}", lang)
        if needle.id in seen:
            raise ValueError(f"{where}: duplicate needle id {needle.id!r} (first on line {seen[needle.id]})")
        seen[needle.id] = lineno
        needles.append(needle)
    if not needles:
        raise ValueError(f"{name}: no needles found")
    return needles


def load_needles(source: str | Path | None = None, lang: str = "en") -> list[Needle]:
    """Load needles.

    Args:
        source: ``None`` for the built-in needles of ``lang``; a built-in
            language code (same as ``source=None, lang=code``); or the path of
            a JSONL file (format in the module docstring and docs/niah.md).
        lang: the built-in language, or the default ``lang`` of JSONL lines
            that have none.

    Raises:
        ValueError: unknown language, missing file, or a bad line (the message
            names the file and line number).

    Example:
        >>> [n.id for n in load_needles(lang="ja")][:2]
        ['ja/sandwich', 'ja/soup']
    """
    if source is None or (isinstance(source, str) and source in BUILTIN_LANGS and not Path(source).exists()):
        code = lang if source is None else str(source)
        if code not in BUILTIN_LANGS:
            raise ValueError(
                f"no built-in needles for language {code!r}; built-in: {', '.join(BUILTIN_LANGS)}"
            )
        text = resources.files("headatlas.niah").joinpath("needles", f"{code}.jsonl").read_text("utf-8")
        return _read_jsonl(text, f"built-in needles/{code}.jsonl", code, code)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"needle file {str(path)!r} does not exist")
    return _read_jsonl(path.read_text(encoding="utf-8"), str(path), path.stem, lang)


def cross_lingual_needles(source_lang: str = "en", target_lang: str = "de") -> list[Needle]:
    """Built-in needles in ``source_lang`` whose answer is expected in ``target_lang``.

    The needle sentence (and so the span a head attends to) stays in the
    source language; the question is the target-language one, and
    ``target_answer`` is the target-language answer of the same fact. Ids are
    ``"{source id}>{target_lang}"``, e.g. ``"en/sandwich>de"``.

    Example:
        >>> n = cross_lingual_needles("en", "de")[0]
        >>> n.id, n.answer in n.text, n.target_lang
        ('en/sandwich>de', True, 'de')
    """
    target = {n.id.split("/", 1)[1]: n for n in load_needles(lang=target_lang)}
    out = []
    for n in load_needles(lang=source_lang):
        t = target[n.id.split("/", 1)[1]]
        out.append(replace(n, question=t.question, id=f"{n.id}>{target_lang}", target_answer=t.answer,
                           target_lang=target_lang))
    return out
