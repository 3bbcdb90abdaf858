"""Haystacks: the long natural text a needle is hidden in.

A :class:`Haystack` is a language tag plus a text (:func:`load_haystack`: a
built-in corpus, a folder, a file or a ``datasets`` dataset), repeated
cyclically when a prompt needs more tokens than it holds.

Sentence boundaries are found in the text itself (:func:`sentence_boundaries`),
never through token ids, so the same rule holds for every tokenizer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

#: Languages with a built-in filler corpus in ``headatlas/niah/corpora``.
BUILTIN_LANGS: tuple[str, ...] = ("en", "de", "fr", "es", "ru", "zh", "ja", "sw")
#: Languages written without spaces between words (character-level matching).
CJK_LANGS: frozenset[str] = frozenset({"zh", "ja"})

# Sentence end: Latin/Cyrillic '.', '!', '?', '…' (possibly followed by closing
# quotes or brackets) then whitespace or the end of the text; CJK '。！？' (and
# the half-width '｡') then optional whitespace, or closing quotes/brackets that
# are followed by whitespace, an opening quote or the end (so the '。」' of
# 「行こう。」と彼は言った is not an end). The boundary is the position *after*
# that whitespace: where the next sentence starts. "Dr. Smith" is a (harmless)
# false boundary; "3.14" is not one.
_CJK_CLOSERS = "\u300d\u300f\u201d\u2019\uff09)\\]"
_BOUNDARY = re.compile(
    r"[.!?\u2026]+[\"'\u201d\u2019\u00bb)\]]*(?:\s+|$)"
    rf"|[\u3002\uff01\uff1f\uff61]+(?:[{_CJK_CLOSERS}]+(?=[\s\u300c\u300e\u201c\uff08(]|$))?(?![{_CJK_CLOSERS}])\s*"
)

_DEFAULT_MAX_CHARS = 2_000_000


def is_cjk_char(ch: str) -> bool:
    """Whether ``ch`` is a Chinese/Japanese character or CJK punctuation.

    Such characters are written without spaces around them, so the needle
    is joined to them without a separator and ROUGE matches them one by one.

    Example:
        >>> is_cjk_char("河"), is_cjk_char("カ"), is_cjk_char("。"), is_cjk_char("a")
        (True, True, True, False)
    """
    cp = ord(ch)
    return (
        0x3000 <= cp <= 0x30FF  # CJK punctuation, hiragana, katakana
        or 0x3400 <= cp <= 0x4DBF  # CJK extension A
        or 0x4E00 <= cp <= 0x9FFF  # CJK unified ideographs
        or 0xF900 <= cp <= 0xFAFF  # CJK compatibility ideographs
        or 0xFF00 <= cp <= 0xFFEF  # half- and full-width forms
    )


def sentence_boundaries(text: str) -> list[int]:
    """Character positions where a sentence starts, in increasing order.

    A boundary follows sentence-final punctuation ('.', '!', '?', '…' followed
    by whitespace or the end of the text, or the CJK enders '。！？') and any
    whitespace after it. Position 0 is always included.

    Example:
        >>> sentence_boundaries("One. Two! Three")
        [0, 5, 10]
        >>> sentence_boundaries("一。二！三")
        [0, 2, 4]
    """
    out = [0]
    for m in _BOUNDARY.finditer(text):
        if m.end() > out[-1]:
            out.append(m.end())
    return out


@dataclass
class Haystack:
    """A filler text and its language.

    Attributes:
        lang: language code of the text (e.g. ``"en"``, ``"zh"``).
        text: the text itself (non-empty; leading and trailing whitespace is
            removed, so a context never starts or ends with it).
        source: where it came from (for metadata), e.g. ``"builtin:en"``.

    Example:
        >>> h = Haystack(lang="en", text="The sky is blue. Grass is green.")
        >>> h.lang, len(h)
        ('en', 32)
    """

    lang: str
    text: str = field(repr=False)
    source: str = "text"

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"haystack {self.source!r} is empty: it has no text to hide a needle in")
        self.text = self.text.strip()
        if not self.lang:
            raise ValueError("haystack lang must be a non-empty language code")

    def __len__(self) -> int:
        return len(self.text)

    def __repr__(self) -> str:
        return f"Haystack(lang={self.lang!r}, source={self.source!r}, chars={len(self.text)})"

    def cycled(self, n_chars: int) -> str:
        """The text repeated (joined by a blank line) and cut to ``n_chars`` characters.

        Example:
            >>> Haystack("en", "Hi.").cycled(8)
            'Hi.\\n\\nHi.'
        """
        if n_chars <= len(self.text):
            return self.text[:n_chars]
        unit = self.text + "\n\n"
        return (unit * (n_chars // len(unit) + 1))[:n_chars]

    def tokenized_text(self, tokenizer: Any, n_tokens: int) -> tuple[str, list[tuple[int, int]]]:
        """:meth:`text_for_tokens` and the character offsets of its tokens.

        The offsets come from ``tokenizer(text, add_special_tokens=False,
        return_offsets_mapping=True)``, so the tokenizer must be a fast one.

        Example:
            >>> from tokenizers import Tokenizer, models, pre_tokenizers
            >>> from transformers import PreTrainedTokenizerFast
            >>> raw = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
            >>> raw.pre_tokenizer = pre_tokenizers.Whitespace()
            >>> tok = PreTrainedTokenizerFast(tokenizer_object=raw)
            >>> text, offsets = Haystack("en", "Sun. Rain.").tokenized_text(tok, 3)
            >>> offsets[:4]
            [(0, 3), (3, 4), (5, 9), (9, 10)]
        """
        if n_tokens < 0:
            raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
        # Estimate characters per token on a sample, then grow until enough.
        sample = self.cycled(min(max(len(self.text), 2_000), 20_000))
        n_sample = len(encode(tokenizer, sample)[1])
        chars_per_token = len(sample) / max(n_sample, 1)
        n_chars = int(math.ceil(n_tokens * chars_per_token * 1.1)) + 64
        while True:
            text = self.cycled(n_chars)
            offsets = encode(tokenizer, text)[1]
            if len(offsets) > n_tokens:  # one spare token: the last may be cut mid-word
                return text, offsets
            n_chars = int(n_chars * 1.5) + 64

    def text_for_tokens(self, tokenizer: Any, n_tokens: int) -> str:
        """At least ``n_tokens`` tokens of this text for ``tokenizer``: a prefix of its cyclic repetition
        (joined by a blank line); :meth:`tokenized_text` without the offsets."""
        return self.tokenized_text(tokenizer, n_tokens)[0]


def require_fast(tokenizer: Any) -> None:
    """Refuse a tokenizer without offsets: NIAH prompts locate the needle through ``return_offsets_mapping``."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer: NIAH prompts need "
            "return_offsets_mapping=True to locate the needle; load it with use_fast=True"
        )


