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

from .lazy import lazy_exports

_EXPORTS = {
    "AttentionRecorder": ".capture",
    "CapturedAttention": ".capture",
    "Head": ".heads",
    "HeadScoreFileError": ".heads",
    "HeadScores": ".heads",
    "HeadSelection": ".selection",
    "ModelSpec": ".model_spec",
    "UnsupportedModelError": ".model_spec",
    "capture_attention": ".capture",
    "concentration": ".selection",
    "head_output_means": ".masking",
    "load_model": ".model_spec",
    "masked_heads": ".masking",
    "random_heads": ".selection",
    "save_ablated_model": ".masking",
    "zero_heads_in_weights": ".masking",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
