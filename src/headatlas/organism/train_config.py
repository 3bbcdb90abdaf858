"""What a training run of the organism is: :class:`OrganismTrainConfig`, its fields and their checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from .corpus import TASKS

COPY_TASK = "copy"  # training-only: random tokens, then the same tokens again (see batches.CopyExample)
# fields that do not change what a run trains (stop_at only says where it ends)
RUN_ONLY_FIELDS = ("threads", "log_every", "snapshot_every", "checkpoint_every")


@dataclass
class OrganismTrainConfig:
    """How to train the organism.

    Output: ``out_dir``. Model: ``n_layers``, ``n_heads``, ``n_kv_heads``,
    ``head_dim``, ``intermediate_size``, ``rope_theta``. Tokenizer:
    ``vocab_size``, ``max_token_length``, ``tokenizer_texts``. Data:
    ``max_per_category``, ``task_weights``, ``curriculum``. Optimisation:
    ``steps``, ``tokens_per_step``, ``lr``, ``warmup_steps``, ``min_lr_ratio``,
    ``weight_decay``, ``lm_weight``, ``head_dropout``. Run: ``seed``, ``threads``.
    """

    out_dir: str = field(default="runs/organism", metadata={"help": "where the checkpoint is saved"})
    seed: int = field(default=0, metadata={"help": "seeds torch, data and tokenizer corpus"})
    n_layers: int = field(default=4, metadata={"help": "decoder layers"})
    n_heads: int = field(default=16, metadata={"help": "query heads per layer"})
    n_kv_heads: int = field(default=4, metadata={"help": "key/value heads per layer (GQA)"})
    head_dim: int = field(default=16, metadata={"help": "per-head width"})
    hidden_size: int = field(default=0, metadata={"help": "residual width; 0 means n_heads * head_dim"})
    intermediate_size: int = field(default=512, metadata={"help": "MLP width"})
    rope_theta: float = field(default=10_000.0, metadata={"help": "RoPE base"})
    vocab_size: int = field(default=3072, metadata={"help": "BPE vocabulary size"})
    max_token_length: int = field(default=6, metadata={"help": "longest BPE token, in byte symbols"})
    tokenizer_texts: int = field(default=3000, metadata={"help": "corpus prompts the tokenizer is trained on"})
    max_per_category: int = field(default=40, metadata={"help": "lexicon entries kept per category"})
    task_weights: dict[str, float] = field(
        default_factory=lambda: {"mono": 0.2, "cross": 0.3, "multihop": 0.2, "parametric": 0.12, "multikey": 0.18},
        metadata={"help": "sampling weight of each task"},
    )
    passkey_rate: float = field(
        default=0.0, metadata={"help": "share of mono/multikey questions that ask for a random-number passkey"}
    )
    curriculum: list[tuple[float, int, int]] = field(
        default_factory=lambda: [(0.3, 32, 128), (0.55, 64, 384), (1.0, 128, 1024)],
        metadata={"help": "stages (until fraction of steps, min length, max length[, task weights]); lengths in "
                          "tokens, the optional task weights replace task_weights in that stage"},
    )
    steps: int = field(default=2600, metadata={"help": "optimizer steps"})
    tokens_per_step: int = field(default=2048, metadata={"help": "tokens per batch (batch = this // length)"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (AdamW)"})
    warmup_steps: int = field(default=80, metadata={"help": "linear warm-up steps"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine decays to lr * this"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (matrices only)"})
    lm_weight: float = field(default=0.1, metadata={"help": "weight of the LM loss on non-answer tokens"})
    extra_questions: int = field(
        default=3, metadata={"help": "up to this many extra question/answer blocks per training example"}
    )
    q_weight: float = field(default=1.0, metadata={"help": "weight of the LM loss on the question tokens"})
    copy_weight: float = field(default=1.0, metadata={"help": "weight of the LM loss on a copy example's repeat"})
    lm_sample: float = field(default=0.25, metadata={"help": "share of non-answer tokens the LM loss scores"})
    head_dropout: float = field(default=0.1, metadata={"help": "per-sample probability to zero a head"})
    head_dropout_ramp: tuple[float, float] = field(
        default=(0.3, 0.45), metadata={"help": "head dropout is 0 before, full after (fractions of steps)"}
    )
    head_dropout_overrides: dict[str, float] = field(
        default_factory=dict,
        metadata={"help": "per-head dropout probability replacing head_dropout, keyed 'layer.head' (ramped alike)"},
    )
    reinit_heads: list[str] = field(
        default_factory=list,
        metadata={"help": "query heads ('layer.head') whose q_proj rows and o_proj columns are drawn afresh at the "
                          "start (after init_from): a head that learned to copy unlearns it"},
    )
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    log_every: int = field(default=50, metadata={"help": "steps between log lines"})
    stop_at: int = field(
        default=0, metadata={"help": "stop (and save) after this many steps; the schedules still span `steps`"}
    )
    init_from: str = field(
        default="", metadata={"help": "start from this checkpoint's weights (same tokenizer settings) instead of scratch"}
    )
    snapshot_every: int = field(
        default=0, metadata={"help": "save the model to OUT/snapshots/step-N every this many steps (0: never)"}
    )
    checkpoint_every: int = field(
        default=200, metadata={"help": "save a resumable training state to OUT/resume every this many steps "
                                       "(0: never); the same run started again continues from it"}
    )

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise ValueError("n_heads must be a multiple of n_kv_heads")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError("head_dropout must be in [0, 1)")
        if self.lm_weight < 0 or not 0.0 <= self.lm_sample <= 1.0:
            raise ValueError("lm_weight must be >= 0 and lm_sample in [0, 1]")
        self.curriculum = [tuple(c) for c in self.curriculum]  # JSON round-trips give lists
        for weights in [self.task_weights] + [c[3] for c in self.curriculum if len(c) > 3]:
            if set(weights) - {*TASKS, COPY_TASK} or not any(w > 0 for w in weights.values()):
                raise ValueError(f"task weights: known tasks {(*TASKS, COPY_TASK)}, at least one weight > 0")
        self.head_dropout_ramp = tuple(self.head_dropout_ramp)
        from ..heads import Head, check_heads  # torch: only when a config is built, never for --help

        check_heads([Head.parse(key) for key in self.head_dropout_overrides], self.n_layers, self.n_heads)
        check_heads([Head.parse(key) for key in self.reinit_heads], self.n_layers, self.n_heads)
        for key, p in self.head_dropout_overrides.items():
            if not 0.0 <= p < 1.0:
                raise ValueError(f"head_dropout_overrides: {key!r} must be in [0, 1), got {p}")
        if not 0.0 <= self.head_dropout_ramp[0] <= self.head_dropout_ramp[1] <= 1.0:
            raise ValueError("head_dropout_ramp: 0 <= start <= end <= 1")
        ends = [c[0] for c in self.curriculum]
        if not self.curriculum or ends != sorted(ends) or ends[-1] < 1.0:
            raise ValueError("curriculum fractions must increase and end at 1.0")
        if any(len(c) not in (3, 4) or c[1] < 32 or c[2] < c[1] for c in self.curriculum):
            raise ValueError("curriculum stages: (until, min length, max length[, task weights]), 32 <= min <= max")
        if self.checkpoint_every < 0 or self.snapshot_every < 0:
            raise ValueError("checkpoint_every and snapshot_every must be >= 0")
        if not 0 <= self.stop_at <= self.steps:
            raise ValueError("stop_at must be in [0, steps]")
        if self.steps < 1 or self.tokens_per_step < max(c[2] for c in self.curriculum):
            raise ValueError("need steps >= 1 and tokens_per_step >= the longest curriculum length")


def training_settings(config: dict, *also: str) -> dict:
    """``config`` (an :class:`OrganismTrainConfig` as a dict) without the fields that do not change
    what a run trains (:data:`RUN_ONLY_FIELDS`) nor the fields ``also``: what two runs must share
    for one to stand for, or continue, the other."""
    return {k: v for k, v in config.items() if k not in RUN_ONLY_FIELDS and k not in also}
