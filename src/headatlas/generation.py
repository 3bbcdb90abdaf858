"""One decoding loop: left-padded batched greedy decoding or per-row seeded sampling over the KV cache.

Every generation in the toolkit runs here: detection's greedy mode (inside
:func:`headatlas.capture_attention`, one forward per emitted token), NIAH
evaluation, task accuracy, RetMask's sampled pairs, the split KV cache of
``kv-compress`` and DeCoRe's two streams (a custom ``step``).

Stopping (:class:`StopTokens`, resolved from the vocabulary, never literal
tokens): at an EOS id, at the first token that puts a newline after non-space
answer text, or once the decoded text holds a stop string. The stop token is
returned but not counted in ``n_tokens``. Rows never see each other (left
padding, per-row positions, one ``torch.Generator`` per row), so results do
not depend on the batch composition.

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
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from .model_spec import eos_token_ids
from .prefix import Prefix, prefix_cache

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
    """Temperature + top-p sampling with one seeded ``torch.Generator`` per batch row (never seeing other rows)."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, device: torch.device | str):
        self.temperature, self.top_p = temperature, top_p
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

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


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, n_prefix: int = 0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token lists to ``(B, T)`` ids, attention mask and position ids (0 at each first real token).

    With ``n_prefix`` (a prefix every row shares, see :mod:`headatlas.prefix`)
    the padding goes after the prefix instead: token ``p >= n_prefix`` of a
    row of length ``n`` sits at column ``p + T - n`` either way.

    >>> ids, mask, pos = left_pad([[5, 6, 7], [8, 9]], pad_id=0)
    >>> ids.tolist(), pos.tolist()
    ([[5, 6, 7], [0, 8, 9]], [[0, 1, 2], [0, 0, 1]])
    >>> ids, mask, pos = left_pad([[5, 6, 7], [5, 9]], pad_id=0, n_prefix=1)
    >>> ids.tolist(), pos.tolist()
    ([[5, 6, 7], [5, 0, 9]], [[0, 1, 2], [0, 0, 1]])
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, seq in enumerate(seqs):
        seq = list(seq)
        ids[b, :n_prefix] = torch.tensor(seq[:n_prefix], dtype=torch.long)
        ids[b, width - len(seq) + n_prefix :] = torch.tensor(seq[n_prefix:], dtype=torch.long)
        mask[b, :n_prefix] = 1
        mask[b, width - len(seq) + n_prefix :] = 1
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
    """What one decode step needs: the attention mask, positions ``(B, 1)``, the cache and how to step.

    The dynamic path grows ``mask`` ``(B, T+s)`` a column a step; the static path (``length`` set) keeps
    the cache's ``(B, slots)`` and switches on column ``length`` in place (fixed shapes for a CUDA graph).
    """

    mask: torch.Tensor
    positions: torch.Tensor
    cache: Any
    cache_arg: str
    length: int | None = None
    step: Callable[..., torch.Tensor] | None = None


def prefill(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
            prefix: Prefix | None = None, static_len: int | None = None, cache: Any = None
            ) -> tuple[torch.Tensor, DecodeState]:
    """Run the padded prompts ``(B, T)`` once; returns the last row's logits ``(B, V)`` and the decode state.

    ``prefix``: the batch continues this shared prefix (laid out by
    ``left_pad(..., n_prefix=len(prefix))``); only columns after it run.
    ``static_len``: decode on a static cache of that many slots (see :func:`fast_decode`).
    ``cache``: run over this (empty) cache instead.
    """
    n = len(prefix) if prefix is not None else 0
    cache_arg = cache_argument(model)
    kwargs = {}
    if cache is not None:
        kwargs[cache_arg] = cache
    elif prefix is not None or static_len is not None:
        kwargs[cache_arg] = prefix_cache(model, prefix, ids.shape[0], static_len)
    out = model(input_ids=ids[:, n:], attention_mask=mask, position_ids=positions[:, n:], use_cache=True,
                logits_to_keep=1, **kwargs)
    state = DecodeState(mask, positions[:, -1:], _cache_of(out), cache_arg)
    if static_len is not None:
        state.length = ids.shape[1]
        state.mask = torch.cat([mask, mask.new_zeros(mask.shape[0], static_len - ids.shape[1])], dim=1)
        state.step = _compiled_step(model) if fast_decode(ids.device) == "compiled" else _forward_step
    return out.logits[:, -1], state


