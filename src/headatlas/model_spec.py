"""Loading a causal LM and reading everything the toolkit needs from it.

Layer, head and KV-head counts, the head dimension, each layer's attention
and output-projection modules, the context window, EOS tokens and the chat
template are read from ``model.config``, the modules and the tokenizer —
never from the model's name.

>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
...                   num_attention_heads=4, num_key_value_heads=2)
>>> spec = ModelSpec.from_model(LlamaForCausalLM(cfg))
>>> spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.head_dim
(2, 4, 2, 8)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

# the name a layer's attention module gives its output projection, per family
OUTPUT_PROJECTION_NAMES = ("o_proj", "c_proj", "dense", "out_proj")
SUPPORTED_FAMILIES = (
    "Llama, Llama 4 (text), Mistral, Mixtral, Qwen2, Qwen3, Qwen3-MoE, Qwen3.5, Qwen3-Next, Gemma 2, Gemma 3 (text), "
    "GPT-OSS, DeepSeek-V3 (MLA), OLMo 3, Phi-3, GPT-2, GPT-NeoX, Granite-MoE-Hybrid, Falcon-H1, Jamba, LFM2 "
    "(docs/models.md) and other decoder-only models whose attention goes through transformers' AttentionInterface"
)
#: What a layer is, for the toolkit: softmax attention over the whole cache (``full``), over a sliding window
#: (``sliding``) or a chunk (``chunked``), multi-head latent attention whose cache is one shared latent per
#: token (``latent``), or a layer without softmax heads (``linear``: linear attention, SSM or convolution).
LAYER_KINDS = ("full", "sliding", "chunked", "latent", "linear")
SOFTMAX_KINDS = ("full", "sliding", "chunked", "latent")
# transformers' cache layer types (``cache_utils.get_layer_types_and_kwargs``) -> (kind, keeps recurrent state)
_CACHE_TYPE_KINDS = {
    "full_attention": ("full", False), "sliding_attention": ("sliding", False), "chunked_attention": ("chunked", False),
    "conv": ("linear", True), "linear_attention": ("linear", True), "hybrid": ("full", True),
    "hybrid_sliding": ("sliding", True),
}


class UnsupportedModelError(ValueError):
    """The model's architecture cannot be observed or masked head by head."""


class ModelNotFoundError(FileNotFoundError):
    """The model name is neither a built-in name, a checkpoint directory, nor a model on the Hub."""


