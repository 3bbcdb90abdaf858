"""One decoding loop: left-padded batched greedy decoding or per-row seeded sampling over the KV cache.

Every generation in the toolkit runs here: detection's greedy mode (inside
:func:`retrieval_heads.capture_attention` with ``rows="last"``: one forward
per emitted token, so captured step ``s`` is the row that predicted token
``s``), NIAH evaluation, the built-in model's task accuracy and RetMask's
sampled pairs. Later speed-ups (a static KV cache with a compiled decode step,
a shared prefix cache) belong in :func:`prefill` and :func:`decode_step`.

Stopping (:class:`StopTokens`, resolved by decoding the whole vocabulary once,
never from literal tokens): a row stops at an EOS id, or at the first token
that puts a newline after some non-space text of the answer (a leading
newline, as some chat models emit, does not end it), or, for sampling, once its
decoded text holds one of ``stop_strings``. The stop token is returned but not
counted in ``n_tokens``. Finished rows keep decoding (their tokens are
ignored); rows never see each other (left padding, per-row positions and, for
sampling, one ``torch.Generator`` per row), so results do not depend on the
batch composition.

>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)).eval()
>>> out = generate(model, [[5, 6, 7, 5], [8, 9]], max_new_tokens=3, stops=StopTokens.none(64))
>>> out.tokens.shape, out.n_tokens.tolist(), out.stop_reason
(torch.Size([2, 3]), [3, 3], ['max_new_tokens', 'max_new_tokens'])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from .model_spec import eos_token_ids

STOP_REASONS = ("max_new_tokens", "eos", "newline", "stop_string")


@dataclass
class StopTokens:
    """Vocabulary-sized ``(V,)`` bool masks.

    ``eos``: end-of-sequence ids; ``newline``: tokens whose text holds a
    newline; ``blank``: whitespace-only tokens; ``text_newline``: tokens whose
    own text has a newline after non-space text (``"a\\n"``: ends an answer
    even as its first token). ``text_newline`` defaults to none.
    """

    eos: torch.Tensor
    newline: torch.Tensor
    blank: torch.Tensor
    text_newline: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.text_newline is None:
            self.text_newline = torch.zeros_like(self.newline)

    @classmethod
    def none(cls, vocab: int) -> StopTokens:
        """No stop token at all: every row decodes ``max_new_tokens``."""
        return cls(*(torch.zeros(vocab, dtype=torch.bool) for _ in range(4)))

    @classmethod
    def from_tokenizer(cls, model: PreTrainedModel, tokenizer: Any, stop_on_newline: bool = True) -> StopTokens:
        """Resolve the stop tokens of ``model``/``tokenizer`` by decoding every vocabulary entry once."""
        vocab = int(model.get_output_embeddings().weight.shape[0])
        n_tok = min(vocab, len(tokenizer))
        texts = tokenizer.batch_decode([[i] for i in range(n_tok)], skip_special_tokens=False)
        stops = cls.none(vocab)
        if stop_on_newline:
            stops.newline[:n_tok] = torch.tensor(["\n" in t for t in texts], dtype=torch.bool)
            stops.text_newline[:n_tok] = torch.tensor(["\n" in t.lstrip() for t in texts], dtype=torch.bool)
        stops.blank[:n_tok] = torch.tensor([not t.strip() for t in texts], dtype=torch.bool)
        for i in eos_token_ids(model, tokenizer):
            if 0 <= i < vocab:
                stops.eos[i] = True
        return stops

    def to(self, device: torch.device | str) -> StopTokens:
        return StopTokens(self.eos.to(device), self.newline.to(device), self.blank.to(device), self.text_newline.to(device))


class RowSampler:
    """Temperature + top-p sampling with one seeded ``torch.Generator`` per batch row.

    A row's draws depend only on its seed and its own logits, never on the
    other rows of the batch.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, device: torch.device | str):
        self.temperature, self.top_p = temperature, top_p
        self.generators = []
        for s in seeds:
            g = torch.Generator(device=device)
            g.manual_seed(int(s))
            self.generators.append(g)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Draw one token per row from ``logits`` ``(B, V)``; returns ``(B,)`` ids."""
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)  # (B, V)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # keep the smallest prefix whose mass reaches top_p (always at least the best token)
            drop = (sorted_p.cumsum(-1) - sorted_p) >= self.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token lists to ``(B, T)`` ids, attention mask and position ids (0 at each first real token).

    >>> ids, mask, pos = left_pad([[5, 6, 7], [8, 9]], pad_id=0)
    >>> ids.tolist(), pos.tolist()
    ([[5, 6, 7], [0, 8, 9]], [[0, 1, 2], [0, 0, 1]])
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, seq in enumerate(seqs):
        ids[b, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
        mask[b, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def pad_id_of(tokenizer: Any) -> int:
    """A token id to pad with (its value never matters: padded positions are masked)."""
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def cache_argument(model: PreTrainedModel) -> str:
    """The forward keyword of the KV cache: ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(output: Any) -> Any:
    cache = output.get("cache")
    return cache if cache is not None else output.get("past_key_values")


@dataclass
class DecodeState:
    """What one decode step needs: the running attention mask ``(B, T+s)``, positions ``(B, 1)`` and the cache."""

    mask: torch.Tensor
    positions: torch.Tensor
    cache: Any
    cache_arg: str


