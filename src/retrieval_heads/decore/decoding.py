"""DeCoRe: decode against the same model with its retrieval heads masked.

Next token = argmax over the vocabulary of ``(1 + a) log p_base - a log p_masked``
(or a sample from its softmax), where ``p_masked`` comes from the same model
with ``heads`` masked (:func:`retrieval_heads.masked_heads`, mode ``uniform``
by default, as DeCoRe). ``a`` is fixed, or *dynamic*: the entropy of
``p_base`` (optionally divided by ``log |V|`` and capped), DeCoRe's rule.

Decoding follows DeCoRe's reference code (``../shared/docs/peers.md``): one
shared, *unmasked* prefill of the prompt up to its last token, then two
decode streams, each with its own cache (the masked stream starts from a copy
of the prefill cache): the base stream unmasked, the masked stream with the
heads masked from the prompt's last token on. ``masked_prefill=True`` instead
prefills the masked stream with the heads masked too (two prefills).

Stops at EOS, at a newline once the answer has begun (the tokenizer's own
newline tokens, :class:`retrieval_heads.detect.greedy.StopTokens`), or at a
stop string. When the toolkit's generation module lands, the loop in
:func:`_decode_one` moves there as a two-stream step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel

from ..generation import StopTokens, _cache_argument
from ..heads import Head
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


def _forward(model: PreTrainedModel, ids: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
    """Last-position logits ``(1, V)``, extending ``cache`` (``cache=`` on transformers >= 5.24, else ``past_key_values=``)."""
    return model(ids, **{_cache_argument(model): cache, "use_cache": True}).logits[:, -1]


@torch.no_grad()
def _decode_one(
    model: PreTrainedModel, tokenizer: Any, ids: list[int], heads: list[Head], settings: DecoreSettings,
    stops: StopTokens, max_new_tokens: int, stop_strings: Sequence[str], spec: ModelSpec, keep_logits: bool,
    generator: torch.Generator | None,
) -> DecoreOutput:
    """Two decode streams after one shared prefill; the only decoding loop of this module."""
    device = next(model.parameters()).device
    prompt = torch.tensor([ids], device=device)  # (1, T)
    base_cache = DynamicCache(config=model.config)
    if prompt.shape[1] > 1:
        _forward(model, prompt[:, :-1], base_cache)
    if settings.masked_prefill:
        masked_cache = DynamicCache(config=model.config)
        if prompt.shape[1] > 1:
            with masked_heads(model, heads, mode=settings.mode, spec=spec):
                _forward(model, prompt[:, :-1], masked_cache)
    else:
        masked_cache = copy.deepcopy(base_cache)
    token = prompt[:, -1:]
    out: list[int] = []
    alphas: list[float] = []
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    reason = "max_new_tokens"
    for _ in range(max_new_tokens):
        base = _forward(model, token, base_cache)[0]  # (V,)
        with masked_heads(model, heads, mode=settings.mode, spec=spec):
            masked = _forward(model, token, masked_cache)[0]  # (V,)
        scores, alpha = contrast(base, masked, settings)
        if keep_logits:
            kept.append((base.cpu(), masked.cpu()))
        if settings.sample:
            probs = torch.softmax(scores / settings.temperature, dim=-1)
            nxt = int(torch.multinomial(probs.cpu(), 1, generator=generator))
        else:
            nxt = int(scores.argmax())
        if stops.eos[nxt]:
            reason = "eos"
            break
        if stops.newline[nxt] and any(not stops.blank[t] for t in out):
            reason = "newline"
            break
        out.append(nxt)
        alphas.append(float(alpha))
        if stop_strings and any(s in tokenizer.decode(out) for s in stop_strings):
            reason = "stop_string"
            break
        token = torch.tensor([[nxt]], device=device)
    text = tokenizer.decode(out, skip_special_tokens=True).split("\n", 1)[0].strip() if reason != "stop_string" \
        else tokenizer.decode(out, skip_special_tokens=True)
    return DecoreOutput(text, out, alphas, reason, kept)


def decore_generate(
    model: PreTrainedModel,
    tokenizer: Any,
    prompts: Iterable[str | Sequence[int]],
    heads: Iterable[Head | tuple[int, int]],
    alpha: float = 0.5,
    dynamic: bool = False,
    *,
    normalise: bool = False,
    cap: float | None = None,
    mode: MaskMode = "uniform",
    masked_prefill: bool = False,
    sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    max_new_tokens: int = 32,
    stop_strings: Sequence[str] = (),
    stop_on_newline: bool = True,
    keep_logits: bool = False,
) -> list[DecoreOutput]:
    """DeCoRe answers for ``prompts`` (strings, tokenized with the tokenizer's special tokens, or token ids).

    ``heads`` are masked in the contrast stream; with no heads, or ``alpha=0``
    and ``dynamic=False``, the output is the base model's greedy decoding.
    ``keep_logits`` returns each step's (base, masked) logits.

    >>> from retrieval_heads import load_model                                                 # doctest: +SKIP
    >>> model, tok, _ = load_model("organism")                                                 # doctest: +SKIP
    >>> decore_generate(model, tok, ["... Answer:"], heads=[(3, 31)], alpha=1.0)[0].text      # doctest: +SKIP
    """
    spec = ModelSpec.from_model(model)
    from ..heads import check_heads

    heads = check_heads(heads, spec.n_layers, spec.n_heads)
    settings = DecoreSettings(alpha, dynamic, normalise, cap, mode, masked_prefill, sample, temperature, seed)
    stops = StopTokens.from_tokenizer(model, tokenizer, stop_on_newline=stop_on_newline)
    generator = torch.Generator().manual_seed(seed) if sample else None
    outputs = []
    for p in prompts:
        ids = list(tokenizer(p)["input_ids"]) if isinstance(p, str) else [int(t) for t in p]
        if not ids:
            raise ValueError("an empty prompt cannot be decoded")
        outputs.append(_decode_one(model, tokenizer, ids, heads, settings, stops, max_new_tokens, stop_strings, spec,
                                   keep_logits, generator))
    return outputs