def encode(tokenizer: Any, text: str, add_special_tokens: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
    """The token ids of ``text`` and each token's character range (the offsets of a fast tokenizer)."""
    require_fast(tokenizer)
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True, verbose=False)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _read_dir(path: Path) -> str:
    files = sorted(path.glob("*.txt"))
    if not files:
        raise ValueError(f"haystack directory {str(path)!r} contains no *.txt files")
    return "\n\n".join(f.read_text(encoding="utf-8").strip() for f in files)


def _read_dataset(spec: str, *, text_column: str, split: str, max_chars: int | None, streaming: bool) -> str:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "dataset haystacks need the `datasets` package: pip install 'headatlas[datasets]'"
        ) from e
    kind, _, rest = spec.partition(":")
    if not rest:
        raise ValueError(f"haystack source {spec!r}: expected 'dataset:NAME[:CONFIG]' or 'dataset-disk:PATH'")
    if kind == "dataset":
        name, _, config = rest.partition(":")
        ds = datasets.load_dataset(name, config or None, split=split, streaming=streaming)
    else:
        ds = datasets.load_from_disk(rest)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"dataset at {rest!r} has no split {split!r}; splits: {sorted(ds)}")
            ds = ds[split]
    columns = ds.column_names
    if columns is not None and text_column not in columns:
        raise ValueError(f"dataset {rest!r} has no column {text_column!r}; columns: {columns}")
    chunks: list[str] = []
    total = 0
    for row in ds.select_columns([text_column]):
        value = row[text_column]
        if isinstance(value, str) and value.strip():
            chunks.append(value.strip())
            total += len(chunks[-1])
            if max_chars is not None and total >= max_chars:
                break
    return "\n\n".join(chunks)


def load_haystack(
    source: str | Path,
    lang: str = "en",
    *,
    text_column: str = "text",
    split: str = "train",
    max_chars: int | None = _DEFAULT_MAX_CHARS,
    streaming: bool = False,
) -> Haystack:
    """Load a haystack.

    Args:
        source: one of
            - a built-in language code (:data:`BUILTIN_LANGS`): the shipped
              corpus ``corpora/{lang}.txt`` (its language overrides ``lang``);
            - a directory: all its ``*.txt`` files, in sorted order, joined by
              a blank line (write ``./en`` for a directory named like a code);
            - a text file;
            - ``"dataset:NAME[:CONFIG]"``: ``datasets.load_dataset(NAME, CONFIG,
              split=split)``, the ``text_column`` rows joined by a blank line;
            - ``"dataset-disk:PATH"``: ``datasets.load_from_disk(PATH)``.
        lang: language of a directory, file or dataset source.
        text_column: the dataset column holding the text.
        split: the dataset split.
        max_chars: stop reading dataset rows once this many characters are
            collected (``None``: read all); a NIAH context of 128K tokens
            needs well under 1M characters.
        streaming: pass ``streaming=True`` to ``load_dataset`` (large hub
            datasets: only the rows read are downloaded).

    Raises:
        ValueError: unknown source or language, empty corpus, missing column.

    Example:
        >>> h = load_haystack("de")
        >>> h.lang, len(h.text) > 6000
        ('de', True)
    """
    src = str(source)
    if src.startswith(("dataset:", "dataset-disk:")):
        text = _read_dataset(
            src, text_column=text_column, split=split, max_chars=max_chars, streaming=streaming
        )
        return Haystack(lang=lang, text=text, source=src)
    if src in BUILTIN_LANGS:
        text = resources.files("headatlas.niah").joinpath("corpora", f"{src}.txt").read_text("utf-8")
        return Haystack(lang=src, text=text, source=f"builtin:{src}")
    path = Path(src)
    if path.is_dir():
        return Haystack(lang=lang, text=_read_dir(path), source=str(path))
    if path.is_file():
        return Haystack(lang=lang, text=path.read_text(encoding="utf-8"), source=str(path))
    raise ValueError(
        f"unknown haystack source {src!r}: not a built-in language ({', '.join(BUILTIN_LANGS)}), "
        "an existing directory or text file, 'dataset:NAME[:CONFIG]' or 'dataset-disk:PATH'"
    )