def prefill(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
            ) -> tuple[torch.Tensor, DecodeState]:
    """Run the padded prompts ``(B, T)`` once; returns the last row's logits ``(B, V)`` and the decode state."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], DecodeState(mask, positions[:, -1:], _cache_of(out), cache_argument(model))


def decode_step(model: PreTrainedModel, token: torch.Tensor, state: DecodeState) -> torch.Tensor:
    """Feed one token per row ``(B,)`` and advance ``state``; returns the next logits ``(B, V)``."""
    state.mask = torch.cat([state.mask, state.mask.new_ones(state.mask.shape[0], 1)], dim=1)
    state.positions = state.positions + 1
    out = model(input_ids=token[:, None], attention_mask=state.mask, position_ids=state.positions,
                use_cache=True, **{state.cache_arg: state.cache})
    state.cache = _cache_of(out)
    return out.logits[:, -1]


@dataclass
class Decoded:
    """One batch: emitted ``tokens`` ``(B, S)`` (stop token included), ``n_tokens`` ``(B,)`` before the stop.

    ``ids`` ``(B, T)`` is the left-padded prompt batch the tokens continue.
    """

    tokens: torch.Tensor
    n_tokens: torch.Tensor
    stop_reason: list[str]
    ids: torch.Tensor

    def text(self, tokenizer: Any, row: int) -> str:
        """Row ``row``'s answer text (see :func:`response_text`)."""
        return response_text(tokenizer, self.tokens[row].tolist(), int(self.n_tokens[row]), self.stop_reason[row])


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    seqs: Sequence[Sequence[int]],
    max_new_tokens: int,
    stops: StopTokens,
    pad_id: int = 0,
    sampler: Callable[[torch.Tensor], torch.Tensor] | None = None,
    stop_strings: Sequence[str] = (),
    tokenizer: Any = None,
) -> Decoded:
    """Decode ``seqs`` (unpadded token lists) as one left-padded batch, greedily or with ``sampler``.

    ``sampler`` maps logits ``(B, V)`` to tokens ``(B,)`` (e.g. :class:`RowSampler`);
    without it decoding is greedy (argmax). ``stop_strings`` (which need
    ``tokenizer``) end a row once its decoded new text holds one of them.
    """
    if stop_strings and tokenizer is None:
        raise ValueError("stop strings need the tokenizer")
    device = next(model.parameters()).device
    ids, mask, positions = (t.to(device) for t in left_pad(seqs, pad_id))
    bsz = ids.shape[0]
    stops = stops.to(device)
    pick = sampler or (lambda logits: logits.argmax(-1))
    emitted: list[torch.Tensor] = []
    n_tokens = torch.full((bsz,), max_new_tokens, dtype=torch.long, device=device)
    reason = torch.zeros(bsz, dtype=torch.long, device=device)  # index into STOP_REASONS
    done = torch.zeros(bsz, dtype=torch.bool, device=device)
    started = torch.zeros(bsz, dtype=torch.bool, device=device)  # some non-space text was emitted
    logits, state = prefill(model, ids, mask, positions)
    for step in range(max_new_tokens):
        token = pick(logits)  # (B,)
        emitted.append(token)
        is_eos = stops.eos[token]
        is_newline = (stops.newline[token] & started) | stops.text_newline[token]
        stop_now = (is_eos | is_newline) & ~done
        reason = torch.where(stop_now, torch.where(is_eos, 1, 2), reason)
        if stop_strings:
            hit = _stop_string_rows(tokenizer, emitted, stop_strings, done | stop_now)
            reason = torch.where(hit, 3, reason)
            stop_now = stop_now | hit
        n_tokens = torch.where(stop_now, step, n_tokens)
        done = done | stop_now
        started = started | ~stops.blank[token]
        if step == max_new_tokens - 1 or bool(done.all()):  # one host sync per step
            break
        logits = decode_step(model, token, state)
    tokens = torch.stack(emitted, dim=1)  # (B, S)
    return Decoded(tokens=tokens.cpu(), n_tokens=n_tokens.clamp(max=tokens.shape[1]).cpu(),
                   stop_reason=[STOP_REASONS[int(r)] for r in reason.tolist()], ids=ids)


def _stop_string_rows(tokenizer: Any, emitted: list[torch.Tensor], stop_strings: Sequence[str],
                      skip: torch.Tensor) -> torch.Tensor:
    """``(B,)`` rows whose decoded new text holds a stop string (rows in ``skip`` are False)."""
    rows = torch.stack(emitted, dim=1).tolist()
    hit = [not s and any(x in tokenizer.decode(r, skip_special_tokens=True) for x in stop_strings)
           for r, s in zip(rows, skip.tolist(), strict=True)]
    return torch.tensor(hit, dtype=torch.bool, device=skip.device)


def response_text(tokenizer: Any, tokens: Sequence[int], n_tokens: int, stop_reason: str) -> str:
    """The decoded answer: the tokens before the stop, plus the text before the newline of a newline stop token."""
    text = tokenizer.decode(list(tokens[:n_tokens]), skip_special_tokens=True)
    if stop_reason == "newline" and n_tokens < len(tokens):
        text += tokenizer.decode([int(tokens[n_tokens])], skip_special_tokens=True).split("\n", 1)[0]
    return text.strip()


def greedy_answers(model: PreTrainedModel, tokenizer: Any, seqs: Sequence[Sequence[int]], max_new_tokens: int,
                   stops: StopTokens | None = None, pad_id: int | None = None) -> list[str]:
    """Greedy first-line answers of ``seqs`` decoded as one batch (see :func:`generate`)."""
    stops = stops or StopTokens.from_tokenizer(model, tokenizer)
    out = generate(model, seqs, max_new_tokens, stops, pad_id=pad_id_of(tokenizer) if pad_id is None else pad_id)
    return [out.text(tokenizer, b) for b in range(len(seqs))]
