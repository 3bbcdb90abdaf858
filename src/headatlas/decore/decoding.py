"""DeCoRe: decode against the same model with its retrieval heads masked.

Next token = argmax over the vocabulary of ``(1 + a) log p_base - a log p_masked``
(or a sample from its softmax), where ``p_masked`` comes from the same model
with ``heads`` masked (:func:`headatlas.masked_heads`, mode ``uniform``
by default, as DeCoRe). ``a`` is fixed, or *dynamic*: the entropy of
``p_base`` (optionally divided by ``log |V|`` and capped), DeCoRe's rule.

Decoding follows DeCoRe's reference code (``../shared/docs/peers.md``): one
shared, *unmasked* prefill of the prompt up to its last token, then two
decode streams, each with its own cache (the masked stream starts from a copy
of the prefill cache): the base stream unmasked, the masked stream with the
heads masked from the prompt's last token on. ``masked_prefill=True`` instead
prefills the masked stream with the heads masked too (two prefills).

Stops at EOS, at a newline once the answer has begun, or at a stop string; the loop is
:func:`headatlas.generation.generate`'s, with the two-stream step :class:`_TwoStreams`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from ..config import ANSWER_TOKENS
from ..generation import DecodeState, StopTokens, decode_step, generate, left_pad, prefill_but_last
from ..heads import Head, check_heads
from ..masking import MaskMode, masked_heads
from ..model_spec import ModelSpec


@dataclass
class DecoreSettings:
    """How the contrast is taken: ``alpha`` (fixed), or ``dynamic`` (entropy of p_base, ``normalise``-d, ``cap``-ped)."""

    alpha: float = 0.5
    dynamic: bool = False
    normalise: bool = False
    cap: float | None = None
    mode: MaskMode = "uniform"
    masked_prefill: bool = False
    sample: bool = False
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("alpha", "cap", "temperature"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@dataclass
class DecoreOutput:
    """One prompt's answer: text (up to the stop), tokens, the ``a`` used at each step, and why it stopped."""

    text: str
    tokens: list[int]
    alphas: list[float]
    stop_reason: str
    logits: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list, repr=False)  # (base, masked) per step


def contrast(base_logits: torch.Tensor, masked_logits: torch.Tensor, settings: DecoreSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """DeCoRe scores ``(..., V)`` and the ``a`` used ``(...)``: ``(1 + a) log p_base - a log p_masked``.

    >>> s, a = contrast(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0]), DecoreSettings(alpha=1.0))
    >>> int(s.argmax()), float(a)
    (0, 1.0)
    """
    base = torch.log_softmax(base_logits.float(), dim=-1)
    masked = torch.log_softmax(masked_logits.float(), dim=-1)
    if settings.dynamic:
        alpha = -(base.exp() * base).nansum(-1)  # entropy of p_base, nats
        if settings.normalise:
            alpha = alpha / math.log(base.shape[-1])
        if settings.cap is not None:
            alpha = alpha.clamp(max=settings.cap)
    else:
        alpha = torch.full(base.shape[:-1], float(settings.alpha), device=base.device)
    a = alpha[..., None]
    return (1 + a) * base - a * masked, alpha


class _TwoStreams:
    """DeCoRe's decode step for :func:`~headatlas.generation.generate`: the base stream and the masked
    stream (forked from the shared prefill unless ``masked`` is given), contrasted; records ``a`` and the logits."""

    def __init__(self, heads: list[Head], settings: DecoreSettings, spec: ModelSpec, masked: DecodeState | None,
                 keep_logits: bool) -> None:
        self.heads, self.settings, self.spec, self.masked, self.keep_logits = heads, settings, spec, masked, keep_logits
        self.alphas: list[float] = []
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, model: PreTrainedModel, token: torch.Tensor, state: DecodeState) -> torch.Tensor:
        if self.masked is None:  # the first step: the masked stream starts from a copy of the shared prefill
            self.masked = DecodeState(state.mask, state.positions, copy.deepcopy(state.cache), state.cache_arg)
        base = decode_step(model, token, state)  # (1, V)
        with masked_heads(model, self.heads, mode=self.settings.mode, spec=self.spec):
            masked = decode_step(model, token, self.masked)
        scores, alpha = contrast(base, masked, self.settings)
        self.alphas.append(float(alpha))
        if self.keep_logits:
            self.kept.append((base[0].cpu(), masked[0].cpu()))
        return scores


@torch.no_grad()
def decore_generate(
    model: PreTrainedModel, tokenizer: Any, prompts: Iterable[str | Sequence[int]],
    heads: Iterable[Head | tuple[int, int]], alpha: float = 0.5, dynamic: bool = False, *, normalise: bool = False,
    cap: float | None = None, mode: MaskMode = "uniform", masked_prefill: bool = False, sample: bool = False,
    temperature: float = 1.0, seed: int = 0, max_new_tokens: int = ANSWER_TOKENS, stop_strings: Sequence[str] = (),
    stop_on_newline: bool = True, keep_logits: bool = False,
) -> list[DecoreOutput]:
    """DeCoRe answers for ``prompts`` (strings, tokenized with the tokenizer's special tokens, or token ids).

    ``heads`` are masked in the contrast stream; with no heads, or ``alpha=0``
    and ``dynamic=False``, the output is the base model's greedy decoding.
    ``keep_logits`` returns each step's (base, masked) logits.

    >>> from headatlas import load_model                                                 # doctest: +SKIP
    >>> model, tok, _ = load_model("organism")                                                 # doctest: +SKIP
    >>> decore_generate(model, tok, ["... Answer:"], heads=[(3, 31)], alpha=1.0)[0].text      # doctest: +SKIP
    """
    spec = ModelSpec.from_model(model)
    heads = check_heads(heads, spec.n_layers, spec.n_heads)
    settings = DecoreSettings(alpha, dynamic, normalise, cap, mode, masked_prefill, sample, temperature, seed)
    stops = StopTokens.from_tokenizer(model, tokenizer, stop_on_newline=stop_on_newline)
    stops = StopTokens(stops.eos, stops.newline, stops.blank)  # a newline ends an answer only once it has begun
    generator = torch.Generator().manual_seed(seed) if sample else None
    device = next(model.parameters()).device

    def draw(scores: torch.Tensor) -> torch.Tensor:  # (1, V) -> (1,), one generator over every prompt
        probs = torch.softmax(scores[0] / temperature, dim=-1)
        return torch.multinomial(probs.cpu(), 1, generator=generator).to(scores.device)

    outputs = []
    for p in prompts:
        ids = list(tokenizer(p)["input_ids"]) if isinstance(p, str) else [int(t) for t in p]
        if not ids:
            raise ValueError("an empty prompt cannot be decoded")
        masked = None
        if masked_prefill:
            with masked_heads(model, heads, mode=mode, spec=spec):
                masked = prefill_but_last(model, *(t.to(device) for t in left_pad([ids], 0)))
        streams = _TwoStreams(heads, settings, spec, masked, keep_logits)
        o = generate(model, [ids], max_new_tokens, stops, sampler=draw if sample else None, stop_strings=stop_strings,
                     tokenizer=tokenizer, prefill_chunk=len(ids), step=streams)
        reason = o.stop_reason[0]
        n = int(o.n_tokens[0]) + (reason == "stop_string")  # the token completing a stop string is kept
        out = o.tokens[0, :n].tolist()
        text = tokenizer.decode(out, skip_special_tokens=True)
        text = text if reason == "stop_string" else text.split("\n", 1)[0].strip()
        outputs.append(DecoreOutput(text, out, streams.alphas[:n], reason, streams.kept))
    return outputs
