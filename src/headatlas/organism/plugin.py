"""The organism as a built-in model: its checkpoint, prompt source and task suite for the registry.

Declared in ``pyproject.toml`` as the ``organism`` entry point of
``headatlas.builtin_models`` (see :mod:`headatlas.builtins`).

The prompt source serves the organism's own held-out task examples (it was
trained on its synthetic corpus, not on NIAH haystacks). Those examples carry
their own needles, so ``--needles`` is refused here (a NIAH haystack, e.g.
``--haystack en``, takes the user's needles), and so is a length no example
fits in: the needle, question and answer alone take 34-53 tokens.

>>> from headatlas.builtins import get_builtin
>>> get_builtin("organism").checkpoint().name
'checkpoint'
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..builtins import BuiltinModel

NAME = "organism"
LEXICON_FILE = "lexicon.jsonl"  # a checkpoint holding it was trained like the organism (organism.train writes it)


def _checkpoint() -> Path:
    from . import ORGANISM_PATH  # read at call time: tests may point it elsewhere

    return ORGANISM_PATH


def task_suite(model_path: str | None = None) -> SimpleNamespace:
    """The organism's tasks for the checkpoint at ``model_path`` (its lexicon and tokenizer; default: shipped)."""
    from . import tasks
    from .corpus import TASKS

    generator = tasks.organism_generator(model_path)
    return SimpleNamespace(tasks=TASKS, make_eval_set=partial(tasks.make_eval_set, generator=generator),
                           exact_match_accuracy=tasks.exact_match_accuracy, answers_correct=tasks.answers_correct,
                           generate_answers=tasks.generate_answers,
                           generator=generator)


def length_slack(length: int) -> int:
    """Tokens a built-in prompt may run over its requested length: 1 %, at least 1."""
    return max(1, length // 100)


def build_prompts(model_path: str | None, tokenizer: Any, max_positions: int | None, req: Any) -> list[Any]:
    """Held-out organism examples for a :class:`~headatlas.prompt_sources.PromptRequest` (a length x depth grid).

    Raises ``ValueError`` (one line) for ``req.needles`` and for lengths the
    examples cannot fit in; every prompt is at most its requested length.
    """
    from ..prompt_sources import check_window
    from .prompts import organism_counterfactuals, organism_prompts
    from .tasks import organism_generator

    if req.needles:
        raise ValueError(f"--needles {req.needles}: the built-in model's prompts are its own task examples with their "
                         "own needles; add --haystack en (or another NIAH haystack) to use your needles")
    gen = organism_generator(model_path)
    n = len(req.lengths) * len(req.depths) * req.per_cell
    if req.kind == "transition":
        # organism_prompts cycles ordered pairs of `langs`; keep only source -> target
        prompts = organism_prompts(tokenizer, "cross", 2 * n, req.seed, req.lengths, [req.source_lang, req.target_lang],
                                   req.depths, generator=gen)
        prompts = [p for p in prompts if p.needle.lang == req.source_lang]
        prompts = organism_counterfactuals(tokenizer, prompts)  # for alignment="counterfactual"
    elif req.n_needles > 1:  # RULER's multi-key NIAH: the asked needle among others of the same relation
        prompts = organism_prompts(tokenizer, "multikey", n, req.seed, req.lengths, [req.lang], req.depths,
                                   generator=gen, n_distractors=req.n_needles - 1)
    else:
        prompts = organism_prompts(tokenizer, "mono", n, req.seed, req.lengths, [req.lang], req.depths, generator=gen)
    # the generator builds prompts of *about* the length (its pieces are counted apart: up to 1 token over);
    # a length that cannot hold the needle, question and answer overshoots by far more
    short = sorted({p.meta["requested_context_length"] for p in prompts
                    if len(p.input_ids) > p.meta["requested_context_length"] + length_slack(p.meta["requested_context_length"])})
    if short:
        need = max(len(p.input_ids) for p in prompts if p.meta["requested_context_length"] in short)
        raise ValueError(f"--lengths {','.join(map(str, short))}: the built-in model's prompts (needle, question and "
                         f"answer) need up to {need} tokens; use lengths of at least {need}")
    check_window([len(p.input_ids) for p in prompts], max_positions,
                 [p.meta.get("requested_context_length", len(p.input_ids)) for p in prompts
                  if max_positions and len(p.input_ids) > max_positions])
    return prompts


def conflict_items(model_path: str | None, n: int, seed: int, lengths: list[int]) -> list[dict[str, Any]]:
    """The knowledge-conflict task (:mod:`.conflict`) for the checkpoint at ``model_path``, as DeCoRe items."""
    from .conflict import conflict_prompts
    from .tasks import organism_generator

    return [it.to_json() for it in conflict_prompts(n, seed, lengths, generator=organism_generator(model_path))]


def entry() -> BuiltinModel:
    """The registry entry of the built-in organism."""
    return BuiltinModel(name=NAME, checkpoint=_checkpoint, prompts=build_prompts, tasks=task_suite, marker=LEXICON_FILE,
                        conflict=conflict_items)
