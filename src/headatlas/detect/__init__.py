"""Detect retrieval heads: the retrieval score of every attention head over a NIAH prompt grid.

The entry point is :func:`detect` (an example in its docstring); see ``docs/detection.md`` for the
score, the two modes and the files a run writes.
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
from .scorers import SCORERS, BatchContext, Scorer, scorer_for
from .teacher import teacher_batch

__all__ = [
    "SCORERS", "BatchContext", "DetectConfig", "Scorer", "scorer_for", "DetectionError", "IncompleteRunError", "NoRetrievalError", "PromptError", "PromptItem",
    "ResumeMismatchError", "StopTokens", "copy_event_mask", "copy_events", "detect", "greedy_batch",
    "mean_head_scores", "merge_shards", "plot_heatmap", "prompt_item", "prompt_scores", "resolve_shard",
    "scores_from_samples", "teacher_batch",
]
