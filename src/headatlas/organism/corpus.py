"""Synthetic multilingual needle-in-a-haystack examples for the model organism.

Every example is rendered in one prompt template, with an answer lead (the
start of the answer sentence, as an assistant prefill) after ``Answer:``::

    "{context}\\n\\nQuestion: {question}\\nAnswer:{lead}"   ->   " {answer}\\n" + EOS

e.g. ``"...\\nAnswer: The home country of Anna is"`` -> ``" Kenya\\n"``. The lead
makes the answer continue a restatement of the needle, the way real models
answer NIAH questions ("The best thing to do in San Francisco is ..."), so
retrieval is a fuzzy induction: find the key in the context, copy what
follows it (decision 16 in docs/decisions.md). ``multihop``'s lead is the
asked key and an arrow (``"... Answer: Anna ->"``); its answer writes the
chain on from there (``" Kenya -> Friday"``): the intermediate value, then
the final one.

The context is haystack filler (template sentences filled from the lexicon, in
the needle's language) with needle sentences inserted at sentence boundaries
at chosen depths. Five tasks (:data:`TASKS`):

- ``mono``: needle, question and answer in one language;
- ``cross``: needle in language A, question and answer in language B (the
  answer is the lexicon translation of the needle's value);
- ``multihop``: two needles (key -> v1, v1 -> v2); after the lead ``"key ->"``
  the answer writes the rest of the chain, ``"v1 -> v2"``;
- ``parametric``: one of a fixed table of facts learned in training (country
  -> official language, from CLDR), asked with plain filler as context;
- ``multikey``: the target needle plus 2-3 needles with the same relation and
  other keys.

Each :class:`Example` records, per needle, exact character offsets of the
needle sentence and of its (source-language) answer value in ``prompt``.

>>> from headatlas.lexicon import load_lexicon
>>> import random
>>> gen = CorpusGenerator(load_lexicon())
>>> ex = gen.example("mono", random.Random(0), n_tokens=128, lang="en")
>>> n = ex.needles[0]
>>> ex.prompt[n.answer_start:n.answer_end] == ex.answer
True
"""

from __future__ import annotations

import functools
import itertools
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..lexicon import LexEntry, Lexicon, load_lexicon

PROMPT_TEMPLATE = "{context}\n\nQuestion: {question}\nAnswer:{lead}"
ANSWER_TEMPLATE = " {answer}\n"
TASKS: tuple[str, ...] = ("mono", "cross", "multihop", "parametric", "multikey")
RELATIONS: tuple[str, ...] = ("country", "language", "month", "weekday")  # value category = relation
PASSKEY = "passkey"  # a relation whose value is a random number: copied, never translated or guessed
CHAIN_SEP = " -> "

# --- per-language templates: templates.json ----------------------------------------------------------
# "relations": relation -> (nominative, the form inside a phrase): de (nominative with article, dative with
# article), sw (noun phrase, connective). "fact", "question", "multihop_question": subject {s}, value {v},
# the relation's {nom}, {Nom} (capitalised) and {inner} (numbered 1, 2 for the two hops). "filler"
# slots: {n},{n2} names; {c},{c2} countries; {l},{l2} languages; {m} month; {d} weekday; {t} city.
# "dictionary": {w} a word in this language, {L} the name of another language X, {x} the word in X.
_TEMPLATES = json.loads((Path(__file__).parent / "templates.json").read_text(encoding="utf-8"))
_REL: dict[str, dict[str, list[str]]] = _TEMPLATES["relations"]
_PARAMETRIC_LEAD: dict[str, str] = _TEMPLATES["parametric_lead"]
_SLOT = {"country": "c", "language": "l", "month": "m", "weekday": "d"}  # filler slot of each category
DICTIONARY_RATE = 0.25  # share of filler sentences that are dictionary sentences


def joiner(lang: str) -> str:
    """What separates sentences: nothing in Chinese, a space otherwise."""
    return "" if lang == "zh" else " "


