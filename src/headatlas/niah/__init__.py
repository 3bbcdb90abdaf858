"""Needle-in-a-haystack prompts: haystacks, needles, prompt construction, ROUGE.

The pipeline's data stage::

    from headatlas.niah import load_haystack, load_needles, build_grid, parse_lengths, parse_depths

    haystack = load_haystack("en")            # or a directory, "dataset:NAME[:CONFIG]"
    needles = load_needles(lang="en")         # or a JSONL file
    prompts = build_grid(tokenizer, haystack, needles, parse_lengths("1000:8000:8"), parse_depths(10))
    p = prompts[0]
    p.input_ids, p.answer_token_span          # the span a retrieval head copies from

See docs/niah.md for the insertion rule, span location and file formats.
"""

from .haystack import BUILTIN_LANGS, CJK_LANGS, Haystack, load_haystack, sentence_boundaries
from .needles import Needle, cross_lingual_needles, load_needles
from .prompts import (
    DEFAULT_TEMPLATE,
    NiahPrompt,
    build_grid,
    build_prompt,
    length_tolerance,
    parse_depths,
    parse_lengths,
    prompt_id,
    rouge1_recall,
)

__all__ = [
    "BUILTIN_LANGS", "CJK_LANGS", "DEFAULT_TEMPLATE", "Haystack", "Needle", "NiahPrompt", "build_grid",
    "build_prompt", "cross_lingual_needles", "length_tolerance", "load_haystack", "load_needles",
    "parse_depths", "parse_lengths", "prompt_id", "rouge1_recall", "sentence_boundaries",
]
