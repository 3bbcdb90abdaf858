"""The settings of ``niah-eval`` and ``compare`` (light: the command line imports them, not torch).

:class:`MaskedEvalConfig` is what both share: the model (:class:`~headatlas.config.ModelConfig`), the
run (:class:`~headatlas.config.RunConfig`), the head sets and how they are masked
(:class:`~headatlas.config.HeadSetConfig`, ``mode``, ``means``, ``layer_matched``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import (
    MASK_MODES,
    DecodingConfig,
    GridConfig,
    HeadSetConfig,
    ModelConfig,
    RunConfig,
    check_lang,
    like,
    setting,
    split_list,
)

_NAME = re.compile(r"^[A-Za-z0-9_.]+$")


def check_head_sets(head_sets: Mapping[str, str | Path]) -> None:
    """Raise unless every head set has a usable condition name and an existing score file."""
    for name, path in head_sets.items():
        if not _NAME.match(name) or name == "unmasked" or name.startswith("random"):
            raise ValueError(f"head-set name {name!r}: use letters, digits, '_' or '.', not 'unmasked' or 'random...'")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--heads {name}={path}: no such file")


@dataclass(kw_only=True)
class MaskedEvalConfig(ModelConfig, RunConfig, HeadSetConfig):
    """The settings :class:`CompareConfig` and :class:`NiahEvalConfig` share (see each field's help)."""

    mode: str = setting("zero", "zero | mean | uniform.")
    means: str | None = setting(None, "Per-head mean outputs (.pt/.safetensors) for --mode mean.")
    layer_matched: bool = setting(False, "Random controls follow each set's per-layer head counts.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MASK_MODES:
            raise ValueError(f"unknown mask mode {self.mode!r}; choose one of {MASK_MODES}")
        if self.mode == "mean" and not self.means:
            raise ValueError("mode 'mean' needs means (a per-head mean-output file)")
        if self.layer_matched and not self.heads:
            raise ValueError("layer_matched needs at least one head set to match")
        check_head_sets(self.heads)

    def prepare(self, model: Any = None, tokenizer: Any = None) -> tuple[Any, Any, Any, list[Any], Any]:
        """``(model, tokenizer, spec, conditions, means)``: ``model`` as given (with its tokenizer) or loaded
        from :attr:`model`, its :class:`~headatlas.model_spec.ModelSpec`, the conditions and the means."""
        from ..masking import load_means
        from ..model_spec import ModelSpec, load_model
        from .conditions import build_conditions

        if model is None:
            model, tokenizer, _ = load_model(self.model, dtype=self.dtype, device=self.device,
                                             device_map=self.device_map,
                                             attn_implementation=self.attn_implementation)  # fmt: skip
        elif tokenizer is None:
            raise ValueError("pass the tokenizer with the model")
        spec = ModelSpec.from_model(model)
        conditions = build_conditions(self.heads, self.top_k, self.random_seeds, spec.n_layers, spec.n_heads,
                                      self.layer_matched, self.model, self.allow_other_model)  # fmt: skip
        return model, tokenizer, spec, conditions, load_means(self.means) if self.means else None


@dataclass(kw_only=True)
class NiahEvalConfig(MaskedEvalConfig, GridConfig, DecodingConfig):
    """Settings of a masked NIAH run (shared by :func:`~.niah_eval.run_niah_eval` and ``headatlas niah-eval``).

    Prompts (:class:`~headatlas.config.GridConfig`): ``haystack`` ``None`` is the organism's own task
    prompts for the built-in model, else the built-in haystack of ``needle_lang``; ``target_lang``
    (cross-lingual): the needle stays in ``needle_lang``, question and expected answer are in ``target_lang``.
    Generation: ``max_new_tokens``, ``batch_size`` and ``share_prefix`` (neither of the last two changes an answer).
    """

    needle_lang: str = setting("en", "Language of the needles (and of the haystack by default).", flags=("--lang",),
                          kind="lang")
    target_lang: str | None = setting(None, "Cross-lingual: ask and expect the answer in this language.", kind="lang")
    share_prefix: bool = setting(True, "Run the tokens that prompts of one haystack share once per group (same "
                                 "answers).", resume=True)

    def __post_init__(self) -> None:
        from ..niah.prompts import parse_depths, parse_lengths

        super().__post_init__()
        if self.haystack is None and self.needles is None:  # before any prompt is built
            check_lang("--lang", [self.needle_lang])
            check_lang("--target-lang", [self.target_lang] if self.target_lang else [])
        parse_lengths(self.lengths)  # fail early on a bad grid
        parse_depths(self.depths)


def _gen_kwargs(text: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    from lm_eval.utils import simple_parse_args_string

    return simple_parse_args_string(text)


def _metrics(values: list[str] | dict[str, str]) -> dict[str, str]:
    if isinstance(values, dict):
        return values
    out: dict[str, str] = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name or not rest or name in out:
            raise ValueError(f"--metric must be TASK=METRIC,FILTER, each task once, got {v!r}")
        out[name] = rest
    return out


@dataclass(kw_only=True)
class CompareConfig(MaskedEvalConfig):
    """Settings of a comparison run (shared by :func:`~.compare.run_compare` and ``headatlas compare``).

    Tasks: ``tasks`` (lm-eval task or group names), ``include_path`` (extra task folders; the package's own
    ``tasks/`` is always included), ``limit``, ``num_fewshot``, ``gen_kwargs`` (as lm-eval's), ``metrics``
    (task -> ``"metric,filter"``; default: the first of f1, exact_match, acc_norm, acc, first filter).
    Run: ``batch_size`` (lm-eval's); ``seed`` seeds lm-eval and the bootstrap; ``n_bootstrap``, ``confidence``.
    """

    tasks: list[str] = setting(..., "Comma-separated lm-eval task or group names.", parse=split_list)
    random_seeds: int = like(HeadSetConfig, "random_seeds", 5)
    include_path: list[str] = setting(help="Extra lm-eval task folder (repeatable), e.g. benchmark fixtures.",
                                      factory=list, repeat=True)
    limit: float | None = setting(None, "Items per task (or a fraction < 1).", min=0, min_open=True)
    num_fewshot: int | None = setting(None, "Override the tasks' few-shot count.", min=0)
    gen_kwargs: dict[str, Any] = setting(help="lm-eval generation overrides, e.g. 'max_gen_toks=256'.", factory=dict,
                                         parse=_gen_kwargs)
    metrics: dict[str, str] = setting(help="TASK=METRIC,FILTER to score a task by (repeatable).", factory=dict,
                                      flags=("--metric",), parse=_metrics, repeat=True)
    batch_size: int = setting(1, "lm-eval batch size.", min=1, resume=True)
    seed: int = like(RunConfig, "seed", 1234, help="Seed of lm-eval and of the bootstrap.")
    n_bootstrap: int = setting(2000, "Bootstrap resamples.", flags=("--bootstrap",), min=1)
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("give at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks repeat: {self.tasks}")
        super().__post_init__()
        if self.limit is not None and self.limit >= 1:
            if self.limit != int(self.limit):  # refused, never rounded: a count of items, or a fraction < 1
                raise ValueError(f"--limit {self.limit:g}: give a whole number of items per task, or a fraction below 1")
            self.limit = int(self.limit)
        for task, spec in self.metrics.items():
            if spec.count(",") != 1:
                raise ValueError(f"metric for {task!r} must be 'metric,filter' (e.g. 'exact_match,strict-match')")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must lie in (0, 1), got {self.confidence}")
