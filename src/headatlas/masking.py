"""Intervene: mask attention heads, at every position, with any attention backend.

Three operators (``../shared/docs/science.md``):

- ``zero``: the head's slice of the output projection's input is set to 0
  (a forward pre-hook on ``o_proj``/``c_proj``/``dense``) — "remove the head";
  the slice is ``spec.head_dim`` wide, the value width (MLA: ``v_head_dim``);
- ``mean``: that slice is replaced by a supplied mean vector (see
  :func:`head_output_means`);
- ``uniform``: the head's query is set to 0, so it attends uniformly over the
  keys it may see and outputs their mean value (the reference code's and
  DeCoRe's operator; applied inside the toolkit's attention wrapper).

>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> from headatlas.heads import Head
>>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
...                   num_attention_heads=4, num_key_value_heads=2)
>>> model = LlamaForCausalLM(cfg).eval()
>>> ids = torch.randint(0, 64, (1, 8))
>>> with masked_heads(model, [Head(1, 2)], mode="zero"):
...     masked = model(ids).logits
>>> bool((masked != model(ids).logits).any())
True
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Literal

import torch
from transformers import PreTrainedModel

from .attention import UNIFORM_ATTR, engine_installed
from .config import MASK_MODES
from .heads import Head, check_heads, heads_to_strings
from .model_spec import ModelSpec, projection_weight_in_dim
from .runs import atomic_write_json, run_metadata

MaskMode = Literal["zero", "mean", "uniform"]
ABLATION_FILE = "headatlas_ablation.json"
#: The same record as written before the rename to headatlas (still read).
LEGACY_ABLATION_FILE = "retrieval_heads_ablation.json"


def _group_by_layer(heads: Iterable[Head]) -> dict[int, list[int]]:
    by_layer: dict[int, list[int]] = defaultdict(list)
    for h in heads:
        by_layer[h.layer].append(h.head)
    return dict(by_layer)


@contextmanager
def masked_heads(model: PreTrainedModel, heads: Iterable[Head | tuple[int, int]], mode: MaskMode = "zero",
                 means: torch.Tensor | None = None, prefill: bool = True, spec: ModelSpec | None = None
                 ) -> Iterator[list[Head]]:
    """Mask ``heads`` inside the ``with`` block; hooks are removed in ``finally``.

    ``means`` (mode ``mean``): ``[n_layers, n_heads, head_dim]``. ``prefill=False``
    masks decode steps only (single-row forwards) — the reference code's
    behaviour, offered for replication; the default masks every position.
    Raises ``ValueError`` for a head the model does not have.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}; choose one of {MASK_MODES}")
    spec = spec or ModelSpec.from_model(model)
    heads = check_heads(heads, spec.n_layers, spec.n_heads)
    for layer in sorted({h.layer for h in heads}):
        spec.check_softmax_layer(layer)  # a linear-attention/SSM layer has no head to mask
    if mode == "mean":
        if means is None:
            raise ValueError("mode='mean' needs means of shape [n_layers, n_heads, head_dim] (see head_output_means)")
        if tuple(means.shape) != (spec.n_layers, spec.n_heads, spec.head_dim):
            raise ValueError(f"means has shape {tuple(means.shape)}, expected {(spec.n_layers, spec.n_heads, spec.head_dim)}")
    if mode == "uniform" and not prefill:
        raise ValueError("prefill=False is only offered for the zero and mean modes")
    by_layer = _group_by_layer(heads)
    with ExitStack() as stack:
        if mode == "uniform":
            stack.enter_context(engine_installed(model))
            for layer, idx in by_layer.items():
                module = spec.attention_modules[layer]
                setattr(module, UNIFORM_ATTR, torch.tensor(idx, dtype=torch.long))
                stack.callback(setattr, module, UNIFORM_ATTR, None)
        else:
            for layer, idx in by_layer.items():
                fill = means[layer, idx] if means is not None else None
                hook = _output_slice_hook(idx, spec.head_dim, spec.n_heads, fill, prefill)
                handle = spec.output_projections[layer].register_forward_pre_hook(hook)
                stack.callback(handle.remove)
        yield heads


def _output_slice_hook(heads: list[int], head_dim: int, n_heads: int, fill: torch.Tensor | None, prefill: bool):
    index = torch.tensor(heads, dtype=torch.long)

    def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]):
        x = args[0]  # (B, T, H * D): the concatenated head outputs
        if not prefill and x.shape[1] != 1:
            return None
        x = x.reshape(*x.shape[:-1], n_heads, head_dim).clone()  # (B, T, H, D)
        x[..., index.to(x.device), :] = 0 if fill is None else fill.to(device=x.device, dtype=x.dtype)
        return (x.flatten(-2), *args[1:])

    return hook