def prefill_but_last(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                     prefix: Prefix | None = None, cache: Any = None, chunk: int | None = None) -> DecodeState:
    """Run the padded prompts ``(B, T)`` but their last column, ``chunk`` columns a forward (default: all at once).

    Returns the decode state whose first :func:`decode_step` is fed the last column.
    """
    n, width = (len(prefix) if prefix is not None else 0), ids.shape[1] - 1
    cache = cache if cache is not None else prefix_cache(model, prefix, ids.shape[0])
    kw = {cache_argument(model): cache, "use_cache": True, "logits_to_keep": 1}
    chunk = chunk or max(width, 1)
    for start in range(n, width, chunk):
        end = min(start + chunk, width)
        model(input_ids=ids[:, start:end], attention_mask=mask[:, :end], position_ids=positions[:, start:end], **kw)
    return DecodeState(mask[:, :width], positions[:, -1:] - 1, cache, cache_argument(model))


def decode_step(model: PreTrainedModel, token: torch.Tensor, state: DecodeState) -> torch.Tensor:
    """Feed one token per row ``(B,)`` and advance ``state``; returns the next logits ``(B, V)``."""
    state.positions = state.positions + 1
    if state.length is None:
        state.mask = torch.cat([state.mask, state.mask.new_ones(state.mask.shape[0], 1)], dim=1)
        out = model(input_ids=token[:, None], attention_mask=state.mask, position_ids=state.positions,
                    use_cache=True, **{state.cache_arg: state.cache})
        state.cache = _cache_of(out)
        return out.logits[:, -1]
    state.mask[:, state.length] = 1
    state.length += 1
    step = state.step or _forward_step
    try:
        logits = step(model, token[:, None], state.mask, state.positions, state.cache, state.cache_arg)
    except Exception as err:  # noqa: BLE001 - a backend that cannot compile this step: run it eagerly from now on
        if step is _forward_step:
            raise
        _COMPILE_FAILED.append(f"{type(err).__name__}: {str(err)[:200]}")
        state.step = _forward_step
        logits = _forward_step(model, token[:, None], state.mask, state.positions, state.cache, state.cache_arg)
    return logits.clone()  # a CUDA graph replays into the same output buffer


# ---- the fast path: static cache, compiled step, batch size from free memory ----------------------------------
FAST_DECODE = os.environ.get("HEADATLAS_FAST_DECODE", "auto")  # auto | compiled | static | off
_COMPILE_FAILED: list[str] = []


def fast_decode(device: torch.device) -> str:
    """The decode path on ``device``: ``compiled`` (static cache + ``torch.compile``, CUDA only), ``static`` or ``dynamic``.

    ``HEADATLAS_FAST_DECODE``: ``auto`` (compiled on CUDA, dynamic elsewhere; static after a failed
    compilation), ``compiled``, ``static`` (e.g. to test it on CPU) or ``off``. Results do not depend on it.
    """
    mode = os.environ.get("HEADATLAS_FAST_DECODE", FAST_DECODE)
    if mode == "off":
        return "dynamic"
    if mode == "static":
        return "static"
    cuda = torch.device(device).type == "cuda"
    if mode == "compiled" or (mode == "auto" and cuda):
        return "static" if _COMPILE_FAILED or not cuda else "compiled"
    return "dynamic"


def _forward_step(model: PreTrainedModel, token: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                  cache: Any, cache_arg: str) -> torch.Tensor:
    out = model(input_ids=token, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_arg: cache})
    return out.logits[:, -1]


def _compiled_step(model: PreTrainedModel) -> Callable[..., torch.Tensor]:
    """The model's decode step compiled once per model (CUDA graphs: every step has the same shapes)."""
    compiled = getattr(model, "_rh_compiled_step", None)
    if compiled is None:
        compiled = torch.compile(_forward_step, mode="reduce-overhead")  # shapes go dynamic after one recompile
        model._rh_compiled_step = compiled

    def step(*args: Any) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*args)

    return step


