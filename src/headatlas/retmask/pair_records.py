"""What RetMask pair generation is made of, shared by its two engines (:mod:`.pairs`, :mod:`.vllm_engine`):
the settings, a prompt, a response, per-prompt seeds and the row a pair becomes.

>>> pair_row(PromptItem("p0", "Q?", "Q?", False), Response(" A", 1, True), Response(" A", 1, True), (1, 1))[1]
'identical'
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ENGINES = ("transformers", "vllm")


@dataclass
class PairConfig:
    """Settings of RetMask pair generation (paper defaults: temperature 0.6, top_p 1.0); see each field's help.

    >>> PairConfig(max_new_tokens=32).temperature
    0.6
    """

    temperature: float = field(default=0.6, metadata={"help": "Sampling temperature (paper: 0.6)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (paper: 1.0)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens generated per response."})
    seed: int = field(default=0, metadata={"help": "Base seed; per-prompt seeds are derived from it and the id."})
    same_seed_for_both: bool = field(
        default=True,
        metadata={"help": "Sample chosen and rejected with the same per-prompt random stream (common random numbers)."},
    )
    stop: tuple[str, ...] = field(default=(), metadata={"help": "Stop strings (besides EOS), e.g. ('\\n',)."})
    include_stop: bool = field(default=True, metadata={"help": "Keep the stop string at the end of a response."})
    first_turn_only: bool = field(
        default=True, metadata={"help": "Chat prompts: keep system message(s) and the first user turn only."}
    )
    max_prompt_tokens: int | None = field(
        default=None, metadata={"help": "Drop prompts longer than this many tokens (None: keep all)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate() call (transformers engine)."})
    engine: str = field(default="transformers", metadata={"help": "Generation engine: transformers or vllm."})
    vllm_kwargs: dict[str, Any] = field(default_factory=dict, metadata={"help": "Keyword arguments for vllm.LLM."})
    ablated_dir: str | None = field(
        default=None, metadata={"help": "vLLM engine: directory for the baked ablated checkpoint (default: OUT.ablated)."}
    )

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (RetMask samples; the paper uses 0.6)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        self.stop = tuple(self.stop)
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")

    def sampling_settings(self) -> dict[str, Any]:
        """The settings that determine the responses (a resumed run must use the same)."""
        keys = ("temperature", "top_p", "max_new_tokens", "seed", "same_seed_for_both", "stop", "include_stop",
                "first_turn_only", "max_prompt_tokens")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k in keys}


@dataclass
class PromptItem:
    """One prompt: its id, the text fed to the model, the original form (str or messages) and extra fields."""

    id: str
    text: str
    original: str | list[dict[str, Any]]
    is_chat: bool
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Response:
    text: str
    n_tokens: int
    stopped: bool  # ended on EOS or a stop string (False: cut by max_new_tokens)


def prompt_seed(base_seed: int, prompt_id: str, stream: str = "") -> int:
    """A 63-bit seed for one prompt, derived from the base seed and the prompt id (stable across runs).

    >>> prompt_seed(0, "a") == prompt_seed(0, "a") != prompt_seed(1, "a")
    True
    """
    digest = hashlib.sha256(f"{base_seed}\x00{prompt_id}\x00{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def dropped_path(out_path: str | Path) -> Path:
    """``pairs.jsonl`` -> ``pairs.dropped.jsonl`` (the dropped prompts, with both responses and the reason)."""
    return Path(out_path).with_name(Path(out_path).stem + ".dropped.jsonl")


def encode_prompt(tokenizer, item: PromptItem) -> list[int]:  # noqa: ANN001
    """The prompt's token ids."""
    # a rendered chat template already holds its special tokens (BOS ...): do not add them twice
    return tokenizer(item.text, add_special_tokens=not item.is_chat)["input_ids"]


def _drop_reason(chosen: str, rejected: str) -> str | None:
    empty_c, empty_r = not chosen.strip(), not rejected.strip()
    if empty_c and empty_r:
        return "empty_both"
    if empty_c:
        return "empty_chosen"
    if empty_r:
        return "empty_rejected"
    if chosen == rejected:
        return "identical"
    return None


def _as_completion(item: PromptItem, text: str) -> str | list[dict[str, str]]:
    return [{"role": "assistant", "content": text}] if item.is_chat else text


def pair_row(item: PromptItem, chosen: Response, rejected: Response, seeds: tuple[int, int]) -> tuple[dict, str | None]:
    """The JSONL row of one prompt's pair and the reason it is dropped (``None``: kept)."""
    if item.is_chat:  # the chat template renders its own separators around the reply
        chosen = Response(chosen.text.strip(), chosen.n_tokens, chosen.stopped)
        rejected = Response(rejected.text.strip(), rejected.n_tokens, rejected.stopped)
    reason = _drop_reason(chosen.text, rejected.text)
    meta = {
        "seed_chosen": seeds[0], "seed_rejected": seeds[1],
        "chosen_tokens": chosen.n_tokens, "rejected_tokens": rejected.n_tokens,
        "chosen_stopped": chosen.stopped, "rejected_stopped": rejected.stopped,
        **({"input": item.extra} if item.extra else {}),
    }
    if reason is not None:
        return {"id": item.id, "reason": reason, "prompt": item.original, "chosen": chosen.text,
                "rejected": rejected.text, "meta": meta}, reason
    row = {"id": item.id, "prompt": item.original, "chosen": _as_completion(item, chosen.text),
           "rejected": _as_completion(item, rejected.text), "meta": meta}
    return row, None


def pair_seeds(item: PromptItem, config: PairConfig) -> tuple[int, int]:
    """The seeds of the chosen and the rejected response of ``item``."""
    chosen = prompt_seed(config.seed, item.id, "chosen")
    return chosen, chosen if config.same_seed_for_both else prompt_seed(config.seed, item.id, "rejected")