def _path_like(name: str) -> bool:
    """True for names that can only be a directory (a Hub id is ``name`` or ``namespace/name``)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith("/")


def model_not_found(name: str) -> ModelNotFoundError:
    """The one-line refusal for a model name that names nothing: what was looked for, where, and the fix."""
    from .builtins import builtin_models

    fix = f"check the name, or give a checkpoint directory or a built-in model ({', '.join(builtin_models())})"
    if _path_like(name):
        return ModelNotFoundError(f"model {name!r}: no such directory; {fix}")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    where = "locally (offline: HF_HUB_OFFLINE is set)" if offline else "locally or on the Hugging Face Hub"
    return ModelNotFoundError(f"model {name!r} not found {where}; {fix}")


@dataclass
class ModelSpec:
    """What the toolkit knows about a loaded model, read from its config and modules."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int  # the width of one head's slice of the output projection's input (MLA: ``v_head_dim``)
    max_positions: int | None
    attention_modules: list[nn.Module | None] = field(repr=False)  # None: a layer without softmax heads
    output_projections: list[nn.Module | None] = field(repr=False)
    model_type: str = ""
    layer_kinds: list[str] = field(default_factory=list)  # one of LAYER_KINDS per layer
    windows: list[int | None] = field(default_factory=list)  # sliding window / chunk size per layer
    recurrent: list[bool] = field(default_factory=list)  # the layer's cache keeps a recurrent/conv state
    qk_head_dim: int = 0  # query/key width per head (MLA: nope + rope); head_dim elsewhere
    sinks: bool = False  # the attention modules have learned sink logits (``sinks``, passed as ``s_aux``)

    def __post_init__(self) -> None:
        n = self.n_layers
        self.layer_kinds = self.layer_kinds or ["full"] * n
        self.windows = self.windows or [None] * n
        self.recurrent = self.recurrent or [False] * n
        self.qk_head_dim = self.qk_head_dim or self.head_dim

    @property
    def softmax_layers(self) -> list[int]:
        """The layers that have softmax-attention heads (every layer but linear-attention/SSM/conv ones)."""
        return [i for i, kind in enumerate(self.layer_kinds) if kind in SOFTMAX_KINDS]

    @property
    def n_total_heads(self) -> int:
        """Softmax-attention heads in the model (what "5 % of heads" counts; linear layers have none)."""
        return len(self.softmax_layers) * self.n_heads

    def check_softmax_layer(self, layer: int) -> None:
        """Raise ``ValueError`` (one line) when ``layer`` has no softmax heads."""
        if self.layer_kinds[layer] not in SOFTMAX_KINDS:
            raise ValueError(f"layer {layer} of this {self.model_type} model is a {self.layer_kinds[layer]} layer "
                             f"(linear attention, SSM or convolution): it has no softmax heads to observe or mask; "
                             f"softmax layers: {self.softmax_layers}")

    @classmethod
    def from_model(cls, model: PreTrainedModel) -> ModelSpec:
        """Introspect ``model``; raise :class:`UnsupportedModelError` with the supported families otherwise."""
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        model_type = getattr(config, "model_type", type(model).__name__)
        if getattr(config, "is_encoder_decoder", False):
            raise UnsupportedModelError(
                f"{type(model).__name__} ({model_type}) is an encoder-decoder model; retrieval heads are defined "
                f"for decoder-only causal LMs. Supported: {SUPPORTED_FAMILIES}."
            )
        layers: dict[int, tuple[nn.Module, nn.Module]] = {}
        for name, module in model.named_modules():
            layer_idx = getattr(module, "layer_idx", None)
            if layer_idx is None or not type(module).__name__.endswith("Attention"):
                continue
            if getattr(module, "is_cross_attention", False) or any(k in name.lower() for k in ("cross", "encoder_attn")):
                continue  # cross-attention (e.g. a seq2seq decoder's encoder_attn) has no causal heads
            proj = next((getattr(module, n) for n in OUTPUT_PROJECTION_NAMES if hasattr(module, n)), None)
            if proj is None or not hasattr(proj, "weight"):
                continue
            if layer_idx in layers:
                raise UnsupportedModelError(f"two attention modules claim layer {layer_idx} ({name})")
            layers[int(layer_idx)] = (module, proj)
        cache_types = _cache_layer_types(config)
        for i in list(layers):  # a layer the config calls linear whose module computes no softmax (MiniMax's
            kind = _CACHE_TYPE_KINDS.get(cache_types[i] if i < len(cache_types) else "", ("", False))[0]
            if kind == "linear" and not _forward_calls_interface(layers[i][0]):  # lightning attention)
                del layers[i]
        if not layers and cache_types and all(_CACHE_TYPE_KINDS.get(t, ("", False))[0] == "linear" for t in cache_types):
            raise UnsupportedModelError(
                f"{type(model).__name__} (model_type {model_type!r}) has no softmax-attention layer (layer types: "
                f"{sorted(set(cache_types))}): retrieval heads are softmax-attention heads. Supported: "
                f"{SUPPORTED_FAMILIES}."
            )
        if not layers or not all(_uses_attention_interface(model, m) for m, _ in layers.values()):
            raise UnsupportedModelError(
                f"cannot find per-head attention in {type(model).__name__} (model_type {model_type!r}): its "
                f"attention does not go through transformers' AttentionInterface or its modules are unknown. "
                f"Supported: {SUPPORTED_FAMILIES}."
            )
        n_layers = len(cache_types) if cache_types else max(layers) + 1
        if max(layers) >= n_layers:
            raise UnsupportedModelError(f"attention layers {sorted(layers)} do not fit the model's {n_layers} layers")
        n_heads = int(config.num_attention_heads)
        n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
        modules: list[nn.Module | None] = [layers[i][0] if i in layers else None for i in range(n_layers)]
        projections: list[nn.Module | None] = [layers[i][1] if i in layers else None for i in range(n_layers)]
        first = next(m for m in modules if m is not None)
        width = _projection_input_width(layers[min(layers)][1])
        head_dim = _value_head_dim(config, n_heads, width)
        latent = getattr(first, "kv_lora_rank", None) is not None or getattr(config, "kv_lora_rank", None) is not None
        kinds, windows, recurrent = [], [], []
        for i in range(n_layers):
            kind, state = _CACHE_TYPE_KINDS.get(cache_types[i] if cache_types else "full_attention", ("full", False))
            window = _layer_window(config, i, kind)
            if modules[i] is None:
                kind, window = "linear", None
            elif kind == "linear":  # the config says linear but the layer has softmax attention: trust the module
                kind = "full"
            elif latent and kind == "full":
                kind = "latent"
            kinds.append(kind)
            windows.append(window)
            recurrent.append(state)
        qk_dim = int(getattr(first, "qk_head_dim", None) or getattr(config, "head_dim", None) or head_dim)
        max_pos = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        return cls(n_layers, n_heads, n_kv, head_dim, int(max_pos) if max_pos else None, modules, projections,
                   str(model_type), kinds, windows, recurrent, qk_dim,
                   any(isinstance(getattr(m, "sinks", None), torch.Tensor) for m in modules if m is not None))

    def describe(self) -> dict[str, Any]:
        names = ("model_type", "n_layers", "n_heads", "n_kv_heads", "head_dim", "max_positions")
        out: dict[str, Any] = {k: getattr(self, k) for k in names}
        if self.qk_head_dim != self.head_dim:
            out["qk_head_dim"] = self.qk_head_dim
        out["layer_kinds"] = list(self.layer_kinds)
        if any(self.windows):
            out["windows"] = list(self.windows)
        if any(self.recurrent):
            out["recurrent_layers"] = [i for i, r in enumerate(self.recurrent) if r]
        if self.sinks:
            out["attention_sinks"] = True
        return out


