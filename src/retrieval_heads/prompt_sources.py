"""Where detection prompts come from: built-in/user haystacks and needles, or the organism's own tasks.

The built-in model was trained on its own synthetic corpus, so for it (and
for any checkpoint that carries the organism's ``lexicon.jsonl``) the
prompts are held-out organism examples; every other model gets NIAH grids
from :mod:`retrieval_heads.niah`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

ORGANISM_SOURCE = "organism"


@dataclass
class PromptRequest:
    """What prompts to build: a grid, a kind, and languages.

    ``lang`` is the monolingual language; ``source_lang``/``target_lang`` the
    needle and answer languages of a transition (cross-lingual) grid. For the
    built-in model, ``per_cell`` examples are drawn per length x depth cell.
    """

    lengths: list[int]
    depths: list[float]
    kind: str = "retrieval"
    lang: str = "en"
    source_lang: str | None = None
    target_lang: str | None = None
    needles: str | None = None
    haystack: str | None = None
    chat_template: bool = False
    per_cell: int = 3
    seed: int = 0


def uses_organism_prompts(model_name: str, haystack: str | None) -> bool:
    """True for the built-in model (or a checkpoint trained like it) unless another haystack is asked for."""
    if haystack is not None:
        return haystack == ORGANISM_SOURCE
    if model_name == ORGANISM_SOURCE:
        return True
    from .organism.train import LEXICON_FILE

    return (Path(model_name) / LEXICON_FILE).is_file()


def build_prompts(model_name: str, tokenizer: Any, max_positions: int | None, req: PromptRequest) -> list[Any]:
    """NIAH prompts for ``req``: organism task examples or a haystack x needle grid."""
    transition = req.kind == "transition"
    if transition and not (req.source_lang and req.target_lang):
        raise ValueError("the transition score needs --source-lang and --target-lang")
    if transition and req.source_lang == req.target_lang:
        raise ValueError("source and target language must differ for retrieval-transition heads")
    if uses_organism_prompts(model_name, req.haystack):
        from .model_spec import resolve_model_path
        from .organism.prompts import organism_prompts
        from .organism.tasks import organism_generator

        gen = organism_generator(resolve_model_path(model_name))
        n = len(req.lengths) * len(req.depths) * req.per_cell
        if transition:
            # organism_prompts cycles ordered pairs of `langs`; keep only source -> target
            prompts = organism_prompts(
                tokenizer, "cross", 2 * n, req.seed, req.lengths, [req.source_lang, req.target_lang],
                req.depths, generator=gen,
            )
            prompts = [p for p in prompts if p.needle.lang == req.source_lang]
            from .organism.prompts import organism_counterfactuals

            prompts = organism_counterfactuals(tokenizer, prompts)  # for alignment="counterfactual"
        else:
            prompts = organism_prompts(tokenizer, "mono", n, req.seed, req.lengths, [req.lang], req.depths, generator=gen)
        too_long = [p for p in prompts if max_positions and len(p.input_ids) > max_positions]
        if too_long:
            asked = sorted({p.meta.get("requested_context_length", len(p.input_ids)) for p in too_long})
            raise ValueError(f"{len(too_long)} prompts of length {', '.join(map(str, asked))} (up to "
                             f"{max(len(p.input_ids) for p in too_long)} tokens) exceed the model's window of "
                             f"{max_positions} tokens; use shorter lengths (--lengths)")
        return prompts

    from .niah import build_grid, cross_lingual_needles, load_haystack, load_needles

    if transition:
        if req.needles:
            needles = [n for n in load_needles(req.needles, lang=req.source_lang) if n.target_lang == req.target_lang]
            if not needles:
                raise ValueError(f"{req.needles} holds no needle with target_lang={req.target_lang!r}")
        else:
            needles = cross_lingual_needles(req.source_lang, req.target_lang)
        hay_lang = req.source_lang
    else:
        needles = load_needles(req.needles, lang=req.lang)
        hay_lang = req.lang
    hay = load_haystack(req.haystack or hay_lang, lang=hay_lang)
    prompts = build_grid(
        tokenizer, hay, needles, req.lengths, req.depths, chat_template=req.chat_template, max_model_length=max_positions
    )
    if transition and not req.needles:  # built-in needles have a target-language twin: the counterfactual
        from .niah.prompts import builtin_counterfactual

        prompts = [builtin_counterfactual(tokenizer, p) for p in prompts]
    return prompts
