"""Detect retrieval heads: the retrieval score of every attention head over a NIAH prompt grid.

>>> from retrieval_heads import load_model
>>> from retrieval_heads.detect import DetectConfig, detect
>>> from retrieval_heads.niah import build_grid, load_haystack, load_needles  # doctest: +SKIP
>>> model, tokenizer, spec = load_model("organism")  # doctest: +SKIP
>>> prompts = build_grid(tokenizer, load_haystack("en", "en"), load_needles(None, "en"),
...                      lengths=[1000, 2000], depths=[0.0, 0.5, 1.0])  # doctest: +SKIP
>>> scores = detect(model, tokenizer, prompts, DetectConfig(mode="greedy"), out_dir="runs/organism")  # doctest: +SKIP
>>> scores.top_k(10)  # doctest: +SKIP

See ``docs/detection.md`` for the score, the two modes and the files a run writes.
"""

from ..generation import StopTokens
from .config import DetectConfig
from .events import copy_event_mask, copy_events, mean_head_scores, prompt_scores
from .greedy import greedy_batch
from .inputs import PromptError, PromptItem, prompt_item
from .plots import plot_heatmap
from .runner import (
    DetectionError,
    IncompleteRunError,
    NoRetrievalError,
    ResumeMismatchError,
    detect,
    merge_shards,
    resolve_shard,
    scores_from_samples,
)
from .teacher import teacher_batch

__all__ = [
    "DetectConfig",
    "DetectionError",
    "IncompleteRunError",
    "NoRetrievalError",
    "PromptError",
    "PromptItem",
    "ResumeMismatchError",
    "StopTokens",
    "copy_event_mask",
    "copy_events",
    "detect",
    "greedy_batch",
    "mean_head_scores",
    "merge_shards",
    "plot_heatmap",
    "prompt_item",
    "prompt_scores",
    "resolve_shard",
    "scores_from_samples",
    "teacher_batch",
]