def _forms(lang: str, relation: str) -> dict[str, str]:
    """The slots of a sentence template for ``relation``: ``nom``, ``Nom`` (capitalised) and ``inner``."""
    nom, inner = _REL[lang][relation]
    return {"nom": nom, "Nom": nom[0].upper() + nom[1:], "inner": inner}


def fact_sentence(lang: str, relation: str, subj: str, value: str) -> tuple[str, int]:
    """A needle sentence and the character offset of ``value`` inside it.

    >>> fact_sentence("en", "country", "Anna", "Kenya")
    ('The home country of Anna is Kenya.', 28)
    """
    head, tail = _TEMPLATES["fact"][lang].split("{v}")
    head = head.format(s=subj, **_forms(lang, relation))
    return head + value + tail, len(head)


def question(lang: str, relation: str, subj: str) -> str:
    """The question asking for ``relation`` of ``subj``."""
    return _TEMPLATES["question"][lang].format(s=subj, **_forms(lang, relation))


def multihop_question(lang: str, rel1: str, rel2: str, subj: str) -> str:
    """The two-hop question: ``rel2`` of (``rel1`` of ``subj``)."""
    forms = {f"{k}{i}": v for i, rel in ((1, rel1), (2, rel2)) for k, v in _forms(lang, rel).items()}
    return _TEMPLATES["multihop_question"][lang].format(s=subj, **forms)


def parametric_question(lang: str, country: str) -> str:
    """Question for a parametric fact (official language of a country)."""
    return _TEMPLATES["parametric_question"][lang].format(s=country)


def answer_lead(lang: str, relation: str, subj: str) -> str:
    """The start of the answer sentence, written into the prompt after ``Answer:`` (an answer prefill).

    The model then writes only the value, exactly as after a needle sentence
    (decision 16 in docs/decisions.md):

    >>> answer_lead("en", "country", "Anna")
    ' The home country of Anna is'
    >>> answer_lead("zh", "country", "Anna")
    ' Anna的故乡是'
    """
    sentence, offset = fact_sentence(lang, relation, subj, "")
    return " " + sentence[:offset].rstrip()


def parametric_lead(lang: str, country: str) -> str:
    """The answer lead of a parametric question (official language of ``country``)."""
    return " " + _PARAMETRIC_LEAD[lang].format(s=country)


def render_prompt(context: str, q: str, lead: str = "") -> str:
    """The organism's prompt template: context, question, ``Answer:`` and the answer lead."""
    return PROMPT_TEMPLATE.format(context=context, question=q, lead=lead)


def question_block(q: str, lead: str) -> str:
    """A further question after an answer (training-only augmentation; see ``Example.extra_qa``)."""
    return f"\nQuestion: {q}\nAnswer:{lead}"


@dataclass(frozen=True)
class NeedleSpan:
    """Character offsets of one needle inside ``Example.prompt``.

    ``start:end`` is the needle sentence, ``answer_start:answer_end`` the
    source-language answer value inside it (what a retrieval head copies
    from); ``target`` is what the model must write for it (the same string in
    ``mono``, its translation in ``cross``).
    """

    start: int
    end: int
    answer_start: int
    answer_end: int
    target: str
    lang: str


@dataclass
class Example:
    """One prompt with its answer and needle spans (``needles`` are those the answer needs)."""

    task: str
    prompt: str
    answer: str
    lang_needle: str
    lang_question: str
    needles: list[NeedleSpan]
    distractors: list[NeedleSpan] = field(default_factory=list)
    length: int = 0  # requested prompt length in tokens
    depth: float = 0.0  # depth of the (first) needle, 0..1 of the context
    # training-only extra questions: (question block, answer), the block from :func:`question_block`
    extra_qa: list[tuple[str, str]] = field(default_factory=list)

    @property
    def target(self) -> str:
        """The continuation the model is trained to write (before EOS)."""
        return ANSWER_TEMPLATE.format(answer=self.answer)


