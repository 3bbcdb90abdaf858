"""Prompt construction: exact spans, sentence-boundary insertion, depth order, lengths, errors, ROUGE."""

from __future__ import annotations

import re

import pytest

from headatlas.niah import (
    BUILTIN_LANGS,
    DEFAULT_TEMPLATE,
    Haystack,
    Needle,
    NiahPrompt,
    build_grid,
    build_prompt,
    cross_lingual_needles,
    length_tolerance,
    load_haystack,
    load_needles,
    parse_depths,
    parse_lengths,
    rouge1_recall,
)

TOKENIZERS = ["bytelevel", "chat", "metaspace", "word", "char"]
ENDS_SENTENCE = re.compile(r"(?:[.!?…][\"'”’»)\]]*\s+|[。！？][」』”’）]*\s*)$")


def _offsets(tok, p: NiahPrompt) -> list[tuple[int, int]]:
    enc = tok(p.text, add_special_tokens=not p.meta["chat_template"], return_offsets_mapping=True)
    assert list(enc["input_ids"]) == p.input_ids
    return [tuple(o) for o in enc["offset_mapping"]]


def _overlaps(o: tuple[int, int], span: tuple[int, int]) -> bool:
    return o[1] > o[0] and o[0] < span[1] and o[1] > span[0]


def check_spans(tok, p: NiahPrompt) -> None:
    """The answer span covers exactly the tokens overlapping the answer's characters."""
    offs = _offsets(tok, p)
    ac = p.meta["answer_char_span"]
    nc = p.meta["needle_char_span"]
    assert p.text[ac[0] : ac[1]] == p.needle.answer
    assert p.text[nc[0] : nc[1]] == p.needle.text
    a0, a1 = p.answer_token_span
    n0, n1 = p.needle_token_span
    assert n0 <= a0 < a1 <= n1
    # every token inside overlaps the answer (a zero-width token, e.g. a lone space
    # under trimmed offsets, may sit between two that do)
    assert _overlaps(offs[a0], ac) and _overlaps(offs[a1 - 1], ac)
    assert all(_overlaps(offs[i], ac) or ac[0] <= offs[i][0] == offs[i][1] <= ac[1] for i in range(a0, a1))
    assert a0 == 0 or not _overlaps(offs[a0 - 1], ac)
    assert a1 == len(offs) or not _overlaps(offs[a1], ac)
    assert p.answer_token_ids == p.input_ids[a0:a1]
    assert p.needle.answer in p.text[offs[a0][0] : offs[a1 - 1][1]]
    c0, c1 = p.meta["context_token_span"]
    assert c0 <= n0 and n1 <= c1 and p.context_length == c1 - c0


def check_boundary(p: NiahPrompt) -> None:
    """The needle starts the context or follows a sentence ender (+ whitespace for Latin scripts)."""
    ctx0 = p.meta["context_char_span"][0]
    start = p.meta["needle_char_span"][0]
    before = p.text[ctx0:start]
    assert before == "" or ENDS_SENTENCE.search(before), repr(before[-30:])


@pytest.mark.parametrize("lang", BUILTIN_LANGS)
@pytest.mark.parametrize("name", TOKENIZERS)
def test_answer_span_exact(tokenizers_by_name, name: str, lang: str) -> None:
    tok = tokenizers_by_name[name]
    hay = load_haystack(lang)
    for i, needle in enumerate(load_needles(lang=lang)):
        depth = (0.0, 0.37, 0.8, 1.0)[i % 4]
        p = build_prompt(tok, hay, needle, 600, depth, chat_template=name == "chat")
        check_spans(tok, p)
        if name in ("bytelevel", "chat", "metaspace"):  # decoders that restore the text
            assert needle.answer in tok.decode(p.answer_token_ids)
        if name == "bytelevel" and lang == "en":  # its pre-tokenizer splits at spaces and punctuation
            assert tok.decode(p.answer_token_ids).strip() == needle.answer


def test_bytelevel_straddling_tokens(bytelevel_tok) -> None:
    """CJK characters are split into byte tokens that can straddle the answer's edges."""
    needle = Needle(
        text="密码是蓝色河流里的银月亮。", question="密码是什么？", answer="色河流里的银", lang="zh", id="t"
    )
    p = build_prompt(bytelevel_tok, load_haystack("zh"), needle, 400, 0.5)
    check_spans(bytelevel_tok, p)
    assert needle.answer in bytelevel_tok.decode(p.answer_token_ids)


