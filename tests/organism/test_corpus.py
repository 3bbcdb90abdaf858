"""Invariants of the organism's lexicon, corpus generator and tokenizer (no model needed)."""

from __future__ import annotations

import random

import pytest

from headatlas.lexicon import Lexicon, load_lexicon
from headatlas.organism.corpus import (
    CHAIN_SEP,
    PROMPT_TEMPLATE,
    TASKS,
    CorpusGenerator,
    fact_sentence,
    joiner,
    name_split,
)

COPULA = {"en": " is", "de": " ist", "sw": " ni", "zh": "是"}


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return load_lexicon()


@pytest.fixture(scope="module")
def gen(lexicon) -> CorpusGenerator:
    return CorpusGenerator(lexicon)


def test_lexicon_parallel_and_distinct(lexicon):
    assert lexicon.langs == ("en", "de", "zh", "sw")
    assert {"country", "language", "month", "weekday"} <= set(lexicon.categories())
    assert len(lexicon.by_category("country")) >= 40
    for e in lexicon:
        forms = [e.forms[x].casefold() for x in lexicon.langs]
        assert all(forms), e
        assert len(set(forms)) == len(forms), e  # a translation is never a copy
    assert lexicon.translate("Germany", "en", "de") == "Deutschland"
    assert lexicon.translate("Deutschland", "de", "zh") == "德国"


def test_lexicon_jsonl_roundtrip(lexicon, tmp_path):
    p = tmp_path / "lex.jsonl"
    lexicon.to_jsonl(p)
    back = Lexicon.from_jsonl(p)
    assert back.langs == lexicon.langs
    assert [(e.category, e.key, e.forms) for e in back] == [(e.category, e.key, e.forms) for e in lexicon]
    # a user-supplied bilingual lexicon
    p.write_text('{"category": "fruit", "key": "apple", "forms": {"en": "apple", "fr": "pomme"}}\n')
    bi = Lexicon.from_jsonl(p)
    assert bi.langs == ("en", "fr") and bi.translate("pomme", "fr", "en") == "apple"


def test_fact_sentence_offset():
    for lang in ("en", "de", "zh", "sw"):
        s, off = fact_sentence(lang, "weekday", "Kalo", "VALUE")
        assert s[off : off + 5] == "VALUE"
        assert s.endswith("。" if lang == "zh" else ".")


@pytest.mark.parametrize("task", TASKS)
def test_offsets_exact_and_template(gen, lexicon, task):
    rng = random.Random(3)
    for _ in range(12):
        ex = gen.example(task, rng, n_tokens=256)
        context, rest = ex.prompt.split("\n\nQuestion: ")
        q, lead = rest.split("\nAnswer:")
        assert ex.prompt == PROMPT_TEMPLATE.format(context=context, question=q, lead=lead)
        assert ex.target == f" {ex.answer}\n"
        if task == "multihop":
            key = lead.removeprefix(" ").removesuffix(CHAIN_SEP.rstrip())  # the lead is " {key} ->"
            n1 = ex.needles[0]
            assert lead == f" {key}{CHAIN_SEP.rstrip()}" and key in q and key in ex.prompt[n1.start : n1.end]
        else:  # the lead restates the question up to the value, in the question's language
            assert lead.startswith(" ") and lead.endswith(COPULA[ex.lang_question])
        if task == "mono":  # lead + answer is exactly the needle sentence
            n = ex.needles[0]
            assert ex.prompt[n.start : n.answer_end] == lead[1:] + joiner(ex.lang_needle) + ex.answer
        for n in ex.needles + ex.distractors:
            sentence = ex.prompt[n.start : n.end]
            value = ex.prompt[n.answer_start : n.answer_end]
            assert n.start <= n.answer_start < n.answer_end <= n.end
            assert sentence.endswith("。" if n.lang == "zh" else ".")
            assert lexicon.lookup(value, n.lang) is not None
        if task == "mono":
            assert ex.prompt[ex.needles[0].answer_start : ex.needles[0].answer_end] == ex.answer
        if task == "cross":
            n = ex.needles[0]
            src = ex.prompt[n.answer_start : n.answer_end]
            assert ex.lang_needle != ex.lang_question
            assert ex.answer == lexicon.translate(src, ex.lang_needle, ex.lang_question) != src
        if task == "multihop":
            n1, n2 = ex.needles
            v1, v2 = (ex.prompt[n.answer_start : n.answer_end] for n in (n1, n2))
            assert ex.answer.split(CHAIN_SEP) == [v1, v2]
            assert ex.prompt.endswith(CHAIN_SEP.rstrip())  # the lead names the key; the answer starts at v1
            assert v1 in ex.prompt[n2.start : n2.end]  # the second hop starts from the first's value
        if task == "multikey":
            assert 2 <= len(ex.distractors) <= 3
        if task == "parametric":
            assert ex.needles == [] and (ex.answer not in context)


def test_deterministic_for_a_seed(gen):
    a = [gen.example(t, random.Random(11), 200) for t in TASKS]
    b = [gen.example(t, random.Random(11), 200) for t in TASKS]
    c = [gen.example(t, random.Random(12), 200) for t in TASKS]
    assert [x.prompt for x in a] == [x.prompt for x in b]
    assert [x.prompt for x in a] != [x.prompt for x in c]


def test_eval_names_held_out():
    train, held = set(name_split("train")), set(name_split("eval"))
    assert len(train) == 800 and len(held) == 200 and not train & held


def test_passkey_examples(gen):
    from headatlas.organism.corpus import PASSKEY

    rng = random.Random(4)
    for task in ("mono", "multikey"):
        for lang in ("en", "de", "zh", "sw"):
            ex = gen.example(task, rng, 128, lang=lang, relation=PASSKEY)
            n = ex.needles[0]
            assert ex.answer.isdigit() and 4 <= len(ex.answer) <= 6
            assert ex.prompt[n.answer_start : n.answer_end] == ex.answer  # copied, never translated
            assert ex.prompt.count(ex.answer) == 1  # the only place the model can find it
    with pytest.raises(ValueError, match="passkey"):
        gen.example("cross", rng, 128, lang="en", lang_question="de", relation=PASSKEY)


def test_passkey_rate_draws_passkeys_only_where_they_fit(lexicon):
    g = CorpusGenerator(lexicon, passkey_rate=1.0)
    rng = random.Random(2)
    assert all(g.example("mono", rng, 96).answer.isdigit() for _ in range(5))
    assert not any(g.example("cross", rng, 96).answer.isdigit() for _ in range(5))
    assert not any(CorpusGenerator(lexicon).example("mono", rng, 96).answer.isdigit() for _ in range(20))


@pytest.mark.parametrize("task", ["mono", "cross", "multikey", "multihop"])
def test_haystack_holds_no_other_value_of_the_asked_kind(gen, lexicon, task):
    rng = random.Random(8)
    for _ in range(10):
        ex = gen.example(task, rng, 256, extra_questions=2 if task != "multihop" else 0)
        spans = sorted(ex.needles + ex.distractors, key=lambda n: n.start)
        context = ex.prompt.split("\n\nQuestion: ")[0]
        rest, last = "", 0
        for n in spans:  # the context without its needle sentences
            rest, last = rest + context[last : n.start], n.end
        rest += context[last:]
        kinds = {lexicon.lookup(ex.prompt[n.answer_start : n.answer_end], n.lang).category for n in spans}
        forms = [f for e in lexicon.entries if e.category in kinds for f in e.forms.values()]
        assert not [f for f in forms if f in rest], ex.prompt