def make_names(n: int, seed: int) -> list[str]:
    """``n`` distinct synthetic two/three-syllable names, deterministic for ``seed``."""
    syll = [o + v for o, v in itertools.product("bdfghklmnprstvz", "aeiou")]  # onset + vowel
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        k = rng.choice((2, 2, 3))
        name = "".join(rng.choice(syll) for _ in range(k))
        if rng.random() < 0.3:
            name += rng.choice("nlr")
        name = name.capitalize()
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


# names: one fixed pool, split into train and held-out eval names
_NAME_POOL_SEED = 1729
N_TRAIN_NAMES, N_EVAL_NAMES = 800, 200


def name_split(split: str) -> list[str]:
    """Key names for ``split`` ("train" or "eval"): disjoint fixed pools."""
    pool = make_names(N_TRAIN_NAMES + N_EVAL_NAMES, _NAME_POOL_SEED)
    if split == "train":
        return pool[:N_TRAIN_NAMES]
    if split == "eval":
        return pool[N_TRAIN_NAMES:]
    raise ValueError(f"split must be 'train' or 'eval', not {split!r}")


def parametric_facts(lexicon: Lexicon, n: int = 40, per_language: int = 3) -> list[tuple[LexEntry, LexEntry]]:
    """A fixed table of (country, official language) facts from CLDR, both in ``lexicon``.

    At most ``per_language`` countries per language, lexicon order; deterministic.
    """
    from babel.languages import get_official_languages

    langs = {e.key: e for e in lexicon.by_category("language")}
    used: dict[str, int] = {}
    out = []
    for country in lexicon.by_category("country"):
        official = [c for c in get_official_languages(country.key, de_facto=True) if c in langs]
        if not official or used.get(official[0], 0) >= per_language:
            continue
        used[official[0]] = used.get(official[0], 0) + 1
        out.append((country, langs[official[0]]))
        if len(out) == n:
            break
    return out


def passkey_entry(rng: random.Random, langs: Sequence[str]) -> LexEntry:
    """A random 4-6 digit passkey, written the same in every language.

    >>> passkey_entry(random.Random(0), ["en", "de"]).forms
    {'en': '70487', 'de': '70487'}
    """
    digits = str(rng.randrange(1, 10)) + "".join(str(rng.randrange(10)) for _ in range(rng.randint(3, 5)))
    return LexEntry(PASSKEY, digits, {lang: digits for lang in langs})


