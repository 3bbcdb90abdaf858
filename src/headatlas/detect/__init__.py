"""Detect retrieval heads: the retrieval score of every attention head over a NIAH prompt grid.

The entry point is :func:`detect` (an example in its docstring); see ``docs/detection.md`` for the
score, the two modes and the files a run writes.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "DetectConfig": ".config",
    "DetectionError": ".runner",
    "IncompleteRunError": ".runner",
    "NoRetrievalError": ".runner",
    "PromptError": ".inputs",
    "PromptItem": ".inputs",
    "ResumeMismatchError": ".runner",
    "StopTokens": "..generation",
    "copy_event_mask": ".events",
    "copy_events": ".events",
    "detect": ".runner",
    "greedy_batch": ".greedy",
    "mean_head_scores": ".events",
    "merge_shards": ".runner",
    "plot_heatmap": ".plots",
    "prompt_item": ".inputs",
    "prompt_scores": ".events",
    "resolve_shard": ".runner",
    "scores_from_samples": ".runner",
    "teacher_batch": ".teacher",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
