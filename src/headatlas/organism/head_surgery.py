"""Training-time interventions on single heads of the organism: per-sample head dropout (one
probability for all heads or one per head, ramped in by :func:`head_dropout_at`), fresh draws of
chosen heads (:func:`reinitialize_heads`) and growing a checkpoint to more query heads
(:func:`grow_query_heads`)."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

from ..heads import Head
from .train_config import OrganismTrainConfig


class HeadDropout:
    """Per-sample head dropout: zero each (sample, head) slice of every ``o_proj`` input with
    probability ``p`` (settable while training), only in training mode.

    ``p`` is a float (every head) or a ``[n_layers, n_heads]`` tensor (one probability per head).
    Survivors are scaled by 1/(1-p) (inverted dropout), so eval needs no rescaling.
    Use as ``hd = HeadDropout(model, 0.1)``; ``hd.p = ...``; ``hd.remove()``.
    """

    def __init__(self, model: LlamaForCausalLM, p: float | torch.Tensor) -> None:
        self.p = p
        self.handles = add_head_dropout(model, lambda: self.p)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def add_head_dropout(model: LlamaForCausalLM, p) -> list[torch.utils.hooks.RemovableHandle]:
    """Register the head-dropout pre-hooks; ``p`` is a float, a ``[n_layers, n_heads]`` tensor of
    per-head probabilities, or a zero-argument callable returning either."""
    n_heads, head_dim = model.config.num_attention_heads, model.config.head_dim
    get_p = p if callable(p) else (lambda: p)

    def make_hook(layer: int):
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]):
            p = get_p()
            p = p[layer].view(1, 1, n_heads, 1) if isinstance(p, torch.Tensor) else torch.tensor(float(p))
            if not module.training or not bool((p > 0).any()):
                return None
            x = args[0]  # (B, T, n_heads * head_dim)
            keep = (torch.rand(x.shape[0], 1, n_heads, 1) >= p).to(x.dtype) / (1 - p).to(x.dtype)
            return (x.view(*x.shape[:2], n_heads, head_dim).mul(keep).view_as(x),) + args[1:]

        return hook

    return [layer.self_attn.o_proj.register_forward_pre_hook(make_hook(i))
            for i, layer in enumerate(model.model.layers)]


def reinitialize_heads(model: LlamaForCausalLM, heads: list[Head], seed: int) -> None:
    """Draw the ``q_proj`` rows and ``o_proj`` columns of ``heads`` afresh (normal, the config's
    ``initializer_range``, seeded): each becomes a fresh query head on its group's shared keys and
    values, with whatever it had learned to attend to forgotten."""
    gen = torch.Generator().manual_seed(seed)
    std, dim = model.config.initializer_range, model.config.head_dim
    with torch.no_grad():
        for head in heads:
            attn = model.model.layers[head.layer].self_attn
            rows = slice(head.head * dim, (head.head + 1) * dim)
            q, o = attn.q_proj.weight, attn.o_proj.weight
            q[rows] = torch.randn(q[rows].shape, generator=gen, dtype=q.dtype) * std
            o[:, rows] = torch.randn(o[:, rows].shape, generator=gen, dtype=o.dtype) * std


def grown_head_index(head: int, old_heads: int, new_heads: int, kv_heads: int) -> int:
    """Where query head ``head`` of a layer with ``old_heads`` lands among ``new_heads`` by
    :func:`grow_query_heads`: it keeps its key/value group and its place in the group.

    >>> [grown_head_index(h, 16, 32, 4) for h in (0, 3, 4, 15)]
    [0, 3, 8, 27]
    """
    old_group, new_group = old_heads // kv_heads, new_heads // kv_heads
    return head // old_group * new_group + head % old_group


def grow_query_heads(source: LlamaForCausalLM, target: LlamaForCausalLM, seed: int) -> None:
    """Load ``source`` into ``target``, a copy with more query heads per layer (same layers, widths,
    key/value heads, head_dim), without changing what the model computes.

    Every old head keeps its key/value group (GQA groups are contiguous runs of query heads) at
    the index :func:`grown_head_index` gives; the added heads get fresh ``q_proj`` rows (normal,
    ``initializer_range``, seeded) and zero ``o_proj`` columns, so the grown model's logits equal the
    source's until training moves them. Raises ``ValueError`` for any other shape change.
    """
    a, b = source.config, target.config
    same = ("num_hidden_layers", "hidden_size", "num_key_value_heads", "head_dim", "vocab_size",
            "intermediate_size")
    if any(getattr(a, k) != getattr(b, k) for k in same) or b.num_attention_heads <= a.num_attention_heads \
            or b.num_attention_heads % b.num_key_value_heads:
        raise ValueError(f"can only add query heads (same {', '.join(same)}); "
                         f"{a.num_attention_heads} -> {b.num_attention_heads} heads asked")
    old, new, kv, dim = a.num_attention_heads, b.num_attention_heads, a.num_key_value_heads, a.head_dim

    def span(head: int) -> slice:
        return slice(head * dim, (head + 1) * dim)

    moves = [(span(h), span(grown_head_index(h, old, new, kv))) for h in range(old)]  # (source, target)
    gen = torch.Generator().manual_seed(seed)
    state = source.state_dict()
    with torch.no_grad():
        for name, value in target.state_dict().items():
            if name.endswith("q_proj.weight"):  # rows per head; added heads: fresh queries
                value.copy_(torch.randn(value.shape, generator=gen) * b.initializer_range)
                for src, dst in moves:
                    value[dst] = state[name][src]
            elif name.endswith("o_proj.weight"):  # columns per head; added heads: silent
                value.zero_()
                for src, dst in moves:
                    value[:, dst] = state[name][:, src]
            else:
                value.copy_(state[name])


def head_dropout_at(cfg: OrganismTrainConfig, step: int) -> float | torch.Tensor:
    """0 until ``head_dropout_ramp[0]`` of the steps, then linear up to ``head_dropout`` at ``[1]``;
    a ``[n_layers, n_heads]`` tensor when ``head_dropout_overrides`` sets some heads apart."""
    a, b = cfg.head_dropout_ramp
    frac = step / cfg.steps
    ramp = min(1.0, max(0.0, (frac - a) / max(b - a, 1e-9)))
    if not cfg.head_dropout_overrides:
        return cfg.head_dropout * ramp
    p = torch.full((cfg.n_layers, cfg.n_heads), cfg.head_dropout)
    for key, value in cfg.head_dropout_overrides.items():
        p[Head.parse(key)] = value
    return p * ramp