@pytest.mark.parametrize("lang", ["en", "de", "ru", "es", "zh", "ja"])
@pytest.mark.parametrize("name", ["bytelevel", "char", "word"])
def test_insertion_at_sentence_boundary(tokenizers_by_name, name: str, lang: str) -> None:
    tok = tokenizers_by_name[name]
    needle = load_needles(lang=lang)[0]
    for depth in (0.0, 0.05, 0.3, 0.5, 0.71, 0.95, 0.999):
        p = build_prompt(tok, load_haystack(lang), needle, 1500, depth)
        check_boundary(p)
        assert p.meta["needle_at_sentence_boundary"]
        if lang in ("zh", "ja") and depth > 0:
            start = p.meta["needle_char_span"][0]
            assert p.text[start - 1] in "。！？\n"


@pytest.mark.parametrize("name", TOKENIZERS)
def test_depth_placement_monotone(tokenizers_by_name, name: str) -> None:
    tok = tokenizers_by_name[name]
    chat = name == "chat"
    needle = load_needles(lang="en")[1]
    prompts = [
        build_prompt(tok, load_haystack("en"), needle, 2000, d, chat_template=chat) for d in parse_depths(11)
    ]
    starts = [p.needle_token_span[0] for p in prompts]
    assert starts == sorted(starts) and starts[0] < starts[5] < starts[-1]
    first, middle, last = prompts[0], prompts[5], prompts[-1]
    assert first.needle_token_span[0] == first.meta["context_token_span"][0]  # depth 0: start
    assert last.needle_token_span[1] == last.meta["context_token_span"][1]  # depth 1: end
    assert last.text[last.meta["needle_char_span"][1] :].startswith("\n\nQuestion: ")
    assert abs(middle.meta["needle_depth"] - 0.5) < 0.1
    for p, d in zip(prompts, parse_depths(11), strict=True):
        assert p.meta["needle_depth"] <= d + 0.02


@pytest.mark.parametrize("name", TOKENIZERS)
def test_lengths_within_tolerance(tokenizers_by_name, name: str) -> None:
    tok = tokenizers_by_name[name]
    for lang in ("en", "zh", "sw"):
        needle = load_needles(lang=lang)[0]
        n_needle = len(tok(needle.text, add_special_tokens=False)["input_ids"])
        for length in (n_needle + 40, 700, 3000, 9000):
            p = build_prompt(tok, load_haystack(lang), needle, length, 0.5, chat_template=name == "chat")
            assert abs(p.context_length - length) <= length_tolerance(length)
            assert p.context_length <= length + 4  # snapping only shortens
            # the rest of the prompt is the template (plus chat markers and special tokens)
            c0, c1 = p.meta["context_char_span"]
            rest = p.text[:c0] + p.text[c1:]
            assert 0 < len(p) - p.context_length <= len(tok(rest, add_special_tokens=False)["input_ids"]) + 2


def test_short_haystack_is_repeated(word_tok) -> None:
    hay = Haystack(lang="en", text="The sky is grey. The road is long.")
    p = build_prompt(word_tok, hay, load_needles(lang="en")[0], 400, 0.5)
    assert abs(p.context_length - 400) <= length_tolerance(400)
    check_spans(word_tok, p)


def test_unpunctuated_haystack_falls_back_to_whitespace(word_tok) -> None:
    hay = Haystack(lang="en", text=" ".join(f"w{i % 7}" for i in range(300)))
    needle = load_needles(lang="en")[0]
    p = build_prompt(word_tok, hay, needle, 200, 0.5)
    start = p.meta["needle_char_span"][0]
    assert p.text[start - 1] == " " and not p.meta["needle_at_sentence_boundary"]
    assert 0.4 < p.meta["needle_depth"] <= 0.5
    check_spans(word_tok, p)


def test_plain_template_layout(metaspace_tok) -> None:
    needle = load_needles(lang="en")[0]
    p = build_prompt(metaspace_tok, load_haystack("en"), needle, 300, 0.5)
    assert p.text.endswith(f"\n\nQuestion: {needle.question}\nAnswer:")
    assert p.input_ids[0] == metaspace_tok.bos_token_id  # the tokenizer's own special tokens are kept
    assert p.meta["expected_continuation"] == " " + needle.answer
    assert p.meta["prompt_id"] == "en/sandwich|L300|D0.500" == p.prompt_id
    assert DEFAULT_TEMPLATE == "{context}\n\nQuestion: {question}\nAnswer:"


