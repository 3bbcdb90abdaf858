"""General RetMask prompts from a built-in model's own sources: its training corpus and every task kind.

The paper samples its pairs from a general chat set, never from the evaluation tasks. A built-in model's
general prompts are what it was trained on: plain corpus passages (which it continues) and the prompts of
each of its task kinds, in every language of its lexicon and at lengths up to its trained window. Task
prompts are drawn from the *training* key-name split, so no prompt is an evaluation item (those use the
held-out names and another seed space).

The model is reached through its registry entry (:func:`headatlas.builtins.task_suite`): ``generator`` is
its corpus generator (``langs``, ``tasks``-kind ``example(task, rng, n_tokens, split=...)`` and
``passage(rng, lang, n_tokens)``); nothing here names a model.

>>> from headatlas.builtins import task_suite
>>> rows = general_prompts(task_suite("organism"), 12, seed=0, lengths=(128,))
>>> sorted({r["kind"] for r in rows})
['corpus', 'cross', 'mono', 'multihop', 'multikey', 'parametric']
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

CORPUS = "corpus"  # a plain training-corpus passage: the response is its continuation


def kind_cycle(tasks: Sequence[str], corpus_share: float = 1 / 3) -> list[str]:
    """One period of prompt kinds: the corpus ``corpus_share`` of the time, each task kind equally often.

    >>> kind_cycle(("a", "b"), 1 / 3)
    ['corpus', 'a', 'b']
    """
    if not 0 <= corpus_share < 1:
        raise ValueError(f"corpus_share must be in [0, 1), got {corpus_share}")
    n_corpus = round(len(tasks) * corpus_share / (1 - corpus_share))
    return [CORPUS] * n_corpus + list(tasks)


def cut_passage(text: str, rng: random.Random, keep: float = 0.6) -> str:
    """``text`` cut at a random word boundary (any character where words are not spaced) in its last
    ``1 - keep`` part, so the response continues a sentence instead of starting a new paragraph.

    >>> cut_passage("a b c d e f g h i j", random.Random(0))
    'a b c d e f g h i'
    """
    start = int(len(text) * keep)
    spaces = [i for i in range(start, len(text)) if text[i] == " "]
    cuts = spaces or list(range(max(start, 1), len(text)))
    return text[: rng.choice(cuts)] if cuts else text


def general_prompts(suite: Any, n: int, seed: int, lengths: Sequence[int], corpus_share: float = 1 / 3,
                    start: int = 0) -> list[dict[str, Any]]:
    """``n`` prompt records (``id``, ``prompt``, ``kind``, ``lang``, ``length``, ``answer``) from a task suite.

    Kinds cycle through :func:`kind_cycle`, lengths through ``lengths`` (coprime periods mix them); each
    record has its own ``random.Random`` (``seed``, index), so the first ``m`` records of ``n`` are the
    records of ``m`` and a longer list extends a shorter one (``start`` skips records). ``answer`` is the
    task answer (``None`` for a corpus passage).
    """
    if n < 0 or not lengths:
        raise ValueError("need n >= 0 and at least one length")
    gen = suite.generator
    kinds = kind_cycle(tuple(suite.tasks), corpus_share)
    rows = []
    for i in range(start, start + n):
        rng = random.Random(f"retmask-general/{seed}/{i}")
        kind, length = kinds[i % len(kinds)], lengths[(i // len(kinds)) % len(lengths)]
        if kind == CORPUS:
            lang = rng.choice(list(gen.langs))
            prompt, answer = cut_passage(gen.passage(rng, lang, length), rng), None
        else:
            ex = gen.example(kind, rng, length, split="train")
            prompt, answer, lang = ex.prompt, ex.answer, ex.lang_needle
        rows.append({"id": f"{kind}-{i}", "prompt": prompt, "kind": kind, "lang": lang, "length": length,
                     "answer": answer})
    return rows


def composition(rows: Iterable[Mapping[str, Any]], prompts: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """Pairs (or prompts) by kind, language and length, looked up in ``prompts`` (id -> prompt record)."""
    counts: dict[str, Counter] = {"kind": Counter(), "lang": Counter(), "length": Counter()}
    for row in rows:
        rec = prompts[row["id"]]
        for key, counter in counts.items():
            counter[str(rec[key])] += 1
    return {key: dict(sorted(c.items())) for key, c in counts.items()}