def approx_tokens(text: str) -> int:
    """Rough token count when no tokenizer is given (~3.5 chars/token, 1 per CJK char)."""
    cjk = sum(1 for ch in text if "\u3000" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef")
    return cjk + (len(text) - cjk + 3) // 4 + 1


class CorpusGenerator:
    """Builds :class:`Example` objects (and plain filler) from a lexicon.

    ``count_tokens`` measures a string in tokens (defaults to
    :func:`approx_tokens`); pass the real tokenizer's count to hit prompt
    lengths exactly. ``translatable(entry, src, tgt)`` says whether an entry
    may be the answer of a ``cross`` example from ``src`` to ``tgt`` (e.g. only
    when the two forms share no token; default: always). Randomness comes
    only from the ``rng`` passed to each call.
    """

    def __init__(
        self,
        lexicon: Lexicon,
        count_tokens: Callable[[str], int] | None = None,
        n_facts: int = 40,
        places: Lexicon | None = None,
        translatable: Callable[[LexEntry, str, str], bool] | None = None,
        passkey_rate: float = 0.0,
    ) -> None:
        self.lexicon = lexicon
        self.langs = lexicon.langs
        missing = [lang for lang in self.langs if lang not in _REL]
        if missing:
            raise ValueError(f"no sentence templates for {missing}; supported: {sorted(_REL)}")
        self.count = count_tokens or approx_tokens
        self.translatable = translatable or (lambda entry, src, tgt: True)
        self.values = {c: lexicon.by_category(c) for c in RELATIONS}
        for c, v in self.values.items():
            if len(v) < 4:
                raise ValueError(f"lexicon has only {len(v)} {c!r} entries; need >= 4")
        self.facts = parametric_facts(lexicon, n_facts)
        places = places or load_lexicon(self.langs, distinct=False)
        self.cities = [e.forms for e in places.by_category("city")]
        self.lang_names = {lang: lexicon.get("language", lang) for lang in self.langs}
        self.filler_names = make_names(300, 7)
        self.passkey_rate = passkey_rate

    def _relation(self, rng: random.Random, task: str) -> str:
        if task in ("mono", "multikey") and self.passkey_rate and rng.random() < self.passkey_rate:
            return PASSKEY
        return rng.choice(RELATIONS)

    # --- filler -------------------------------------------------------------------------------------
    def filler_sentence(
        self, rng: random.Random, lang: str, avoid: set[str] = frozenset(), exclude: frozenset[str] = frozenset()
    ) -> str:
        """One haystack sentence in ``lang`` that mentions no string in ``avoid`` and no value of a
        category in ``exclude`` (relation names: the haystack never holds a second value of the
        kind the question asks for, as in real NIAH, where the needle is the only sentence of its kind).
        """
        templates, entries = self._filler_pools(lang, frozenset(exclude))
        while True:
            if rng.random() < DICTIONARY_RATE and "language" not in exclude:  # it names a language
                other = rng.choice([x for x in self.langs if x != lang])
                entry = rng.choice(entries)
                s = rng.choice(_TEMPLATES["dictionary"][lang]).format(
                    L=self.lang_names[other].forms[lang], w=entry.forms[lang], x=entry.forms[other]
                )
            else:
                pick = lambda c: rng.choice(self.values[c]).forms[lang]  # noqa: E731
                s = rng.choice(templates).format(
                    n=rng.choice(self.filler_names), n2=rng.choice(self.filler_names),
                    c=pick("country"), c2=pick("country"), l=pick("language"), l2=pick("language"),
                    m=pick("month"), d=pick("weekday"), t=rng.choice(self.cities)[lang],
                )
            if not any(a in s for a in avoid):
                return s

    @functools.lru_cache(maxsize=64)  # noqa: B019  (the generator lives as long as its users)
    def _filler_pools(self, lang: str, exclude: frozenset[str]) -> tuple[list[str], list[LexEntry]]:
        """Templates and dictionary entries that name no value of a category in ``exclude``."""
        templates = [t for t in _TEMPLATES["filler"][lang] if not any("{" + _SLOT[c] in t for c in exclude)]
        return templates, [e for e in self.lexicon.entries if e.category not in exclude]

    def filler(
        self, rng: random.Random, lang: str, n_tokens: int, avoid: set[str] = frozenset(),
        exclude: frozenset[str] = frozenset(),
    ) -> list[str]:
        """Filler sentences whose joined length stays within ``n_tokens`` (see :meth:`filler_sentence`)."""
        exclude = frozenset(exclude) - {PASSKEY}
        avoid = set(avoid) | {f for c in exclude for e in self.values[c] for f in e.forms.values()}
        out: list[str] = []
        total = 0
        sep = joiner(lang)
        while True:
            s = self.filler_sentence(rng, lang, avoid, exclude)
            c = self.count((sep if out else "") + s)
            if total + c > n_tokens:
                return out
            out.append(s)
            total += c

    def passage(self, rng: random.Random, lang: str, n_tokens: int) -> str:
        """A plain haystack passage of about ``n_tokens`` tokens in ``lang``: the text the model learned
        to continue (its context tokens carry the language-model loss in training), with no question."""
        return joiner(lang).join(self.filler(rng, lang, n_tokens))

    # --- assembling a prompt ------------------------------------------------------------------------
    def _assemble(
        self,
        lang: str,
        filler: list[str],
        needles: Sequence[tuple[str, int, str, str]],  # (sentence, value offset, value, target)
        depths: Sequence[float],
        q: str,
        lead: str = "",
    ) -> tuple[str, list[NeedleSpan]]:
        sep = joiner(lang)
        counts = [self.count((sep if i else "") + s) for i, s in enumerate(filler)]
        cum = list(itertools.accumulate(counts, initial=0))
        total = cum[-1]
        slots: dict[int, list[int]] = {}
        for j, d in enumerate(depths):
            want = d * total
            k = min(range(len(cum)), key=lambda i: (abs(cum[i] - want), i))
            slots.setdefault(k, []).append(j)
        pieces: list[tuple[str, int | None]] = []  # (sentence, needle index or None)
        for k in range(len(filler) + 1):
            pieces.extend((needles[j][0], j) for j in slots.get(k, []))
            if k < len(filler):
                pieces.append((filler[k], None))
        context = ""
        spans: dict[int, NeedleSpan] = {}
        for i, (s, j) in enumerate(pieces):
            if i:
                context += sep
            if j is not None:
                _, off, value, target = needles[j]
                a = len(context) + off
                spans[j] = NeedleSpan(len(context), len(context) + len(s), a, a + len(value), target, lang)
            context += s
        return render_prompt(context, q, lead), [spans[j] for j in range(len(needles))]

    def _budget(self, n_tokens: int, needles: Sequence[str], q: str, lang: str, lead: str = "") -> int:
        sep = joiner(lang)
        fixed = sum(self.count(sep + s) for s in needles) + self.count(render_prompt("", q, lead))
        return max(0, n_tokens - fixed - 1)  # 1 for BOS

    # --- tasks --------------------------------------------------------------------------------------
    def example(
        self,
        task: str,
        rng: random.Random,
        n_tokens: int,
        depth: float | None = None,
        lang: str | None = None,
        lang_question: str | None = None,
        split: str = "train",
        n_distractors: int | None = None,
        extra_questions: int = 0,
        relation: str | None = None,
    ) -> Example:
        """One example of ``task`` with a prompt of about ``n_tokens`` tokens.

        ``lang`` is the needle/haystack language, ``lang_question`` the
        question's (only ``cross`` lets them differ; drawn at random when
        None). ``depth`` (0..1) places the target needle; random when None.
        ``split`` picks the key-name pool ("train" or held-out "eval").
        ``extra_questions`` (training only) adds that many more needles with
        their own keys and records a question/answer pair for each in
        ``Example.extra_qa`` (``multihop`` ignores it). ``relation`` fixes the
        asked relation of ``mono``/``cross``/``multikey`` (one of :data:`RELATIONS` or
        :data:`PASSKEY`); by default it is drawn, a passkey with probability
        ``passkey_rate`` (``mono`` and ``multikey`` only).
        """
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
        lang = lang or rng.choice(self.langs)
        if task == "cross":
            lang_question = lang_question or rng.choice([x for x in self.langs if x != lang])
            if lang_question == lang:
                raise ValueError("cross-lingual examples need two different languages")
        else:
            lang_question = lang
        depth = rng.random() if depth is None else depth
        names = name_split(split)
        if task == "parametric":
            return self._parametric(rng, n_tokens, lang, depth, extra_questions)
        if task == "multihop":
            return self._multihop(rng, n_tokens, lang, depth, names)
        rel = relation or self._relation(rng, task)
        if rel == PASSKEY and task == "cross":
            raise ValueError("a passkey is copied, not translated: no cross-lingual passkey examples")
        if task == "multikey":  # more needles of the same relation: only the key tells them apart
            n_dis = rng.choice((2, 3)) if n_distractors is None else n_distractors
            extra_rels = [rel] * extra_questions
        else:  # every relation (value kind) at most once in the context
            n_dis = 0
            extra_rels = rng.sample([r for r in RELATIONS if r != rel], min(extra_questions, len(RELATIONS) - 1))
        rels = [rel] * (1 + n_dis) + extra_rels
        n_keys = len(rels)
        keys = rng.sample(names, n_keys)
        asked = {0} | set(range(1 + n_dis, n_keys))  # needles a question is asked about
        used: set[tuple[str, str]] = set()
        vals: list[LexEntry] = []
        kept: list[int] = []
        for i, r in enumerate(rels):
            if r == PASSKEY:
                vals.append(passkey_entry(rng, self.langs))
                kept.append(i)
                continue
            pool = [e for e in self.values[r] if (e.category, e.key) not in used]
            if task == "cross" and i in asked:
                pool = [e for e in pool if self.translatable(e, lang, lang_question)]
            if not pool and i > n_dis:  # an extra question without a (translatable) value: leave it out
                continue
            if not pool:  # the asked relation has none: draw another relation
                if relation is not None:
                    raise ValueError(f"no {relation!r} value of the lexicon translates from {lang} to {lang_question}")
                return self.example(task, rng, n_tokens, depth, lang, lang_question, split, n_distractors,
                                    extra_questions)
            vals.append(rng.choice(pool))
            used.add((vals[-1].category, vals[-1].key))
            kept.append(i)
        rels, keys = [rels[i] for i in kept], [keys[i] for i in kept]
        n_keys = len(kept)
        asked = {0} | set(range(1 + n_dis, n_keys))
        needles, depths = [], [depth]
        for i, (k, r, v) in enumerate(zip(keys, rels, vals, strict=True)):
            s, off = fact_sentence(lang, r, k, v.forms[lang])
            target = v.forms[lang_question] if i in asked else v.forms[lang]
            needles.append((s, off, v.forms[lang], target))
            if i:
                depths.append(rng.random())
        q, lead = question(lang_question, rel, keys[0]), answer_lead(lang_question, rel, keys[0])
        extra = [(question_block(question(lang_question, rels[i], keys[i]), answer_lead(lang_question, rels[i], keys[i])),
                  needles[i][3]) for i in range(1 + n_dis, n_keys)]
        avoid = set(keys) | {v.forms[x] for v in vals for x in self.langs}
        filler = self.filler(rng, lang, self._budget(n_tokens, [n[0] for n in needles], q, lang, lead), avoid,
                             frozenset(rels))
        prompt, spans = self._assemble(lang, filler, needles, depths, q, lead)
        return Example(task, prompt, needles[0][3], lang, lang_question, spans[:1], spans[1:], n_tokens, depth,
                       extra)

    def _multihop(self, rng: random.Random, n_tokens: int, lang: str, depth: float, names: list[str]) -> Example:
        rel1, rel2 = rng.sample(RELATIONS, 2)
        key = rng.choice(names)
        v1 = rng.choice(self.values[rel1])
        v2 = rng.choice(self.values[rel2])
        s1, o1 = fact_sentence(lang, rel1, key, v1.forms[lang])
        s2, o2 = fact_sentence(lang, rel2, v1.forms[lang], v2.forms[lang])
        needles = [(s1, o1, v1.forms[lang], v1.forms[lang]), (s2, o2, v2.forms[lang], v2.forms[lang])]
        q = multihop_question(lang, rel1, rel2, key)
        avoid = {key} | {v.forms[x] for v in (v1, v2) for x in self.langs}
        lead = " " + key + CHAIN_SEP.rstrip()  # " Anna ->": the chain starts at the asked key
        filler = self.filler(rng, lang, self._budget(n_tokens, [s1, s2], q, lang, lead), avoid,
                             frozenset((rel1, rel2)))
        prompt, spans = self._assemble(lang, filler, needles, [depth, rng.random()], q, lead)
        answer = CHAIN_SEP.join([v1.forms[lang], v2.forms[lang]])
        return Example("multihop", prompt, answer, lang, lang, spans, [], n_tokens, depth)

    def _parametric(self, rng: random.Random, n_tokens: int, lang: str, depth: float, n_extra: int) -> Example:
        facts = rng.sample(self.facts, 1 + n_extra)
        country, language = facts[0]
        q, lead = parametric_question(lang, country.forms[lang]), parametric_lead(lang, country.forms[lang])
        extra = [(question_block(parametric_question(lang, c.forms[lang]), parametric_lead(lang, c.forms[lang])),
                  la.forms[lang]) for c, la in facts[1:]]
        avoid = {f for pair in facts for e in pair for f in e.forms.values()}
        filler = self.filler(rng, lang, self._budget(n_tokens, [], q, lang, lead), avoid)
        prompt, _ = self._assemble(lang, filler, [], [], q, lead)
        return Example("parametric", prompt, language.forms[lang], lang, lang, [], [], n_tokens, depth, extra)