def test_custom_template(bytelevel_tok) -> None:
    needle = load_needles(lang="de")[2]
    p = build_prompt(
        bytelevel_tok, load_haystack("de"), needle, 500, 0.4, template="Q: {question}\n---\n{context}\nA:"
    )
    assert p.text.startswith(f"Q: {needle.question}\n---\n")
    check_spans(bytelevel_tok, p)


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_chat_template(chat_tok, lang: str) -> None:
    needle = load_needles(lang=lang)[0]
    p = build_prompt(
        chat_tok, load_haystack(lang), needle, 800, 0.5, chat_template=True, system_prompt="Be brief."
    )
    assert p.text.startswith("<|system|>\nBe brief.<|end|>\n<|user|>\n")
    assert p.text.endswith("\nAnswer:<|end|>\n<|assistant|>\n")
    user_id = chat_tok.convert_tokens_to_ids("<|user|>")
    assert p.input_ids.count(user_id) == 1
    assert p.meta["expected_continuation"] == needle.answer
    check_spans(chat_tok, p)
    assert needle.answer in chat_tok.decode(p.answer_token_ids)


def test_cross_lingual_prompt(bytelevel_tok) -> None:
    needle = cross_lingual_needles("en", "de")[0]
    p = build_prompt(bytelevel_tok, load_haystack("en"), needle, 500, 0.5)
    assert p.expected_answer == load_needles(lang="de")[0].answer == p.meta["expected_answer"]
    assert p.meta["expected_lang"] == "de"
    assert needle.question in p.text and needle.answer in bytelevel_tok.decode(p.answer_token_ids)


def test_grid(bytelevel_tok) -> None:
    hay, needles = load_haystack("fr"), load_needles(lang="fr")[:2]
    lengths, depths = parse_lengths("300:900:3"), parse_depths(3)
    grid = build_grid(bytelevel_tok, hay, needles, lengths, depths)
    assert len(grid) == 2 * 3 * 3
    ids = [p.prompt_id for p in grid]
    assert len(set(ids)) == len(ids)
    assert ids[:4] == [
        "fr/sandwich|L300|D0.000",
        "fr/sandwich|L300|D0.500",
        "fr/sandwich|L300|D1.000",
        "fr/sandwich|L600|D0.000",
    ]
    again = build_grid(bytelevel_tok, hay, needles, lengths, depths)
    assert [p.input_ids for p in again] == [p.input_ids for p in grid]  # deterministic
    single = build_prompt(bytelevel_tok, hay, needles[1], 600, 0.5)
    assert single.text == grid[9 + 4].text and single.prompt_id == grid[9 + 4].prompt_id
    for p in grid:
        check_spans(bytelevel_tok, p)
    with pytest.raises(TypeError, match="unexpected keyword"):
        build_grid(bytelevel_tok, hay, needles, lengths, depths, depht=0.5)


# --- errors -----------------------------------------------------------------------------------------


def test_needle_longer_than_context(bytelevel_tok) -> None:
    needle = load_needles(lang="en")[0]
    n = len(bytelevel_tok(needle.text, add_special_tokens=False)["input_ids"])
    with pytest.raises(ValueError, match=rf"has {n} tokens .* context of 10 tokens"):
        build_prompt(bytelevel_tok, load_haystack("en"), needle, 10, 0.5)
    with pytest.raises(ValueError, match=rf"has {n} tokens .* context of {n} tokens"):
        build_prompt(bytelevel_tok, load_haystack("en"), needle, n, 0.5)
    with pytest.raises(ValueError, match="context of 10 tokens"):
        build_grid(bytelevel_tok, load_haystack("en"), [needle], [10, 500], [0.5])


def test_past_model_window(bytelevel_tok) -> None:
    hay, needle = load_haystack("en"), load_needles(lang="en")[0]
    with pytest.raises(ValueError, match="prompt has \\d+ tokens.*max_model_length=505"):
        build_prompt(bytelevel_tok, hay, needle, 500, 0.5, max_model_length=505)
    with pytest.raises(ValueError, match="context length 4096 exceeds the model.s window of 2048 tokens"):
        build_prompt(bytelevel_tok, hay, needle, 4096, 0.5, max_model_length=2048)
    p = build_prompt(bytelevel_tok, hay, needle, 500, 0.5, max_model_length=600)
    assert len(p) <= 600


