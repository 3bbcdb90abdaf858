"""The built-in model organism: a small multilingual Llama with real retrieval heads.

Trained from scratch on 2 CPU cores on a synthetic needle-in-a-haystack corpus
in English, German, Chinese and Swahili (see ``docs/organism.md``). It is the
toolkit's default model (``--model organism``).

>>> from headatlas.organism import load_organism
>>> model, tokenizer = load_organism()
>>> model.config.num_hidden_layers * model.config.num_attention_heads
128
"""

from __future__ import annotations

from pathlib import Path

ORGANISM_PATH: Path = Path(__file__).resolve().parent / "checkpoint"


def load_organism(device: str = "cpu", attn_implementation: str = "sdpa"):
    """Load the shipped checkpoint as ``(model, tokenizer)``, float32, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (ORGANISM_PATH / "model.safetensors").is_file():
        raise FileNotFoundError(f"no organism checkpoint at {ORGANISM_PATH}; train one with "
                                "`headatlas organism train --out DIR`")
    tokenizer = AutoTokenizer.from_pretrained(ORGANISM_PATH)
    model = AutoModelForCausalLM.from_pretrained(ORGANISM_PATH, dtype=torch.float32, attn_implementation=attn_implementation)
    return model.to(device).eval(), tokenizer


__all__ = ["ORGANISM_PATH", "load_organism"]
