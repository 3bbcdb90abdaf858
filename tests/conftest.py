"""Shared fixtures: tiny random-init models of many families, built from configs (no downloads)."""

from __future__ import annotations

import pytest
import torch

# tiny models are fastest on one thread (and 2 threads thrash when other jobs share the 2 cores)
torch.set_num_threads(1)

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=8)


def tiny_config(family: str):
    import transformers as tf

    if family == "llama":
        return tf.LlamaConfig(**TINY, num_key_value_heads=2)
    if family == "qwen2":
        return tf.Qwen2Config(**TINY, num_key_value_heads=4)
    if family == "qwen3":
        return tf.Qwen3Config(**TINY, num_key_value_heads=2, head_dim=16)
    if family == "mistral":
        return tf.MistralConfig(**TINY, num_key_value_heads=2, sliding_window=5)
    if family == "gemma2":
        return tf.Gemma2Config(
            **TINY, num_key_value_heads=4, head_dim=8, sliding_window=5, attn_logit_softcapping=3.0,
            query_pre_attn_scalar=8,
        )
    if family == "phi3":
        return tf.Phi3Config(**TINY, num_key_value_heads=4, pad_token_id=0)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=96, n_embd=64, n_layer=3, n_head=8, n_positions=128)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(**TINY)
    raise KeyError(family)


FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "gemma2", "phi3", "gpt2", "gpt_neox"]


def make_tiny_model(family: str, seed: int = 0, attn: str | None = None):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(family)
    if attn is None:
        attn = "eager" if family == "gemma2" else "sdpa"  # Gemma 2's soft-capping is eager-only
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=torch.float32)
    # random init is near-uniform attention; sharpen it so argmax ties are impossible
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("q_proj", "k_proj", "c_attn", "query_key_value", "qkv_proj")):
                p.mul_(4.0)
    return model.eval()


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param
