"""Needles: validation, built-in sets for all languages, JSONL loading and its errors."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from headatlas.niah import BUILTIN_LANGS, Needle, cross_lingual_needles, load_needles


def _n(**kw) -> Needle:
    base = dict(
        text="The code is blue fox.", question="What is the code?", answer="blue fox", lang="en", id="x"
    )
    return Needle(**{**base, **kw})


def test_needle_valid_and_frozen() -> None:
    n = _n()
    assert n.answer_start == 12 and n.text[n.answer_start :].startswith("blue fox")
    assert n.expected_answer == "blue fox" and n.expected_lang == "en"
    with pytest.raises(FrozenInstanceError):
        n.answer = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"answer": "red cat"}, "not a substring"),
        ({"answer": ""}, "non-empty"),
        ({"question": " "}, "non-empty"),
        ({"id": ""}, "non-empty"),
        ({"target_answer": "blauer Fuchs"}, "both target_answer and target_lang"),
        ({"target_lang": "de"}, "both target_answer and target_lang"),
    ],
)
def test_needle_validation(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _n(**kw)


def test_cross_lingual_fields() -> None:
    n = _n(target_answer="blauer Fuchs", target_lang="de")
    assert n.expected_answer == "blauer Fuchs" and n.expected_lang == "de"
    assert n.to_dict()["target_lang"] == "de"


@pytest.mark.parametrize("lang", BUILTIN_LANGS)
def test_builtin_needles(lang: str) -> None:
    needles = load_needles(lang=lang)
    assert len(needles) >= 3
    assert len({n.id for n in needles}) == len(needles)
    for n in needles:
        assert n.lang == lang and n.id.startswith(f"{lang}/")
        assert n.answer in n.text
        assert len(n.answer) >= 10  # a span of several words, not a single token
        if lang in ("zh", "ja"):
            assert " " not in n.text and " " not in n.answer
        else:
            assert len(n.answer.split()) >= 4
    assert load_needles(lang) == needles  # a language code as source


def test_builtin_needles_are_parallel() -> None:
    keys = {lang: [n.id.split("/")[1] for n in load_needles(lang=lang)] for lang in BUILTIN_LANGS}
    assert all(k == keys["en"] for k in keys.values())


def test_cross_lingual_needles() -> None:
    pairs = cross_lingual_needles("en", "zh")
    zh = {n.id.split("/")[1]: n for n in load_needles(lang="zh")}
    for n in pairs:
        key = n.id.split("/")[1].split(">")[0]
        assert n.id.endswith(">zh") and n.lang == "en" and n.target_lang == "zh"
        assert n.answer in n.text and n.target_answer == zh[key].answer and n.question == zh[key].question


def test_unknown_builtin_language() -> None:
    with pytest.raises(ValueError, match="no built-in needles for language 'it'"):
        load_needles(lang="it")


def test_load_jsonl(tmp_path: Path) -> None:
    f = tmp_path / "mine.jsonl"
    rows = [
        {
            "id": "a",
            "text": "The key is under the red mat.",
            "question": "Where is the key?",
            "answer": "under the red mat",
            "lang": "en",
        },
        {"text": "Le code est vert.", "question": "Quel est le code ?", "answer": "vert"},
    ]
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", encoding="utf-8")
    needles = load_needles(f, lang="fr")
    assert [n.id for n in needles] == ["a", "mine/2"]
    assert needles[0].lang == "en" and needles[1].lang == "fr"
    # round trip through to_dict
    assert Needle(**needles[0].to_dict()) == needles[0]


@pytest.mark.parametrize(
    "bad,match",
    [
        ("{not json", "line 2: invalid JSON"),
        ('["a list"]', "line 2: expected a JSON object"),
        ('{"text": "A b.", "question": "Q?"}', r"line 2: missing required field\(s\) \['answer'\]"),
        ('{"text": "A b.", "question": "Q?", "answer": "zzz"}', "line 2: .*not a substring"),
        (
            '{"text": "A b.", "question": "Q?", "answer": "b", "colour": 1}',
            r"line 2: unknown field\(s\) \['colour'\]",
        ),
        ('{"id": "ok", "text": "A b.", "question": "Q?", "answer": "b"}', "line 2: duplicate needle id 'ok'"),
    ],
)
def test_bad_jsonl_line(tmp_path: Path, bad: str, match: str) -> None:
    f = tmp_path / "bad.jsonl"
    good = '{"id": "ok", "text": "A b c.", "question": "Q?", "answer": "b c"}'
    f.write_text(good + "\n" + bad + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        load_needles(f)


def test_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_needles(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no needles"):
        load_needles(tmp_path / "empty.jsonl")