def _uses_attention_interface(model: PreTrainedModel, module: nn.Module) -> bool:
    """True when ``module``'s forward calls the backend transformers' AttentionInterface names.

    The class flag ``_supports_attention_backend`` says so for most models; hybrid models (Qwen3.5, Jamba,
    Falcon-H1) leave it unset although their softmax layers do, so the forward's source is read instead.
    """
    if getattr(model, "_supports_attention_backend", False):
        return True
    return _forward_calls_interface(module, unreadable=False)


def _forward_calls_interface(module: nn.Module, unreadable: bool = True) -> bool:
    """Whether ``module.forward``'s source names ``ALL_ATTENTION_FUNCTIONS`` (``unreadable`` when it has no source)."""
    import inspect

    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return unreadable
    return "ALL_ATTENTION_FUNCTIONS" in source


def _cache_layer_types(config: Any) -> list[str]:
    """What each layer caches, as transformers' own DynamicCache reads it from the config
    (``full_attention``, ``sliding_attention``, ``chunked_attention``, ``linear_attention``, ``conv``, ``hybrid`` ...)."""
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs

        return list(get_layer_types_and_kwargs(config)[0])
    except Exception:  # noqa: BLE001 - an older transformers or an unusual config: every layer counts as full
        n = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
        return ["full_attention"] * int(n) if n else []


def _layer_window(config: Any, layer: int, kind: str) -> int | None:
    if kind == "sliding":
        return getattr(config, "sliding_window", None)
    if kind == "chunked":
        return getattr(config, "attention_chunk_size", None)
    return None


def _value_head_dim(config: Any, n_heads: int, width: int) -> int:
    """One head's width in the output projection's input: ``v_head_dim`` (MLA), ``head_dim`` or hidden / heads."""
    hidden = getattr(config, "hidden_size", None)
    candidates = [getattr(config, "v_head_dim", None), getattr(config, "head_dim", None),
                  hidden // n_heads if hidden else None]
    for dim in candidates:
        if dim and width == n_heads * int(dim):
            return int(dim)
    raise UnsupportedModelError(
        f"the output projection takes {width} features, which is not heads x head width for any head width the "
        f"config names ({n_heads} heads; v_head_dim/head_dim/hidden_size/heads = {candidates})"
    )


def _projection_input_width(proj: nn.Module) -> int:
    """Input features of an ``nn.Linear`` or GPT-2's ``Conv1D`` (weight is [in, out] there)."""
    if isinstance(proj, nn.Linear):
        return proj.in_features
    if type(proj).__name__ == "Conv1D":
        return int(proj.weight.shape[0])
    return int(getattr(proj, "in_features", proj.weight.shape[-1]))


def projection_weight_in_dim(proj: nn.Module) -> int:
    """The weight dimension that indexes input features (1 for Linear, 0 for GPT-2 Conv1D)."""
    return 0 if type(proj).__name__ == "Conv1D" else 1


def resolve_model_path(name_or_path: str) -> str:
    """Map built-in names (``organism``, see :mod:`headatlas.builtins`) to their checkpoints; others pass through."""
    from .builtins import get_builtin

    builtin = get_builtin(name_or_path)
    if builtin is None:
        return name_or_path
    path = builtin.checkpoint()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the built-in {name_or_path} checkpoint is not shipped in this installation ({path}); "
            f"train one (e.g. `headatlas {name_or_path} train --out DIR`) and pass `--model DIR`"
        )
    return str(path)