def static_slots(width: int, max_new_tokens: int, bucket: int = 256) -> int:
    """Slots of a static cache for prompts of ``width`` columns, rounded up so that few shapes compile.

    >>> static_slots(1000, 50)
    1280
    """
    return -(-(width + max_new_tokens) // bucket) * bucket


def auto_batch_size(model: PreTrainedModel, width: int, max_new_tokens: int = 0, cap: int = 32) -> int:
    """The most rows of ``width + max_new_tokens`` tokens that fit in the free memory of ``model``'s GPU (1 on CPU).

    Per row: the KV cache, the prefill's widest activations (MLP states, one layer's captured float32
    scores) and one row of float32 logits; 80 % of the free memory is used.

    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> auto_batch_size(LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)), 100)
    1
    """
    param = next(model.parameters())
    if param.device.type != "cuda":
        return 1
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_heads = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads)
    tokens = width + max_new_tokens
    size = param.element_size()
    kv = 2 * int(cfg.num_hidden_layers) * n_kv * head_dim * tokens * size
    act = width * (3 * int(getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)) + 4 * int(cfg.hidden_size)) * size
    act += n_heads * width * 4 + int(cfg.vocab_size) * 4
    free, _ = torch.cuda.mem_get_info(param.device)
    return max(1, min(cap, int(0.8 * free) // (kv + act)))


@dataclass
class Decoded:
    """One batch: emitted ``tokens`` ``(B, S)`` (stop token included), ``n_tokens`` ``(B,)`` before the stop.

    ``ids`` ``(B, T)`` is the left-padded prompt batch the tokens continue
    (after a shared prefix of ``n_prefix`` tokens, the padding follows the prefix).
    """

    tokens: torch.Tensor
    n_tokens: torch.Tensor
    stop_reason: list[str]
    ids: torch.Tensor
    n_prefix: int = 0

    def text(self, tokenizer: Any, row: int) -> str:
        """Row ``row``'s answer text (see :func:`response_text`)."""
        return response_text(tokenizer, self.tokens[row].tolist(), int(self.n_tokens[row]), self.stop_reason[row])


@torch.no_grad()
def generate(
    model: PreTrainedModel, seqs: Sequence[Sequence[int]], max_new_tokens: int, stops: StopTokens, pad_id: int = 0,
    sampler: Callable[[torch.Tensor], torch.Tensor] | None = None, stop_strings: Sequence[str] = (),
    tokenizer: Any = None, prefix: Prefix | None = None, on_step: Callable[[], None] | None = None, *,
    cache: Any = None, prefill_chunk: int | None = None,
    step: Callable[[PreTrainedModel, torch.Tensor, DecodeState], torch.Tensor] | None = None,
) -> Decoded:
    """Decode ``seqs`` (unpadded token lists) as one left-padded batch, greedily or with ``sampler``.

    ``sampler`` maps logits ``(B, V)`` to tokens ``(B,)`` (e.g. :class:`RowSampler`);
    without it decoding is greedy (argmax). ``stop_strings`` (which need
    ``tokenizer``) end a row once its decoded new text holds one of them.
    ``prefix``: a :class:`~headatlas.prefix.Prefix` every sequence
    starts with, computed once (``ids`` then pads after it). The decode path
    (static cache, compiled step) follows :func:`fast_decode`; ``on_step`` is
    called after the prefill and each decode step (a buffered capture recorder flushes there).

    ``cache``: decode over this cache (e.g. a :class:`~headatlas.kvcache.HeadSplitCache`).
    ``prefill_chunk``: read the prompt but its last token in forwards of at most that many
    tokens, then feed the last token as the first decode step (bounds a cache's transient size).
    ``step``: replaces :func:`decode_step` (same signature; it may return other scores
    than the logits, e.g. DeCoRe's contrast of two streams). Any of the three decodes dynamically.
    """
    if stop_strings and tokenizer is None:
        raise ValueError("stop strings need the tokenizer")
    n_prefix = len(prefix) if prefix is not None else 0
    if prefix is not None and any(tuple(s[:n_prefix]) != prefix.tokens or len(s) <= n_prefix for s in seqs):
        raise ValueError("every sequence must start with the prefix and extend past it")
    device = next(model.parameters()).device
    ids, mask, positions = (t.to(device) for t in left_pad(seqs, pad_id, n_prefix))
    custom = cache is not None or prefill_chunk is not None or step is not None
    static_len = static_slots(ids.shape[1], max_new_tokens) if not custom and fast_decode(device) != "dynamic" else None
    bsz = ids.shape[0]
    stops = stops.to(device)
    pick = sampler or (lambda logits: logits.argmax(-1))
    emitted: list[torch.Tensor] = []
    n_tokens = torch.full((bsz,), max_new_tokens, dtype=torch.long, device=device)
    reason = torch.zeros(bsz, dtype=torch.long, device=device)  # index into STOP_REASONS
    done = torch.zeros(bsz, dtype=torch.bool, device=device)
    started = torch.zeros(bsz, dtype=torch.bool, device=device)  # some non-space text was emitted
    step = step or decode_step
    if prefill_chunk is None:
        logits, state = prefill(model, ids, mask, positions, prefix, static_len, cache)
    else:
        state = prefill_but_last(model, ids, mask, positions, prefix, cache, prefill_chunk)
        logits = step(model, ids[:, -1], state)
    if on_step is not None:
        on_step()
    for i in range(max_new_tokens):
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
        n_tokens = torch.where(stop_now, i, n_tokens)
        done = done | stop_now
        started = started | ~stops.blank[token]
        if i == max_new_tokens - 1 or bool(done.all()):  # one host sync per step
            break
        logits = step(model, token, state)
        if on_step is not None:
            on_step()
    tokens = torch.stack(emitted, dim=1)  # (B, S)
    return Decoded(tokens=tokens.cpu(), n_tokens=n_tokens.clamp(max=tokens.shape[1]).cpu(),
                   stop_reason=[STOP_REASONS[int(r)] for r in reason.tolist()], ids=ids, n_prefix=n_prefix)


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
