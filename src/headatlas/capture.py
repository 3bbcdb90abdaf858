"""Observe: the most attended key positions of selected query rows, for every head.

>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
...                   num_attention_heads=4, num_key_value_heads=2)
>>> model = LlamaForCausalLM(cfg).eval()
>>> with capture_attention(model, keys_per_row=2) as rec:  # default rows: the last row of each forward
...     _ = model(torch.randint(0, 64, (1, 10)))
>>> rec.stacked().indices.shape                          # (steps, layers, batch, heads, rows, k)
torch.Size([1, 2, 1, 4, 1, 2])

Rows are addressed by *absolute key index* (the position in the KV cache,
counting left padding). ``rows="last"`` takes the last query row of every
forward — the row that predicts the next token, one per decode step.
``recorder.set_rows(positions)`` selects explicit rows ``(B, R)`` for the next
forward (e.g. the answer-predicting rows of a teacher-forced pass).

Layers without softmax heads (linear attention, SSM, convolution: ``spec.layer_kinds``) keep their
place in the stacked records with index ``-1`` and weight ``NaN``: no key is ever attended there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from types import SimpleNamespace
from typing import Any

import torch
from transformers import PreTrainedModel

from .attention import RECORDER_ATTR, engine_installed, selected_row_probs
from .model_spec import ModelSpec


@dataclass
class CapturedAttention:
    """Stacked records: ``indices``/``weights`` ``(S, L, B, H, R, k)``, ``positions`` ``(S, B, R)``;
    ``key_probs`` ``(S, L, B, H, R, K)`` when keys were chosen with :meth:`AttentionRecorder.set_keys`."""

    indices: torch.Tensor
    weights: torch.Tensor
    positions: torch.Tensor
    key_probs: torch.Tensor | None = None


class AttentionRecorder:
    """Collects, per layer and forward call, the ``keys_per_row`` most attended keys of the selected query rows."""

    def __init__(self, n_layers: int, keys_per_row: int = 1, rows: str = "last", layers: list[int] | None = None,
                 silent: list[int] | None = None):
        if rows not in ("last", "explicit"):
            raise ValueError("rows must be 'last' or 'explicit'")
        self.n_layers = n_layers
        self.keys_per_row = keys_per_row
        self.rows = rows
        self.layers = sorted(set(layers)) if layers is not None else list(range(n_layers))
        # layers with no softmax heads: never observed, stacked as index -1 / weight NaN
        self.silent = sorted(set(silent or ()) & set(self.layers))
        if self.silent == self.layers:
            raise ValueError(f"layers {self.layers} have no softmax heads: there is nothing to capture")
        self._first = next(layer for layer in self.layers if layer not in self.silent)
        self._explicit: torch.Tensor | None = None
        self.indices: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        self.weights: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        self.positions: list[torch.Tensor] = []
        self.buffered = False
        self._keys: torch.Tensor | None = None
        self.key_probs: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        self.row_chunk = 256
        self._pending: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.block_start: int | None = None  # the cache's length before the current forward, when known

    def set_rows(self, positions: torch.Tensor) -> None:
        """Select absolute query positions ``(B, R)`` for the following forward calls."""
        if positions.ndim != 2:
            raise ValueError(f"positions must be (batch, rows), got {tuple(positions.shape)}")
        self.rows = "explicit"
        self._explicit = positions.long()

    def set_keys(self, keys: torch.Tensor) -> None:
        """Also record the attention of each selected row on chosen keys, ``(B, R, K)`` absolute key
        positions (``-1``: none, recorded as 0) — span masses and per-token attention computed in the
        same pass as the top-1 keys, from the same probabilities, without materialising attention maps
        (rows are scored in chunks of :attr:`row_chunk`: memory ``O(chunk x context)`` per layer)."""
        if keys.ndim != 3:
            raise ValueError(f"keys must be (batch, rows, keys), got {tuple(keys.shape)}")
        self._keys = keys.long()

    def clear(self) -> None:
        for layer in self.layers:
            self.indices[layer].clear()
            self.weights[layer].clear()
            self.key_probs[layer].clear()
        self.positions.clear()

    def observe_layer(self, layer: int, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      attention_mask: torch.Tensor | None, kwargs: dict[str, Any]) -> None:
        bsz, _, q_len, _ = query.shape
        k_len = key.shape[2]
        # absolute cache index of this block's first query: the cache's length before the forward (set by
        # capture_attention's hook); a sliding-window layer's cache holds only its last keys, so k_len - q_len
        # is not it there. Its keys are the last k_len positions up to the block's end.
        offset = self.block_start if self.block_start is not None else k_len - q_len
        key_shift = max(0, offset + q_len - k_len)  # > 0 only where the layer's cache keeps its last keys only
        if self.rows == "last":
            row_index = torch.full((bsz, 1), q_len - 1, device=query.device, dtype=torch.long)
        else:
            if self._explicit is None:
                raise RuntimeError("rows='explicit' but set_rows() was not called before the forward")
            row_index = self._explicit.to(query.device) - offset
            if row_index.shape[0] != bsz:
                raise ValueError(f"set_rows got batch {row_index.shape[0]}, the forward has batch {bsz}")
            if (row_index < 0).any() or (row_index >= q_len).any():
                raise ValueError(
                    f"selected positions must lie in this forward's query block [{offset}, {offset + q_len}), "
                    f"got {self._explicit.min().item()}..{self._explicit.max().item()}"
                )
        weights, indices, key_probs = self._score_rows(module, query, key, row_index, q_len, attention_mask, kwargs,
                                                       key_shift)
        if key_probs is not None:
            if self.buffered:
                raise RuntimeError("set_keys() records plain forwards, not buffered (compiled) decode steps")
            self.key_probs[layer].append(key_probs)
        record = ((indices + key_shift).to(torch.int32), weights.to(torch.float16 if weights.is_cuda else torch.float32),
                  row_index + offset)
        if self.buffered:  # a compiled step: overwrite one slot per layer, collected by flush()
            self._pending[layer] = record
            return
        self.indices[layer].append(record[0])
        self.weights[layer].append(record[1])
        if layer == self._first:
            self.positions.append(record[2])

    def _score_rows(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, row_index: torch.Tensor,
                    q_len: int, attention_mask: torch.Tensor | None, kwargs: dict[str, Any], key_shift: int = 0,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Top-k weights and indices ``(B, H, R, k)`` of the selected rows and, with :meth:`set_keys`, their
        probabilities on the chosen keys ``(B, H, R, K)``; rows in chunks when keys are chosen. ``key_shift``:
        the absolute position of ``key``'s first column (> 0 where a windowed layer keeps its last keys only);
        chosen keys outside the layer's cache are recorded as 0."""
        keys = None if self._keys is None else self._keys.to(query.device)
        chunk = row_index.shape[1] if keys is None else max(1, self.row_chunk)
        parts = []
        for lo in range(0, row_index.shape[1], chunk):
            rows = row_index[:, lo:lo + chunk]
            # (B, H, r, D): only the selected query rows are scored
            q_rows = torch.gather(query, 2, rows[:, None, :, None].expand(-1, query.shape[1], -1, query.shape[-1]))
            probs = selected_row_probs(module, q_rows, key, rows, q_len, attention_mask, kwargs)
            weights, indices = probs.topk(self.keys_per_row, dim=-1)
            picked = None
            if keys is not None:
                k = keys[:, lo:lo + chunk] - key_shift  # (B, r, K), positions in this layer's cache
                idx = k.clamp(0, key.shape[2] - 1)[:, None].expand(-1, probs.shape[1], -1, -1)
                picked = torch.gather(probs, 3, idx).masked_fill((k < 0)[:, None], 0.0)
            parts.append((weights, indices, picked))
        weights = torch.cat([p[0] for p in parts], dim=2)
        indices = torch.cat([p[1] for p in parts], dim=2)
        key_probs = None if keys is None else torch.cat([p[2] for p in parts], dim=2).float()
        return weights, indices, key_probs

    def flush(self) -> None:
        """Keep the records of the last forward made with ``buffered`` set (copied: a CUDA graph replays
        into the buffers they live in). A buffered recorder writes one slot per layer instead of appending
        to lists, so a compiled step sees the same Python state at every call."""
        if not self._pending:
            return
        for layer in self.layers:
            if layer in self.silent:
                continue
            indices, weights, positions = self._pending[layer]
            self.indices[layer].append(indices.clone())
            self.weights[layer].append(weights.clone())
            if layer == self._first:
                self.positions.append(positions.clone())

    def stacked(self) -> CapturedAttention:
        """All forward calls so far as tensors (rows must have the same count in every call)."""
        if not self.positions:
            raise RuntimeError("nothing was captured: run a forward inside capture_attention()")
        device = self.positions[0].device  # layers split over devices (device_map) meet on the first one
        shown_i = torch.stack(self.indices[self._first]).to(device)
        shown_w = torch.stack(self.weights[self._first]).to(device)
        idx = {layer: torch.stack(self.indices[layer]).to(device) if layer not in self.silent
               else torch.full_like(shown_i, -1) for layer in self.layers}
        wts = {layer: torch.stack(self.weights[layer]).to(device) if layer not in self.silent
               else torch.full_like(shown_w, float("nan")) for layer in self.layers}
        indices = torch.stack([idx[layer] for layer in self.layers], dim=1)
        weights = torch.stack([wts[layer] for layer in self.layers], dim=1)
        key_probs = None
        if self.key_probs[self._first]:
            shown_p = torch.stack(self.key_probs[self._first]).to(device)
            probs = {layer: torch.stack(self.key_probs[layer]).to(device) if layer not in self.silent
                     else torch.full_like(shown_p, float("nan")) for layer in self.layers}
            key_probs = torch.stack([probs[layer] for layer in self.layers], dim=1)
        return CapturedAttention(indices.long(), weights.float(), torch.stack(self.positions), key_probs)