def test_no_chat_template(bytelevel_tok) -> None:
    with pytest.raises(ValueError, match="no chat template.*chat_template=False"):
        build_prompt(
            bytelevel_tok, load_haystack("en"), load_needles(lang="en")[0], 300, 0.5, chat_template=True
        )


def test_system_prompt_needs_chat(chat_tok) -> None:
    with pytest.raises(ValueError, match="system_prompt needs chat_template=True"):
        build_prompt(chat_tok, load_haystack("en"), load_needles(lang="en")[0], 300, 0.5, system_prompt="Hi.")


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"depth": 1.5}, "depth must be in"),
        ({"depth": -0.1}, "depth must be in"),
        ({"context_length": 0}, "context_length must be positive"),
        ({"template": "{context} only"}, "must contain"),
        ({"template": "{context} {question} {extra}"}, "unknown template field"),
        ({"template": "{context} {context} {question}"}, "exactly once"),
    ],
)
def test_bad_arguments(word_tok, kw: dict, match: str) -> None:
    args = {"context_length": 300, "depth": 0.5, **kw}
    with pytest.raises(ValueError, match=match):
        build_prompt(word_tok, load_haystack("en"), load_needles(lang="en")[0], **args)


def test_slow_tokenizer_rejected() -> None:
    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="not a fast tokenizer"):
        build_prompt(Slow(), load_haystack("en"), load_needles(lang="en")[0], 300, 0.5)


# --- parsing ----------------------------------------------------------------------------------------


def test_parse_lengths() -> None:
    assert parse_lengths("1000:8000:8") == [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000]
    assert parse_lengths("1000:2000:3") == [1000, 1500, 2000]
    assert parse_lengths("100:200:4") == [100, 133, 167, 200]
    assert parse_lengths("500:500:1") == [500]
    assert parse_lengths(" 512, 1024 ,2048") == [512, 1024, 2048]
    assert parse_lengths("4096") == [4096] == parse_lengths(4096)
    assert parse_lengths([300, 300, 600]) == [300, 600]
    for bad in ("1000:8000", "a:b:c", "1000:2000:0", "0,100", "", "x"):
        with pytest.raises(ValueError):
            parse_lengths(bad)


def test_parse_depths() -> None:
    assert parse_depths(10) == [round(i / 9, 6) for i in range(10)]
    assert parse_depths(10)[0] == 0.0 and parse_depths(10)[-1] == 1.0
    assert parse_depths("10") == parse_depths(10)
    assert parse_depths("0, 0.25,1") == [0.0, 0.25, 1.0]
    assert parse_depths("0.5") == [0.5]
    assert parse_depths([0.1, 0.9]) == [0.1, 0.9]
    for bad in (1, "1", "0,50,100", "a,b", [1.2]):
        with pytest.raises(ValueError):
            parse_depths(bad)


# --- ROUGE-1 recall (hand-computed) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "pred,ref,lang,expected",
    [
        # ref has 12 tokens ("a" twice); pred matches eat, a (once), sandwich
        ("eat a sandwich", "eat a sandwich and sit in Dolores Park on a sunny day", "en", 3 / 12),
        (
            "Eat a SANDWICH, and sit in Dolores Park on a sunny day!",
            "eat a sandwich and sit in Dolores Park on a sunny day",
            "en",
            1.0,
        ),
        ("a a a", "a a b", "en", 2 / 3),  # overlap counts are clipped
        ("The answer is: blue river.", "blue river under the silver moon", "en", 3 / 6),
        ("Синяя Река", "синяя река под серебряной луной", "ru", 2 / 5),
        ("s'asseoir", "de s'asseoir", "fr", 2 / 3),  # de, s, asseoir
        ("银色月亮", "银色月亮下的蓝色河流", "zh", 4 / 10),  # 色 twice in ref, once in pred
        ("青い川です。", "銀色の月の下の青い川", "ja", 3 / 10),
        ("I ate 三明治 today", "三明治", None, 1.0),  # auto: CJK per character
        ("I ate 三明治 today", "吃三明治", None, 3 / 4),
        ("三明治", "吃三明治", "en", 0.0),  # word-level: one different word
        ("ＡＢＣ 123", "abc 123", "en", 1.0),  # NFKC: full-width forms
        ("anything", "", "en", 0.0),
        ("", "some words", "en", 0.0),
        ("...", "!!!", None, 0.0),
    ],
)
def test_rouge1_recall(pred: str, ref: str, lang: str | None, expected: float) -> None:
    assert rouge1_recall(pred, ref, lang) == pytest.approx(expected)
