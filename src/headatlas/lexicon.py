"""A parallel multilingual lexicon built from CLDR data (via Babel), or read from JSONL.

Each :class:`LexEntry` is one concept (a country, a language, a month, a
weekday, a city) with its written form in every language of the lexicon::

    LexEntry(category="country", key="DE",
             forms={"en": "Germany", "de": "Deutschland", "zh": "德国", "sw": "Ujerumani"})

:func:`load_lexicon` keeps an entry only if every language has a form and the
forms of *different* languages differ (case-folded), so that a translated
answer is never a copy of its source. Forms are kept short and plain (no
digits, brackets, commas; at most three words).

A user-supplied lexicon is one JSON object per line, the same shape as above
(:meth:`Lexicon.from_jsonl` / :meth:`Lexicon.to_jsonl`).

>>> lex = load_lexicon()
>>> lex.translate("Germany", "en", "de")
'Deutschland'
>>> sorted(lex.categories())
['city', 'country', 'language', 'month', 'weekday']
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

DEFAULT_LANGS: tuple[str, ...] = ("en", "de", "zh", "sw")

# forms we refuse: digits, brackets, punctuation that would clash with prompts
_BAD_FORM = re.compile(r"[\d()\[\],;:&/.'’\"?!>|（），、]|\s-|-\s")
# CLDR pseudo-territories and groupings that are not countries
_NOT_COUNTRIES = {"EU", "EZ", "UN", "QO", "ZZ", "XA", "XB", "XK", "AQ", "IC", "EA", "DG", "CP", "TA", "AC"}


@dataclass(frozen=True)
class LexEntry:
    """One concept and its form in each language (``forms[lang]``)."""

    category: str
    key: str
    forms: dict[str, str]


@dataclass
class Lexicon:
    """An ordered collection of :class:`LexEntry` with lookups by category and form."""

    langs: tuple[str, ...]
    entries: list[LexEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_form: dict[tuple[str, str], LexEntry] = {}
        for e in self.entries:
            missing = [lang for lang in self.langs if lang not in e.forms]
            if missing:
                raise ValueError(f"entry {e.category}/{e.key} lacks forms for {missing}")
            for lang in self.langs:
                self._by_form.setdefault((lang, e.forms[lang].casefold()), e)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[LexEntry]:
        return iter(self.entries)

    def categories(self) -> list[str]:
        """Categories present, in first-seen order."""
        return list(dict.fromkeys(e.category for e in self.entries))

    def by_category(self, category: str) -> list[LexEntry]:
        """All entries of one category, in lexicon order."""
        return [e for e in self.entries if e.category == category]

    def get(self, category: str, key: str) -> LexEntry:
        """The entry with this category and key (KeyError if absent)."""
        for e in self.entries:
            if e.category == category and e.key == key:
                return e
        raise KeyError(f"{category}/{key}")

    def lookup(self, word: str, lang: str) -> LexEntry | None:
        """The entry whose ``lang`` form is ``word`` (case-insensitive), or None."""
        return self._by_form.get((lang, word.casefold()))

    def translate(self, word: str, src: str, tgt: str) -> str:
        """Translate ``word`` from language ``src`` to ``tgt``.

        >>> load_lexicon().translate("Montag", "de", "zh")
        '星期一'
        """
        entry = self.lookup(word, src)
        if entry is None:
            raise KeyError(f"{word!r} is not a {src} form in this lexicon")
        return entry.forms[tgt]

    def subset(self, keep: Iterable[LexEntry]) -> Lexicon:
        """A new lexicon with only the given entries (order of ``self`` kept)."""
        ids = {(e.category, e.key) for e in keep}
        return Lexicon(self.langs, [e for e in self.entries if (e.category, e.key) in ids])

    def to_jsonl(self, path: str | Path) -> None:
        """Write one ``{"category", "key", "forms"}`` object per line."""
        lines = [json.dumps({"category": e.category, "key": e.key, "forms": e.forms}, ensure_ascii=False) for e in self]
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")

    @classmethod
    def from_jsonl(cls, path: str | Path, langs: Iterable[str] | None = None) -> Lexicon:
        """Read a JSONL lexicon; ``langs`` defaults to the languages every entry has.

        Entries without a form in one of ``langs`` are dropped.
        """
        rows = []
        for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if not {"category", "key", "forms"} <= obj.keys():
                raise ValueError(f"{path}:{n}: need keys category, key, forms")
            rows.append(LexEntry(str(obj["category"]), str(obj["key"]), dict(obj["forms"])))
        if langs is None:
            common = set.intersection(*(set(r.forms) for r in rows)) if rows else set()
            langs = [lang for lang in rows[0].forms if lang in common] if rows else []
        langs = tuple(langs)
        return cls(langs, [r for r in rows if all(lang in r.forms for lang in langs)])


def _clean(form: str | None) -> str | None:
    if not form:
        return None
    form = form.strip()
    if _BAD_FORM.search(form) or len(form.split()) > 3 or len(form) > 24:
        return None
    return form


def _babel_forms(langs: tuple[str, ...]) -> Iterator[tuple[str, str, dict[str, str | None]]]:
    from babel import Locale
    from babel.core import get_global
    from babel.dates import get_timezone_location

    locs = {lang: Locale.parse(lang) for lang in langs}
    en = Locale.parse("en")
    for code in sorted(en.territories):
        if len(code) == 2 and code.isalpha() and code not in _NOT_COUNTRIES:
            yield "country", code, {lang: loc.territories.get(code) for lang, loc in locs.items()}
    for code in sorted(en.languages):
        if len(code) == 2 and code.isalpha():
            yield "language", code, {lang: loc.languages.get(code) for lang, loc in locs.items()}
    for m in range(1, 13):
        yield "month", f"{m:02d}", {lang: loc.months["format"]["wide"].get(m) for lang, loc in locs.items()}
    for d, name in enumerate(("mon", "tue", "wed", "thu", "fri", "sat", "sun")):
        yield "weekday", name, {lang: loc.days["format"]["wide"].get(d) for lang, loc in locs.items()}
    for zone in sorted(get_global("zone_territories")):
        forms: dict[str, str | None] = {}
        for lang in langs:
            try:
                forms[lang] = get_timezone_location(zone, locale=lang, return_city=True)
            except (LookupError, ValueError):
                forms[lang] = None
        yield "city", zone, forms


@lru_cache(maxsize=8)
def _load_cached(langs: tuple[str, ...], distinct: bool) -> tuple[LexEntry, ...]:
    out: list[LexEntry] = []
    seen: dict[tuple[str, str], str] = {}  # (lang, folded form) -> key: keep forms unambiguous
    for category, key, raw in _babel_forms(langs):
        clean = {lang: _clean(f) for lang, f in raw.items()}
        if any(f is None for f in clean.values()):
            continue
        folded = [f.casefold() for f in clean.values()]
        if distinct and len(set(folded)) < len(folded):  # two languages share a form
            continue
        if any((lang, f.casefold()) in seen for lang, f in clean.items()):
            continue
        for lang, f in clean.items():
            seen[(lang, f.casefold())] = key
        out.append(LexEntry(category, key, clean))
    return tuple(out)


def load_lexicon(langs: Iterable[str] = DEFAULT_LANGS, distinct: bool = True) -> Lexicon:
    """Build the parallel lexicon for ``langs`` from Babel's CLDR data.

    Categories: ``country`` (CLDR territory names), ``language`` (ISO 639-1
    language names), ``month`` and ``weekday`` (wide format names), ``city``
    (time-zone exemplar cities). Kept: entries with a clean form in every
    language, pairwise different across languages, and not colliding with an
    earlier entry's form. Deterministic (sorted CLDR codes). ``distinct=False``
    drops the cross-language difference rule (e.g. for place names in filler
    text, where "Nairobi" is "Nairobi" in three languages).
    """
    langs = tuple(langs)
    if len(langs) < 2:
        raise ValueError("a parallel lexicon needs at least two languages")
    return Lexicon(langs, list(_load_cached(langs, distinct)))