@contextmanager
def capture_attention(model: PreTrainedModel, keys_per_row: int = 1, rows: str = "last",
                      layers: list[int] | None = None, spec: ModelSpec | None = None) -> Iterator[AttentionRecorder]:
    """Record the ``keys_per_row`` most attended key positions (and their weights) of selected query rows, per head.

    The model's outputs are exactly those of its own attention backend; the
    extra cost is one ``rows x context`` score matrix per layer. Weights are the
    model's softmax including attention sinks (GPT-OSS), so a row sums to less than 1 there.
    """
    spec = spec or ModelSpec.from_model(model)
    if layers is not None:
        for layer in layers:
            spec.check_softmax_layer(layer)
    silent = [i for i in range(spec.n_layers) if spec.attention_modules[i] is None]
    recorder = AttentionRecorder(spec.n_layers, keys_per_row=keys_per_row, rows=rows, layers=layers, silent=silent)
    attached = []
    first_softmax = spec.softmax_layers[0]

    def note_block_start(_module: torch.nn.Module, _args: tuple, kwargs: dict[str, Any]) -> None:
        """Before each forward: the absolute cache length (a sliding-window layer's own cache is shorter)."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if torch.compiler.is_compiling():  # a compiled step keeps no Python int: per layer, as before
            recorder.block_start = None
            return
        try:
            recorder.block_start = int(cache.get_seq_length(first_softmax)) if cache is not None else 0
        except (AttributeError, TypeError, IndexError):  # a legacy tuple cache or another object: per layer
            recorder.block_start = None

    hook = model.register_forward_pre_hook(note_block_start, with_kwargs=True)
    with engine_installed(model):
        try:
            for layer in recorder.layers:
                module = spec.attention_modules[layer]
                if module is None:
                    continue
                if getattr(module, RECORDER_ATTR, None) is not None:
                    raise RuntimeError(f"layer {layer} is already being captured (nested capture_attention?)")
                setattr(module, RECORDER_ATTR, SimpleNamespace(observe=partial(recorder.observe_layer, layer)))
                attached.append(module)
            yield recorder
        finally:
            hook.remove()
            for module in attached:
                setattr(module, RECORDER_ATTR, None)
