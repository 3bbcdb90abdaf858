"""Detect retrieval heads: the retrieval score of every attention head over a NIAH prompt grid.

The entry point is :func:`detect` (an example in its docstring); see ``docs/detection.md`` for the
score, the two modes and the files a run writes.
"""

from ..lazy import exports, lazy_exports

_EXPORTS = exports({
    ".config": "DetectConfig",
    ".runner": "DetectionError IncompleteRunError NoRetrievalError ResumeMismatchError detect merge_shards "
    "resolve_shard",
    ".inputs": "PromptError PromptItem prompt_item",
    "..generation": "StopTokens",
    ".events": "copy_event_mask copy_events mean_head_scores prompt_scores",
    ".greedy": "greedy_batch",
    ".plots": "plot_heatmap",
    ".scorers": "SCORERS BatchContext Scorer mean_of_values scorer_for scores_from_samples",
    ".teacher": "teacher_batch",
})

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
