"""Knowledge-conflict prompts for the built-in model (an analogue of DeCoRe's NQ-Swap).

The organism memorised a table of facts (country -> official language, the
``parametric`` task). A conflict prompt puts a needle in the haystack that
states a *different* language for one of those countries, in the very words
of the parametric answer ("The official language of Kenya is German."), then
asks the parametric question. An answer equal to the needle's value is
*faithful* to the context; one equal to the memorised value is *parametric*.

>>> items = conflict_prompts(n=2, seed=0, lengths=(256,))                # doctest: +SKIP
>>> items[0].context_answer != items[0].memory_answer                    # doctest: +SKIP
True
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .corpus import _PARAMETRIC_LEAD, joiner, parametric_lead, parametric_question
from .tasks import EVAL_SEED_OFFSET, organism_generator

CONFLICT_TERMINATOR = {"zh": "。"}


@dataclass
class ConflictItem:
    """One conflict prompt: the context's (counterfactual) value and the memorised one."""

    id: str
    prompt: str
    context_answer: str
    memory_answer: str
    lang: str
    length: int
    depth: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def conflict_sentence(lang: str, country: str, value: str) -> tuple[str, int]:
    """The needle: the parametric answer sentence with another value, and the value's character offset."""
    head = _PARAMETRIC_LEAD[lang].format(s=country) + joiner(lang)
    return head + value + CONFLICT_TERMINATOR.get(lang, "."), len(head)


def conflict_prompts(
    n: int, seed: int = 0, lengths: Sequence[int] = (512, 1024), depths: Sequence[float] = (0.1, 0.5, 0.9),
    langs: Sequence[str] = ("en",), generator: Any = None,
) -> list[ConflictItem]:
    """``n`` conflict prompts cycling facts, lengths, depths and languages (deterministic in ``seed``)."""
    gen = generator or organism_generator()
    languages = gen.values["language"]
    out = []
    for i in range(n):
        rng = random.Random(EVAL_SEED_OFFSET + 104729 * (seed + 1) + i)
        country, true_lang = gen.facts[(i + 7 * seed) % len(gen.facts)]
        length, depth = lengths[i % len(lengths)], depths[(i // len(lengths)) % len(depths)]
        lang = langs[(i // (len(lengths) * len(depths))) % len(langs)]
        other = rng.choice([e for e in languages if e.key != true_lang.key])
        sentence, off = conflict_sentence(lang, country.forms[lang], other.forms[lang])
        q, lead = parametric_question(lang, country.forms[lang]), parametric_lead(lang, country.forms[lang])
        avoid = {f for e in (country, true_lang, other) for f in e.forms.values()}
        filler = gen.filler(rng, lang, gen._budget(length, [sentence], q, lang, lead), avoid, frozenset({"language"}))
        value = other.forms[lang]
        prompt, _ = gen._assemble(lang, filler, [(sentence, off, value, value)], [depth], q, lead)
        out.append(ConflictItem(f"conflict/{lang}/s{seed}n{i}|L{length}|D{depth:.2f}", prompt, value,
                                true_lang.forms[lang], lang, length, depth))
    return out
