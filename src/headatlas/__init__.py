"""headatlas: find, mask and use the retrieval heads of Hugging Face causal LMs.

The engine, in three calls::

    from headatlas import load_model, capture_attention, masked_heads, Head

    model, tokenizer, spec = load_model("organism")          # any HF causal LM
    with capture_attention(model) as rec:                     # observe
        model(**tokenizer("...", return_tensors="pt"))
    with masked_heads(model, [Head(3, 5)], mode="zero"):     # intervene
        model.generate(...)
"""

__version__ = "0.1.0"

from .lazy import exports, lazy_exports

_EXPORTS = exports({
    ".capture": "AttentionRecorder CapturedAttention capture_attention",
    ".heads": "Head HeadScoreFileError HeadScores",
    ".selection": "HeadSelection concentration random_heads",
    ".model_spec": "ModelSpec UnsupportedModelError load_model",
    ".masking": "head_output_means masked_heads save_ablated_model zero_heads_in_weights",
})

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
