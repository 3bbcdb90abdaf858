"""Settings of a detection run, shared by the Python API and the ``detect`` command.

>>> DetectConfig(mode="teacher", batch_size=4).mode
'teacher'
>>> DetectConfig(mode="beam")
Traceback (most recent call last):
...
ValueError: mode must be 'greedy' or 'teacher', got 'beam'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import GridConfig, check_lang, like, setting

MODES = ("greedy", "teacher")
KINDS = ("retrieval", "transition")
SCORER_NAMES = ("copy", "transition", "qr", "mass", "echo", "induction", "duo")
ALIGNMENTS = ("lexicon", "span", "counterfactual")


@dataclass
class DetectConfig:
    """How retrieval heads are detected.

    Scoring: ``mode``, ``max_new_tokens``, ``rouge_threshold`` (greedy), ``accuracy_threshold`` (teacher), ``dedup``,
    ``stop_on_newline``. Running: ``batch_size``, ``share_prefix``, ``seed``, ``progress``.
    Output: ``table_rows``, ``heatmap``. The scoring fields and the seed
    form the run's fingerprint: resuming with different values raises.
    """

    scorer: str = field(
        default="copy",
        metadata={
            "help": "How heads are scored (docs/atlas.md): copy (Wu et al.'s copy events), transition (retrieval-"
            "transition heads), qr (QRHead: query-to-needle attention minus a null query's), mass (attention on "
            "the needle while the answer is produced: HeadKV's R2), echo / induction (RazorAttention: random "
            "tokens repeated, data-free), duo (DuoAttention: gates trained per KV head)."
        },
    )
    null_query: str = field(default="N/A", metadata={"help": "qr only: the null query that replaces question and answer lead-in."})
    repeats: int = field(default=4, metadata={"min": 1, "help": "echo/induction only: how often the random block repeats."})
    repeat_tokens: int = field(
        default=0,
        metadata={"min": 0, "help": "echo/induction only: tokens per random block (0: the model's window divided by --repeats)."},
    )
    duo_steps: int = field(default=60, metadata={"min": 1, "help": "duo only: optimisation steps (one prompt each)."})
    duo_sink: int = field(default=4, metadata={"min": 0, "help": "duo only: attention-sink tokens of a streaming head."})
    duo_window: int = field(default=64, metadata={"min": 0, "help": "duo only: recent tokens of a streaming head."})
    duo_reg: float = field(default=0.05, metadata={"min": 0.0, "help": "duo only: weight of the L1 penalty on the gates."})
    duo_lr: float = field(default=0.05, metadata={"min": 0.0, "min_open": True, "help": "duo only: learning rate of the gates (Adam)."})
    kind: str = field(
        default="retrieval",
        metadata={
            "help": "retrieval: copy events (Wu et al.); transition: the needle in one language, the answer in "
            "another (retrieval-transition heads, docs/multilingual.md)."
        },
    )
    alignment: str = field(
        default="lexicon",
        metadata={
            "help": "Transition only. lexicon: the emitted token must render the attended source word (parallel "
            "lexicon); span: pivot-free, any target-answer token while attending the source answer; "
            "counterfactual: the first author's rule, the token at the attended offset of a second prompt with "
            "the target-language needle."
        },
    )
    lexicon: str | None = field(
        default=None,
        metadata={"help": "Transition only: a multilingual lexicon JSONL (default: the built-in CLDR lexicon)."},
    )
    mode: str = field(
        default="greedy",
        metadata={"help": "greedy: score the model's own greedy answer; teacher: one forward over prompt + answer."},
    )
    max_new_tokens: int = field(default=50, metadata={"min": 1, "help": "Greedy mode: most tokens decoded per prompt."})
    rouge_threshold: float = field(
        default=0.5,
        metadata={"help": "Greedy mode: a prompt counts when its ROUGE-1 recall is strictly above this (the paper: 0.5)."},
    )
    accuracy_threshold: float = field(
        default=0.5,
        metadata={"help": "Teacher mode: a prompt counts when its answer token accuracy is strictly above this."},
    )
    dedup: bool = field(
        default=False,
        metadata={
            "help": "Count each answer-span position at most once per head and prompt. False is the paper's "
            "rule, under which a per-prompt score can exceed 1."
        },
    )
    stop_on_newline: bool = field(
        default=True,
        metadata={"help": "Greedy mode: stop at a token containing a newline once the answer has started."},
    )
    batch_size: int | str = field(
        default="auto",
        metadata={"resume": True,
            "help": "Prompts per forward, or auto: as many as the GPU's free memory holds (1 on CPU); the run "
            "records the number used. Results do not depend on it."
        },
    )
    share_prefix: bool = field(
        default=True,
        metadata={"resume": True,
            "help": "Run the token prefix that prompts of one haystack share once per group and only the rest "
            "per prompt (same scores; models with plain full-attention caches)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed set before the run (decoding is greedy; recorded)."})
    table_rows: int = field(default=20, metadata={"resume": True, "min": 0, "help": "Rows of the top-heads table printed at the end (0: none)."})
    heatmap: bool = field(default=True, metadata={"resume": True, "help": "Write heatmap.png (layer x head)."})
    progress: bool = field(default=True, metadata={"resume": True, "help": "Show a progress bar with ETA."})

    def __post_init__(self) -> None:
        if self.scorer not in SCORER_NAMES:
            raise ValueError(f"scorer must be one of {SCORER_NAMES}, got {self.scorer!r}")
        if self.kind == "transition" and self.scorer == "copy":  # kind="transition" names the transition scorer
            self.scorer = "transition"
        if self.scorer == "transition":
            self.kind = "transition"
        for name in ("repeats", "duo_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("repeat_tokens", "duo_sink", "duo_window"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.duo_reg < 0 or self.duo_lr <= 0:
            raise ValueError(f"duo_reg must be >= 0 and duo_lr > 0, got {self.duo_reg}, {self.duo_lr}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {self.alignment!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'greedy' or 'teacher', got {self.mode!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        for name in ("rouge_threshold", "accuracy_threshold"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1) (a prompt counts when strictly above), got {getattr(self, name)}")
        if isinstance(self.batch_size, str) and self.batch_size.isdigit():
            self.batch_size = int(self.batch_size)
        if self.batch_size != "auto" and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ValueError(f"batch_size must be 'auto' or an integer >= 1, got {self.batch_size!r}")
        if self.table_rows < 0:
            raise ValueError(f"table_rows must be >= 0, got {self.table_rows}")

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change results (batch size, progress and output options do not)."""
        keys = ("kind", "mode", "dedup", "seed")
        keys += ("alignment", "lexicon") if self.kind == "transition" else ()
        keys += ("rouge_threshold", "max_new_tokens", "stop_on_newline") if self.mode == "greedy" else ("accuracy_threshold",)
        return {k: getattr(self, k) for k in keys}


@dataclass(kw_only=True)
class DetectGrid(GridConfig):
    """The prompts of a detection run: the grid, and the languages of a retrieval or transition run."""

    lengths: str | None = like(GridConfig, "lengths", None, help="Context lengths: 'start:stop:count' or "
                               "'256,512' (default: 8 lengths up to 0.9 x the model's window, at most 8000).")
    depths: str = like(GridConfig, "depths", "10")
    per_cell: int = like(GridConfig, "per_cell", 3)
    lang: str = setting("en", "Language of the haystack and needles.", kind="lang")
    source_lang: str | None = setting(None, "Transition: language of the needle (and haystack).", kind="lang")
    target_lang: str | None = setting(None, "Transition: language the answer is asked in.", kind="lang")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.haystack is None and self.needles is None:
            check_lang("--lang", [self.lang])
            check_lang("--source-lang", [self.source_lang] if self.source_lang else [])
            check_lang("--target-lang", [self.target_lang] if self.target_lang else [])
