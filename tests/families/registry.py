"""Tiny random models of every family the toolkit supports, built from their transformers configs (no download).

Each builds in well under a second: 4 layers, hidden 64, 4 query heads (2 KV heads where the family has GQA),
a 300-token vocabulary (the byte-level tokenizer of ``tests/evaluate/conftest.py`` fits it). Sliding windows
(5) and chunks (6) are short so that 12-token inputs cross them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

VOCAB = 300
BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024)
LINEAR = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8)
MAMBA2 = dict(mamba_n_heads=4, mamba_d_head=32, mamba_d_state=16, mamba_n_groups=1, mamba_chunk_size=16)


def _config(cls_name: str, **kw: Any) -> Any:
    import transformers

    return getattr(transformers, cls_name)(**{**BASE, **kw})


#: family -> (display name, config factory, attention backend it runs on)
FAMILIES: dict[str, tuple[str, Callable[[], Any], str]] = {
    "llama": ("Llama", lambda: _config("LlamaConfig"), "sdpa"),
    "qwen2": ("Qwen2", lambda: _config("Qwen2Config"), "sdpa"),
    "qwen3": ("Qwen3", lambda: _config("Qwen3Config", head_dim=16), "sdpa"),
    "qwen3_moe": ("Qwen3-MoE", lambda: _config("Qwen3MoeConfig", head_dim=16, num_experts=4, num_experts_per_tok=2,
                                               moe_intermediate_size=32), "sdpa"),
    "qwen3_5": ("Qwen3.5", lambda: _config("Qwen3_5TextConfig", head_dim=16, **LINEAR, layer_types=[
        "linear_attention", "full_attention", "linear_attention", "full_attention"]), "sdpa"),
    "qwen3_next": ("Qwen3-Next", lambda: _config(
        "Qwen3NextConfig", head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=32, **LINEAR,
        layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"]), "sdpa"),
    "mistral": ("Mistral (sliding window)", lambda: _config("MistralConfig", sliding_window=5), "sdpa"),
    "gemma2": ("Gemma 2", lambda: _config("Gemma2Config", head_dim=16, sliding_window=5, attn_logit_softcapping=3.0,
                                         query_pre_attn_scalar=16), "eager"),
    "gemma3": ("Gemma 3 (text)", lambda: _config("Gemma3TextConfig", head_dim=16, sliding_window=5,
                                                 sliding_window_pattern=2, query_pre_attn_scalar=16), "sdpa"),
    "gpt_oss": ("GPT-OSS", lambda: _config("GptOssConfig", head_dim=16, sliding_window=5, num_local_experts=4,
                                           num_experts_per_tok=2), "eager"),
    "deepseek_v3": ("DeepSeek-V3 (MLA)", lambda: _config(
        "DeepseekV3Config", num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=8,
        qk_rope_head_dim=8, v_head_dim=12, head_dim=8, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, first_k_dense_replace=1, n_group=1, topk_group=1), "sdpa"),
    "olmo3": ("OLMo 3", lambda: _config("Olmo3Config", sliding_window=5), "sdpa"),
    "phi3": ("Phi-3", lambda: _config("Phi3Config", pad_token_id=0), "sdpa"),
    "gpt_neox": ("GPT-NeoX", lambda: _config("GPTNeoXConfig", num_key_value_heads=None), "sdpa"),
    "gpt2": ("GPT-2", lambda: __import__("transformers").GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=4, n_head=4,
                                                                       n_positions=1024), "sdpa"),
    "llama4_text": ("Llama 4 (text, chunked)", lambda: _config(
        "Llama4TextConfig", head_dim=16, attention_chunk_size=6, num_local_experts=2, intermediate_size_mlp=96,
        no_rope_layers=[1, 1, 1, 0]), "sdpa"),
    "granitemoehybrid": ("Granite-MoE-Hybrid", lambda: _config(
        "GraniteMoeHybridConfig", layer_types=["mamba", "attention", "mamba", "attention"], num_local_experts=2,
        num_experts_per_tok=1, mamba_expand=2, **MAMBA2), "sdpa"),
    "falcon_h1": ("Falcon-H1", lambda: _config("FalconH1Config", head_dim=16, mamba_d_ssm=128, **MAMBA2), "sdpa"),
    "jamba": ("Jamba", lambda: _config("JambaConfig", num_experts=2, num_experts_per_tok=1, attn_layer_period=2,
                                       attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
                                       mamba_d_state=8, mamba_expand=2, mamba_dt_rank=8), "sdpa"),
    "lfm2": ("LFM2", lambda: _config("Lfm2Config", layer_types=["conv", "full_attention", "conv", "full_attention"],
                                     block_ff_dim=96), "sdpa"),
}

# the projections whose weights set the attention logits, per family naming
_QK = ("q_proj", "k_proj", "c_attn", "query_key_value", "qkv_proj", "q_b_proj", "kv_b_proj")


def make_family_model(family: str, seed: int = 0, attn: str | None = None) -> Any:
    """A tiny random-init model of ``family`` in float32, eval mode, with sharpened attention (no argmax ties)."""
    from transformers import AutoModelForCausalLM

    _, make, backend = FAMILIES[family]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make(), attn_implementation=attn or backend, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in _QK) and name.endswith("weight"):
                p.mul_(4.0)
    return model.eval()


def niah_tokenizer() -> Any:
    """A word-level tokenizer (< ``VOCAB`` ids) over the English needles and the start of the English haystack:
    NIAH prompts of 60-100 tokens fit every needle, so the commands run in a fraction of a second per family."""
    import re

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from headatlas.niah import load_haystack, load_needles

    text = " ".join(f"{n.text} {n.question} {n.answer}" for n in load_needles(lang="en")) + " Question : Answer"
    words = ["[PAD]", "<s>", "</s>", "[UNK]", *dict.fromkeys(re.findall(r"\w+|[^\w\s]", text))]
    for w in dict.fromkeys(re.findall(r"\w+|[^\w\s]", load_haystack("en").text[:20000])):
        if len(words) >= VOCAB - 4:
            break
        if w not in words:
            words.append(w)
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", bos_token="<s>", eos_token="</s>",
                                   unk_token="[UNK]")


def id_tokenizer() -> Any:
    """A word-level tokenizer naming every id of the tiny models: ``[PAD]``, ``<s>``, ``</s>``, ``w3`` .. ``w298``,
    and a newline (id 299), so any generated id decodes (detection's copy prompts, ``tests/detect``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB - 1)}, "\n": VOCAB - 1}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", bos_token="<s>", eos_token="</s>")
