"""The ``duo`` scorer: DuoAttention's gates, one per KV head, trained on the model's own retrieval prompts.

Each KV head ``(l, j)`` gets a gate ``g`` in ``[0, 1]`` (initialised to 1, as DuoAttention): its heads'
output becomes ``g * full + (1 - g) * streaming``, streaming attention seeing only the first ``duo_sink``
tokens (the attention sink) and the last ``duo_window`` ones. The gates are trained, the model frozen, to
keep the model's final hidden states on the rows that predict the answer (teacher-forced, as the passkey
answers of DuoAttention) with the L1 penalty: ``loss = MSE(h_gated, h_full) + duo_reg * mean|g|``; Adam,
one prompt per step, gates clamped to ``[0, 1]`` after each step. A KV head's gate is the score of each
query head it serves. Null level 0.5: DuoAttention's default deployment threshold (a gate under it
streams). The gated attention is one more function registered with transformers' ``AttentionInterface``
(:func:`headatlas.attention.register_over`), wrapping the model's own backend for the full half.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers.integrations.sdpa_attention import repeat_kv

from ..attention import base_backend, base_function, register_over
from .scorers import BatchContext, PromptScorer

DUO_PREFIX = "headatlas_duo_"
GATE_ATTR = "_rh_duo_gate"  # (sink, window, gate tensor (n_kv,)) on an attention module


def streaming_mask(q_len: int, k_len: int, sink: int, window: int, device: torch.device) -> torch.Tensor:
    """Boolean ``(q_len, k_len)``: causal, and only the first ``sink`` keys or the last ``window`` ones.

    >>> streaming_mask(4, 4, 1, 2, torch.device("cpu")).int().tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 1, 1]]
    """
    q = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k = torch.arange(k_len, device=device)[None, :]
    return (k <= q) & ((k < sink) | (k > q - window))


def _make_duo(base: str) -> Callable[..., Any]:
    def headatlas_duo_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        full, _ = base_function(base, module)(module, query, key, value, attention_mask, **kwargs)  # (B, Lq, H, D)
        state = getattr(module, GATE_ATTR, None)
        if state is None:
            return full, None
        sink, window, gate = state
        groups = query.shape[1] // key.shape[1]
        mask = streaming_mask(query.shape[2], key.shape[2], sink, window, query.device)
        stream = torch.nn.functional.scaled_dot_product_attention(
            query, repeat_kv(key, groups), repeat_kv(value, groups), attn_mask=mask, scale=kwargs.get("scaling"))
        g = gate.clamp(0, 1).repeat_interleave(groups).to(full.dtype)[None, None, :, None]  # per query head
        return g * full + (1 - g) * stream.transpose(1, 2), None

    headatlas_duo_attention.__name__ = f"headatlas_duo_attention_{base}"
    return headatlas_duo_attention


@contextmanager
def duo_gates(model: Any, spec: Any, gates: torch.Tensor, sink: int, window: int):  # noqa: ANN201
    """Route ``model``'s attention through the gated mix, gate ``gates[l]`` ``(n_kv,)`` on layer ``l``."""
    before = model.config._attn_implementation
    model.set_attn_implementation(register_over(DUO_PREFIX, base_backend(model), _make_duo))
    try:
        for layer, module in enumerate(spec.attention_modules):
            setattr(module, GATE_ATTR, (sink, window, gates[layer]))
        yield
    finally:
        for module in spec.attention_modules:
            setattr(module, GATE_ATTR, None)
        model.set_attn_implementation(before)


class DuoScorer(PromptScorer):
    """DuoAttention (Xiao et al., ICLR 2025): a gate per KV head mixing full and streaming attention."""

    name = "duo"
    method = "duo-gates"
    kind = "duo"
    batchable = False

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.gates: torch.Tensor | None = None

    def fingerprint(self) -> dict[str, Any]:
        c = self.config
        return {"scorer": self.name, "duo_steps": c.duo_steps, "duo_sink": c.duo_sink, "duo_window": c.duo_window,
                "duo_reg": c.duo_reg, "duo_lr": c.duo_lr, "seed": c.seed}

    def items(self, prompts: Sequence[Any], tokenizer: Any, spec: Any) -> list[Any]:
        from dataclasses import replace

        base = super().items(prompts, tokenizer, spec)
        if not base:
            return []
        order = torch.randperm(len(base), generator=torch.Generator().manual_seed(self.config.seed)).tolist()
        return [replace(base[order[i % len(base)]], prompt_id=f"step{i}|{base[order[i % len(base)]].prompt_id}")
                for i in range(self.config.duo_steps)]

    def resume(self, records: Sequence[dict[str, Any]]) -> None:
        if records:
            self.gates = torch.tensor(records[-1]["gates"], dtype=torch.float32)
            self._state = None  # Adam's moments are not journaled: a resumed run restarts them

    def score_batch(self, ctx: BatchContext, batch: Sequence[Any]) -> list[dict[str, Any]]:
        c, model, spec = self.config, ctx.model, ctx.spec
        if self.gates is None:
            self.gates = torch.ones(spec.n_layers, spec.n_kv_heads)
        gates = self.gates.to(next(model.parameters()).device).requires_grad_(True)
        optimizer = torch.optim.Adam([gates], lr=c.duo_lr)
        if getattr(self, "_state", None) is not None:
            optimizer.load_state_dict(self._state)
        records = []
        for it in batch:
            answer = list(it.input_ids[it.span[0]: it.span[1]])
            ids = torch.tensor([list(it.input_ids) + answer], device=gates.device)
            rows = torch.arange(len(it.input_ids) - 1, ids.shape[1] - 1, device=gates.device)
            with torch.no_grad():
                target = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[-1][0, rows]
            frozen = [p for p in model.parameters() if p.requires_grad]
            for p in frozen:
                p.requires_grad_(False)
            try:
                with torch.enable_grad(), duo_gates(model, spec, gates, c.duo_sink, c.duo_window):
                    hidden = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[-1][0, rows]
                    distill = torch.nn.functional.mse_loss(hidden.float(), target.float())
                    loss = distill + c.duo_reg * gates.abs().mean()
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            finally:
                for p in frozen:
                    p.requires_grad_(True)
            with torch.no_grad():
                gates.clamp_(0, 1)
            records.append({"counted": True, "loss": round(loss.item(), 7), "distill": round(distill.item(), 7),
                            "gates": [[round(float(x), 6) for x in row] for row in gates.detach().cpu().tolist()]})
        self.gates = gates.detach().cpu()
        self._state = optimizer.state_dict()
        return records

    def reduce(self, records: Sequence[dict[str, Any]], n_layers: int, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        gates = torch.tensor(records[-1]["gates"], dtype=torch.float32)  # (L, n_kv): the last step's gates
        scores = gates.repeat_interleave(n_heads // gates.shape[1], dim=1)
        return scores, (scores > self.null_level(records)).long() * sum(bool(r["counted"]) for r in records)

    def null_level(self, records: Sequence[dict[str, Any]]) -> float:
        return 0.5

