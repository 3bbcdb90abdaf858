"""The settings of ``headatlas languages`` (light: the command line builds its options from them)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import DecodingConfig, GridConfig, OutConfig, RunConfig, check_lang, like, setting, split_list
from ..detect.config import ALIGNMENTS, MODES, DetectConfig


def _transitions(text: str | list[tuple[str, str]]) -> list[tuple[str, str]]:
    if not isinstance(text, str):
        return list(text)
    pairs = []
    for item in split_list(text):
        src, sep, tgt = item.partition(":")
        if not sep or not src or not tgt:
            raise ValueError(f"--transitions: {item!r} must be SOURCE:TARGET, e.g. en:de")
        pairs.append((src, tgt))
    return pairs


@dataclass(kw_only=True)
class LanguagesConfig(OutConfig, GridConfig):
    """Per-language detection runs, their sharing, and retrieval-transition runs."""

    seed: int = like(RunConfig, "seed", 0)
    langs: list[str] = setting(help="Comma-separated languages.", factory=lambda: ["en", "de", "zh", "sw"],
                               parse=split_list, kind="lang")
    transitions: list[tuple[str, str]] = setting(help="SOURCE:TARGET pairs for retrieval-transition heads, e.g. "
                                                 "en:de,en:zh.", factory=list, parse=_transitions, kind="lang")
    top_k: int = setting(20, "K of the top-K sets compared across languages.", min=1)
    mode: str = like(DetectConfig, "mode", "teacher")
    alignment: str = like(DetectConfig, "alignment", "lexicon")
    batch_size: int | str = like(DecodingConfig, "batch_size", "auto")
    lengths: str = like(GridConfig, "lengths", "128,256,512,1024")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.haystack is None:  # every language checked before the first one runs
            check_lang("--langs", self.langs)
            check_lang("--transitions", [lang for pair in self.transitions for lang in pair])
        if self.mode not in MODES or self.alignment not in ALIGNMENTS:
            raise ValueError(f"mode must be one of {MODES}, alignment one of {ALIGNMENTS}")
