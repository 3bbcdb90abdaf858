"""Where detection prompts come from: built-in/user haystacks and needles, or a built-in model's own prompts.

A built-in model (:mod:`headatlas.builtins`; the organism was trained on
its own synthetic corpus) brings its own prompt source, also used for any
checkpoint trained like it; every other model gets NIAH grids from
:mod:`headatlas.niah`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .builtins import builtin_for, get_builtin

DEFAULT_MAX_LENGTH, DEFAULT_N_LENGTHS = 8000, 8


@dataclass
class PromptRequest:
    """What prompts to build: a grid, a kind, and languages.

    ``lengths`` None asks for the default grid (:func:`default_lengths`).
    ``lang`` is the monolingual language; ``source_lang``/``target_lang`` the
    needle and answer languages of a transition (cross-lingual) grid. For the
    built-in model, ``per_cell`` examples are drawn per length x depth cell.
    """

    lengths: list[int] | None
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
    n_needles: int = 1  # > 1: multi-key NIAH (that many needles, the question asks one); built-in models only


def default_lengths(max_positions: int | None) -> list[int]:
    """The default grid: 8 lengths from 1000 to 8000, scaled down to fit the model's window.

    The longest length is ``stop = min(8000, floor(0.9 * window))`` (room for
    the question, answer and any chat template), the shortest ``stop // 8``
    (1000 at 8000), 8 lengths evenly spaced between them.

    >>> default_lengths(None), default_lengths(2048)
    ([1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000], [230, 460, 691, 921, 1152, 1382, 1613, 1843])
    """
    stop = DEFAULT_MAX_LENGTH if not max_positions else min(DEFAULT_MAX_LENGTH, int(0.9 * max_positions))
    start = max(1, stop // 8)
    from .niah import parse_lengths

    return parse_lengths(f"{start}:{stop}:{DEFAULT_N_LENGTHS}")


def check_window(n_tokens: Sequence[int], max_positions: int | None, asked: Sequence[Any] = (),
                 hint: str = "use shorter lengths (--lengths)") -> None:
    """Refuse prompts longer than the model's window: the one check of detect, niah-eval, kv-compress and decore.

    ``n_tokens``: each prompt's length in tokens; ``asked``: the lengths they were built for, named in
    the message when given. Raises ``ValueError`` in one line; ``max_positions`` None checks nothing.

    >>> check_window([100, 90], 128)
    >>> check_window([100, 130], 128, asked=[128])
    Traceback (most recent call last):
    ...
    ValueError: 1 prompts of length 128 (up to 130 tokens) exceed the model's window of 128 tokens; use shorter lengths (--lengths)
    """
    if not max_positions:
        return
    too_long = [n for n in n_tokens if n > max_positions]
    if too_long:
        lengths = f" of length {', '.join(map(str, sorted(set(asked))))}" if asked else ""
        raise ValueError(f"{len(too_long)} prompts{lengths} (up to {max(too_long)} tokens) exceed the model's "
                         f"window of {max_positions} tokens; {hint}")


def build_prompts(model_name: str, tokenizer: Any, max_positions: int | None, req: PromptRequest) -> list[Any]:
    """NIAH prompts for ``req``: a built-in model's own prompts or a haystack x needle grid.

    ``req.lengths`` None is the :func:`default_lengths` grid of the window (set on ``req``).
    A built-in model (or a checkpoint trained like one) gets its own prompts
    unless another haystack is asked for; ``--haystack NAME`` of a built-in
    model asks for that model's prompts.
    """
    transition = req.kind == "transition"
    if transition and not (req.source_lang and req.target_lang):
        raise ValueError("the transition score needs --source-lang and --target-lang")
    if transition and req.source_lang == req.target_lang:
        raise ValueError("source and target language must differ for retrieval-transition heads")
    if req.lengths is None:
        req.lengths = default_lengths(max_positions)
    builtin = builtin_for(model_name) if req.haystack is None else get_builtin(req.haystack)
    if builtin is not None and builtin.prompts is not None:
        path = None if model_name == builtin.name else model_name
        return builtin.prompts(path, tokenizer, max_positions, req)
    if req.n_needles != 1:
        raise ValueError(f"--needle-counts {req.n_needles}: multi-needle prompts come from a built-in model's prompt "
                         "source (e.g. --model organism); the haystack NIAH grid has one needle a prompt")

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
    check_window([len(p.input_ids) for p in prompts], max_positions,  # the question and any chat template add tokens
                 sorted({p.context_length for p in prompts if len(p.input_ids) > (max_positions or 0)}))
    if transition and not req.needles:  # built-in needles have a target-language twin: the counterfactual
        from .niah.prompts import builtin_counterfactual

        prompts = [builtin_counterfactual(tokenizer, p) for p in prompts]
    return prompts