def load_model(
    name_or_path: str, dtype: str | torch.dtype = "auto", device: str | None = None,
    attn_implementation: str | None = None, revision: str | None = None, trust_remote_code: bool = False,
    device_map: str | dict[str, Any] | None = None, **load_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ModelSpec]:
    """Load a causal LM and its tokenizer, and introspect it.

    ``name_or_path``: a hub id, a local directory or a built-in name (``"organism"``). ``dtype``: ``"auto"``
    (bf16 on a GPU that supports it, else float32), a name such as ``"bfloat16"``, or a torch dtype.
    ``device`` defaults to CUDA when available. ``attn_implementation``: the backend the toolkit wraps
    (``"sdpa"`` by default; Gemma 2's soft-capping needs ``"eager"``). ``device_map`` (``"auto"`` or an
    accelerate placement) splits a large model over GPUs, CPU and disk; ``load_kwargs`` go to ``from_pretrained``.

    >>> model, tokenizer, spec = load_model("organism")  # doctest: +SKIP
    """
    path = resolve_model_path(name_or_path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        on_gpu = str(device).startswith("cuda")
        dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if Path(path).is_dir() and not (Path(path) / "config.json").exists():
        raise FileNotFoundError(f"{path} is a directory without config.json: not a Hugging Face checkpoint")
    if _path_like(path) and not Path(path).exists():
        raise model_not_found(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as err:  # hub errors (RepositoryNotFoundError, LocalEntryNotFoundError, ...) arrive as OSError
        if Path(path).exists():
            raise
        raise model_not_found(name_or_path) from err
    kwargs: dict[str, Any] = {"dtype": dtype, "revision": revision, "trust_remote_code": trust_remote_code,
                              **load_kwargs}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ValueError as err:
        if "Unrecognized configuration class" in str(err):
            raise UnsupportedModelError(f"{name_or_path} is not a causal LM ({err}). Supported: {SUPPORTED_FAMILIES}.") from err
        raise
    if device_map is None:
        model.to(device)
    model.eval()
    spec = ModelSpec.from_model(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, spec


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """All end-of-sequence ids: the generation config's (which may list several) and the tokenizer's."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    for source in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if source is None:
            continue
        for i in [source] if isinstance(source, int) else list(source):
            if i not in ids:
                ids.append(int(i))
    return ids


def weights_fingerprint(model: nn.Module, n: int = 64) -> str:
    """A short content hash of a model's weights: every parameter's name, shape and first/last ``n`` values.

    Two checkpoints at one path (retrained, a moved hub revision) differ, so resumable runs refuse to mix
    them. Cheap (no file reads) and independent of file times, devices and load order.

    >>> import torch.nn as nn
    >>> a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    >>> weights_fingerprint(a) == weights_fingerprint(a), weights_fingerprint(a) == weights_fingerprint(b)
    (True, False)
    """
    import hashlib

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            h.update(f"{name}:{tuple(p.shape)}:".encode())
            if p.device.type == "meta":  # offloaded (accelerate device_map): no values here; name and shape only
                continue
            flat = p.detach().reshape(-1)
            h.update(torch.cat([flat[:n], flat[-n:]]).to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def model_identity(model: PreTrainedModel) -> dict[str, Any]:
    """Name, revision and weights fingerprint of a loaded model, for artifacts and resume checks."""
    from .builtins import builtin_name

    return {"model": builtin_name(getattr(model.config, "_name_or_path", "") or type(model).__name__),
            "revision": getattr(model.config, "_commit_hash", None), "architecture": type(model).__name__,
            "weights": weights_fingerprint(model)}
