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

from .capture import AttentionRecorder, CapturedAttention, capture_attention
from .heads import Head, HeadScoreFileError, HeadScores
from .masking import head_output_means, masked_heads, save_ablated_model, zero_heads_in_weights
from .model_spec import ModelSpec, UnsupportedModelError, load_model
from .selection import HeadSelection, concentration, random_heads

__all__ = [
    "AttentionRecorder",
    "CapturedAttention",
    "Head",
    "HeadScoreFileError",
    "HeadScores",
    "HeadSelection",
    "ModelSpec",
    "UnsupportedModelError",
    "capture_attention",
    "concentration",
    "head_output_means",
    "load_model",
    "masked_heads",
    "random_heads",
    "save_ablated_model",
    "zero_heads_in_weights",
]
