"""Settings of ``compare-scorers`` (:mod:`headatlas.atlas`), torch-free: the CLI builds its options from them."""

from __future__ import annotations

from dataclasses import dataclass

from .config import MASK_MODES, ModelConfig, RunConfig, setting

ALL_SCORERS = ("copy", "transition", "qr", "mass", "echo", "induction", "duo")


@dataclass(kw_only=True)
class AtlasConfig(ModelConfig, RunConfig):
    """Settings of one ``compare-scorers`` run (every field recorded in ``atlas.json``).

    Detection: ``scorers``, ``lengths``, ``depths``, ``per_cell``, ``mode``, ``duo_steps``. Masking:
    ``top_share``, ``random_seeds``, ``niah_lengths``, ``niah_depths``, ``tasks``, ``task_n``, ``mask_mode``.
    KV compression: ``kv_budget``, ``kv_lengths``, ``kv_depths``, ``sink``, ``window``. Decoding:
    ``max_new_tokens``, ``batch_size``.
    """

    scorers: str = setting(",".join(ALL_SCORERS), "Comma-separated scorers to compare.")
    lengths: str = setting("256:1024:4", "Detection grid: context lengths.")
    depths: str = setting("3", "Detection grid: needle depths (a count or a list).")
    per_cell: int = setting(3, "Built-in model: prompts per length x depth cell.", min=1)
    mode: str = setting("teacher", "copy/transition scorers: greedy or teacher.")
    top_share: float = setting(0.05, "K, the heads masked per scorer, as a share of all heads (0 < K < 1).",
                               min=0.0, min_open=True, max=1.0)
    random_seeds: int = setting(5, "Random head sets (one shared pool outside every top-K).", min=1)
    niah_lengths: str = setting("256,512,1024", "Masking: NIAH context lengths.")
    niah_depths: str = setting("3", "Masking: NIAH depths.")
    tasks: str = setting("cross,multihop,parametric",
                         "Built-in model only: tasks of its suite also scored under masking ('' for none).")
    task_n: int = setting(16, "Examples per built-in task.", min=1)
    mask_mode: str = setting("zero", "How masked heads are silenced: zero, mean or uniform.")
    kv_budget: int = setting(2, "KV compression: KV heads kept whole (0: skip the test).", min=0)
    kv_lengths: str = setting("1024,1536,2000", "KV compression: context lengths.")
    kv_depths: str = setting("3", "KV compression: needle depths.")
    sink: int = setting(4, "KV compression: attention-sink tokens of a compressed head.", min=0)
    window: int = setting(64, "KV compression: recent tokens of a compressed head.", min=1)
    max_new_tokens: int = setting(24, "Most tokens generated per answer.", min=1)
    batch_size: int = setting(8, "Prompts per forward (answers do not depend on it).", min=1, resume=True)
    duo_steps: int = setting(60, "duo scorer: optimisation steps.", min=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        names = self.scorer_names()
        unknown = [n for n in names if n not in ALL_SCORERS]
        if unknown or not names:
            raise ValueError(f"--scorers {self.scorers}: unknown {unknown}; choose from {', '.join(ALL_SCORERS)}")
        if self.top_share >= 1:
            raise ValueError(f"--top-share {self.top_share}: must be below 1")
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"--mask-mode {self.mask_mode}: use one of {', '.join(MASK_MODES)}")

    def scorer_names(self) -> list[str]:
        """The scorers to compare, in the order given."""
        return [s.strip() for s in self.scorers.split(",") if s.strip()]
