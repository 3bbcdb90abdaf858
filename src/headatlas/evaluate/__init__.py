"""Evaluate: what masking a head set does, on NIAH grids and on lm-eval benchmarks.

- :mod:`.niah_eval` — greedy NIAH over a length x depth grid per condition;
  exact match and ROUGE-1 recall per cell, heatmaps, resumable journal.
- :mod:`.lm_eval_backend` — ``masked-hf``, lm-eval's HF backend with heads masked.
- :mod:`.fixtures` — local datasets in the benchmarks' exact schemas, task YAMLs
  under the real task names, and the organism's tasks as lm-eval tasks.
- :mod:`.conditions` — the masking settings and conditions niah-eval and compare share.
- :mod:`.compare` — unmasked vs each head set's top-K vs random controls, with
  bootstrap intervals (:mod:`.stats`), as Markdown, CSV, JSON and a plot.

Names are imported lazily: ``import headatlas.evaluate`` does not import
lm-eval, and importing the backend registers ``masked-hf`` exactly once.

>>> from headatlas.evaluate import CompareConfig, run_compare  # doctest: +SKIP
"""

from __future__ import annotations

from ..lazy import exports, lazy_exports

_EXPORTS = exports({
    ".lm_eval_backend": "MaskedHFLM",
    ".config": "CompareConfig MaskedEvalConfig NiahEvalConfig",
    ".compare": "CompareResult run_compare",
    ".conditions": "Condition build_conditions",
    "..runs": "ResumeMismatchError",
    ".niah_eval": "evaluate_niah run_niah_eval",
    ".fixtures": "BenchmarkFixtures TASKS_DIR derive_local_task write_benchmark_fixtures write_organism_data",
    "..stats": "bootstrap_ci paired_bootstrap_ci",
})

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