def load_means(path: str | Path) -> torch.Tensor:
    """Per-head mean outputs ``[n_layers, n_heads, head_dim]`` for mode ``mean`` (``.pt`` or ``.safetensors``, key ``means``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))["means"]
    value = torch.load(path, map_location="cpu", weights_only=True)
    return value["means"] if isinstance(value, dict) else value


@torch.no_grad()
def head_output_means(
    model: PreTrainedModel, batches: Iterable[dict[str, torch.Tensor]], spec: ModelSpec | None = None
) -> torch.Tensor:
    """Mean output of every head ``[n_layers, n_heads, head_dim]`` over the real tokens of ``batches``.

    Each batch is a tokenizer output (``input_ids`` and ``attention_mask``).
    """
    spec = spec or ModelSpec.from_model(model)
    sums = torch.zeros(spec.n_layers, spec.n_heads, spec.head_dim, dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    current: dict[str, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(_m, args):
            x = args[0].reshape(*args[0].shape[:-1], spec.n_heads, spec.head_dim).double()  # (B, T, H, D)
            keep = current["mask"].to(x.device, x.dtype)[..., None, None]
            sums[layer] += (x * keep).sum(dim=(0, 1)).cpu()

        return hook

    handles = [p.register_forward_pre_hook(make_hook(i)) for i, p in enumerate(spec.output_projections)
               if p is not None]  # layers without softmax heads keep mean 0
    try:
        device = next(model.parameters()).device
        for batch in batches:
            mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
            current["mask"] = mask
            count += mask.sum()
            model(**{k: v.to(device) for k, v in batch.items()})
    finally:
        for h in handles:
            h.remove()
    if count == 0:
        raise ValueError("no tokens: head_output_means needs at least one batch")
    return (sums / count).float()


@contextmanager
def zero_heads_in_weights(
    model: PreTrainedModel, heads: Iterable[Head | tuple[int, int]], spec: ModelSpec | None = None
) -> Iterator[list[Head]]:
    """Zero the heads' input columns of the output projections *in the weights*; restored on exit.

    Inside the block the model is the ablated model (any engine that loads its
    weights serves it); only the zeroed slices are kept aside, so no copy of
    the model is made.
    """
    spec = spec or ModelSpec.from_model(model)
    heads = check_heads(heads, spec.n_layers, spec.n_heads)
    for layer in sorted({h.layer for h in heads}):
        spec.check_softmax_layer(layer)
    saved: list[tuple[torch.Tensor, torch.Tensor, int, slice]] = []
    with torch.no_grad():
        for h in heads:
            proj = spec.output_projections[h.layer]
            dim = projection_weight_in_dim(proj)
            cols = slice(h.head * spec.head_dim, (h.head + 1) * spec.head_dim)
            view = proj.weight.narrow(dim, cols.start, spec.head_dim)
            saved.append((proj.weight, view.clone(), dim, cols))
            view.zero_()
    try:
        yield heads
    finally:
        with torch.no_grad():
            for weight, original, dim, cols in saved:
                weight.narrow(dim, cols.start, cols.stop - cols.start).copy_(original)


def save_ablated_model(model: PreTrainedModel, heads: Iterable[Head | tuple[int, int]], out_dir: str | Path,
                       tokenizer=None, extra_meta: dict | None = None) -> Path:  # noqa: ANN001 - any HF tokenizer
    """Save a checkpoint with ``heads`` zeroed in the output projection (RetMask's ablated model).

    The heads and run metadata go to ``headatlas_ablation.json`` beside
    the weights. The in-memory model is left unchanged.
    """
    out_dir = Path(out_dir)
    with zero_heads_in_weights(model, heads) as checked:
        model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    meta = run_metadata(base_model=getattr(model.config, "_name_or_path", ""), heads=heads_to_strings(checked),
                        mode="zero (baked into the output projection)", **(extra_meta or {}))
    atomic_write_json(out_dir / ABLATION_FILE, meta)
    return out_dir


def read_ablation(path: str | Path) -> list[Head]:
    """The heads a checkpoint saved by :func:`save_ablated_model` has zeroed."""
    path = Path(path)
    record = path / ABLATION_FILE
    if not record.exists() and (path / LEGACY_ABLATION_FILE).exists():
        record = path / LEGACY_ABLATION_FILE
    data = json.loads(record.read_text())
    return [Head.parse(s) for s in data["heads"]]
