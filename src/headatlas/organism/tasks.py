"""Held-out evaluation sets for the organism and exact-match accuracy.

Evaluation examples use the held-out key names (never seen in training), a
seed space disjoint from training, and sweep lengths x depths x languages
(for ``cross``: x ordered language pairs) deterministically.

>>> from headatlas.organism import load_organism
>>> model, tok = load_organism()
>>> exs = make_eval_set("mono", n=4, seed=0, lengths=(128,))
>>> exact_match_accuracy(model, tok, exs) >= 0.75
True
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..generation import StopTokens, greedy_answers
from ..lexicon import Lexicon
from .corpus import TASKS, CorpusGenerator, Example

EVAL_SEED_OFFSET = 1_000_003  # eval seeds never collide with training seeds (which are small)
DEFAULT_LENGTHS: tuple[int, ...] = (128, 256, 512, 1024)
DEFAULT_DEPTHS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


@lru_cache(maxsize=4)
def _generator(path: str) -> CorpusGenerator:
    from transformers import AutoTokenizer

    from .tokenizer import make_generator
    from .train import LEXICON_FILE

    tok = AutoTokenizer.from_pretrained(path)
    return make_generator(Lexicon.from_jsonl(Path(path) / LEXICON_FILE), tok)


def organism_generator(path: str | Path | None = None) -> CorpusGenerator:
    """The corpus generator of a trained organism checkpoint (its lexicon and tokenizer)."""
    from . import ORGANISM_PATH

    return _generator(str(path or ORGANISM_PATH))


def make_eval_set(
    task: str, n: int, seed: int, lengths: Sequence[int] = DEFAULT_LENGTHS, langs: Sequence[str] | None = None,
    depths: Sequence[float] = DEFAULT_DEPTHS, generator: CorpusGenerator | None = None,
    n_distractors: int | None = None,
) -> list[Example]:
    """``n`` held-out examples of ``task``, cycling lengths, then depths, then languages.

    ``langs`` defaults to all languages of the lexicon; for ``cross`` the
    cycle runs over ordered pairs of different languages. ``n_distractors``
    (``multikey``): needles beside the asked one (default: 2 or 3, drawn).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    gen = generator or organism_generator()
    langs = tuple(langs or gen.langs)
    pairs = list(itertools.permutations(langs, 2)) if task == "cross" else [(x, x) for x in langs]
    if not pairs:
        raise ValueError("cross-lingual examples need at least two languages")
    out = []
    for i in range(n):
        length = lengths[i % len(lengths)]
        depth = depths[(i // len(lengths)) % len(depths)]
        a, b = pairs[(i // (len(lengths) * len(depths)) + i) % len(pairs)]
        rng = random.Random(EVAL_SEED_OFFSET + 7919 * seed + i)
        out.append(gen.example(task, rng, length, depth, a, b if task == "cross" else None, split="eval",
                               n_distractors=n_distractors))
    return out


def generate_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], batch_size: int = 8,
    max_new_tokens: int | None = None,
) -> list[str]:
    """Greedy answers (text up to the first newline or EOS, stripped), in input order.

    Batched by similar length with left padding (:func:`headatlas.generation.generate`).
    """
    if max_new_tokens is None:
        longest = max(len(tokenizer(" " + ex.answer, add_special_tokens=False)["input_ids"]) for ex in examples)
        max_new_tokens = longest + 4
    stops = StopTokens.from_tokenizer(model, tokenizer)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt))
    out: list[str] = [""] * len(examples)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        seqs = [tokenizer(examples[i].prompt)["input_ids"] for i in idx]
        for i, text in zip(idx, greedy_answers(model, tokenizer, seqs, max_new_tokens, stops), strict=True):
            out[i] = text
    return out


def answers_correct(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], batch_size: int = 8
) -> list[bool]:
    """Per example: is its greedy answer ``example.answer`` (both stripped)?"""
    preds = generate_answers(model, tokenizer, examples, batch_size)
    return [p == ex.answer.strip() for p, ex in zip(preds, examples, strict=True)]


def exact_match_accuracy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], batch_size: int = 8
) -> float:
    """Share of examples whose greedy answer equals ``example.answer`` (both stripped)."""
    if not examples:
        raise ValueError("no examples")
    return sum(answers_correct(model, tokenizer, examples, batch_size)) / len(examples)
