"""The settings and conditions of a run over one model's head scores (``kv-compress``, ``decore``).

Light (no torch): the command line builds its options from :class:`HeadRunConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import (
    ANSWER_TOKENS,
    HeadSetConfig,
    ModelConfig,
    RunConfig,
    like,
    parse_head_sets,
    run_identity,
    setting,
)


def one_head_set(value: str | list[str]) -> str:
    """``[NAME=]FILE`` (given once) -> FILE."""
    sets = parse_head_sets([value] if isinstance(value, str) else value)
    if len(sets) != 1:
        raise ValueError(f"--heads: give one score file, got {len(sets)}")
    path = next(iter(sets.values()))
    if not Path(path).is_file():
        raise ValueError(f"--heads: no file {path}")
    return path


@dataclass(kw_only=True)
class HeadRunConfig(ModelConfig, RunConfig):
    """Settings every run over a model's head scores shares; all recorded, :func:`run_identity` compared."""

    heads: str = setting(..., "[NAME=]head_scores.json of the model (from `detect`).", parse=one_head_set,
                         kind="heads")
    top_k: int | None = like(HeadSetConfig, "top_k", None, help="Retrieval heads used: the top-K of --heads "
                             "(default: 5 % of heads).")
    random_seeds: int = like(HeadSetConfig, "random_seeds", 3, help="Random controls (drawn outside the chosen "
                             "heads), one per seed.")
    allow_other_model: bool = like(HeadSetConfig, "allow_other_model", False)
    max_new_tokens: int = setting(ANSWER_TOKENS, "Most tokens generated per answer.", min=1)

    def open_run(self, kind: str, weights: str, **settings: Any) -> Any:
        """:func:`~headatlas.runs.open_run` on ``out`` with the run's identity (plus ``settings``) and the weights' hash."""
        from .runs import flags, open_run

        return open_run(self.out, kind, {**flags(run_identity(self)), **settings},
                        fingerprints={"the model's weights": weights}, overwrite=self.overwrite,
                        hint="Rerun with --overwrite to discard it, or choose another --out.",
                        model=self.model, seed=self.seed)

    def write_result(self, kind: str, file: str, identity: Mapping[str, Any], data: Mapping[str, Any],
                     **meta: Any) -> dict[str, Any]:
        """``data`` stamped as ``kind``, with the model's ``identity``, every setting and ``meta``, written to ``out/file``."""
        from .runs import atomic_write_json, run_metadata, stamp

        result = stamp(kind, {"meta": run_metadata(**identity, settings={**asdict(self), "out": None}, **meta), **data})
        atomic_write_json(Path(self.out) / file, result)
        return result


@dataclass
class HeadCondition:
    """One condition of such a run: ``name`` (its journal key), ``kind``, and the heads it keeps or masks."""

    name: str
    kind: str
    heads: list[Any]
