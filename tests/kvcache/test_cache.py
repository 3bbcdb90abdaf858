"""HeadSplitCache: exact when nothing streams, a true sink + window otherwise, and its memory accounting."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from headatlas.generation import StopTokens, generate
from headatlas.heads import Head
from headatlas.kvcache import HeadSplitCache, RetrievalHeadsPress, compressed_attention, expected_bytes
from headatlas.masking import masked_heads

N_LAYERS, N_HEADS, N_KV, HEAD_DIM = 2, 8, 4, 8


def tiny_llama(attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=N_HEADS * HEAD_DIM, intermediate_size=96, num_hidden_layers=N_LAYERS,
                      num_attention_heads=N_HEADS, num_key_value_heads=N_KV, max_position_embeddings=256,
                      attn_implementation=attn)
    return LlamaForCausalLM(cfg).eval()


IDS = torch.randint(3, 64, (1, 40), generator=torch.Generator().manual_seed(1))
ALL_KEPT = [list(range(N_KV))] * N_LAYERS
MIXED = [[1], [0, 3]]


def _generate(model, cache, n=12):
    return model.generate(IDS, cache=cache, max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_every_head_kept_equals_dynamic_cache_bit_for_bit(attn):
    model = tiny_llama(attn)
    ref_logits = model(IDS, cache=DynamicCache(config=model.config), use_cache=True).logits
    ref_tokens = _generate(model, DynamicCache(config=model.config))
    with compressed_attention(model):
        logits = model(IDS, cache=HeadSplitCache(ALL_KEPT, N_KV), use_cache=True).logits
        tokens = _generate(model, HeadSplitCache(ALL_KEPT, N_KV))
    assert torch.equal(logits, ref_logits)
    assert torch.equal(tokens, ref_tokens)


def test_window_larger_than_context_equals_dynamic_cache():
    model = tiny_llama()
    ref_logits = model(IDS, use_cache=True).logits
    ref_tokens = _generate(model, DynamicCache(config=model.config))
    with compressed_attention(model):
        logits = model(IDS, cache=HeadSplitCache(MIXED, N_KV, sink=2, window=200), use_cache=True).logits
        tokens = _generate(model, HeadSplitCache(MIXED, N_KV, sink=2, window=200))
    assert torch.equal(logits, ref_logits)
    assert torch.equal(tokens, ref_tokens)


def _reference_logits(model: LlamaForCausalLM, ids: torch.Tensor, full: list[list[int]], sink: int, window: int):
    """Independent computation: eager attention with a per-head (sink + window) mask, full recompute, no cache."""
    length = ids.shape[1]
    q = torch.arange(length)[:, None]
    k = torch.arange(length)[None, :]
    causal = k <= q
    windowed = causal & ((k < sink) | (k > q - window))
    groups = N_HEADS // N_KV
    hooks = []

    def make(layer_idx):
        def forward(module, hidden_states, position_embeddings, attention_mask=None, **kwargs):
            from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

            shape = (*hidden_states.shape[:-1], -1, HEAD_DIM)
            qs = module.q_proj(hidden_states).view(shape).transpose(1, 2)
            ks = module.k_proj(hidden_states).view(shape).transpose(1, 2)
            vs = module.v_proj(hidden_states).view(shape).transpose(1, 2)
            qs, ks = apply_rotary_pos_emb(qs, ks, *position_embeddings)
            ks, vs = ks.repeat_interleave(groups, 1), vs.repeat_interleave(groups, 1)
            scores = qs @ ks.transpose(-1, -2) / math.sqrt(HEAD_DIM)  # (1, H, T, T)
            for h in range(N_HEADS):
                allowed = causal if h // groups in full[layer_idx] else windowed
                scores[:, h] = scores[:, h].masked_fill(~allowed, float("-inf"))
            out = torch.softmax(scores, -1) @ vs  # (1, H, T, D)
            return module.o_proj(out.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1)), None

        return forward

    for i, layer in enumerate(model.model.layers):
        original = layer.self_attn.forward
        layer.self_attn.forward = lambda *a, _f=make(i), _m=layer.self_attn, **kw: _f(_m, *a, **kw)
        hooks.append((layer.self_attn, original))
    try:
        return model(ids, use_cache=False).logits
    finally:
        for module, original in hooks:
            module.forward = original


@pytest.mark.parametrize("chunk", [40, 7, 1])
def test_streaming_heads_see_only_sink_and_window(chunk):
    """Chunked prefill through the cache matches an independent masked eager computation at every position."""
    model = tiny_llama()
    sink, window = 3, 6
    ref = _reference_logits(model, IDS, MIXED, sink, window)
    cache = HeadSplitCache(MIXED, N_KV, sink=sink, window=window)
    with compressed_attention(model):
        got = torch.cat([model(IDS[:, i : i + chunk], cache=cache, use_cache=True).logits
                         for i in range(0, IDS.shape[1], chunk)], dim=1)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    full_ref = model(IDS).logits
    assert not torch.allclose(got, full_ref, atol=1e-3)  # the window really changes the outputs


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prefill_then_decode_equals_the_reference_at_every_step(attn):
    """A chunked prefill, then one token per forward (decode): each step's logits equal the independent eager
    computation over the whole sequence (kept heads over everything, streaming heads over sink + window)."""
    model = tiny_llama(attn)
    sink, window, prompt = 2, 5, 24
    ref = _reference_logits(model, IDS, MIXED, sink, window)
    cache = HeadSplitCache(MIXED, N_KV, sink=sink, window=window)
    with compressed_attention(model):
        got = [model(IDS[:, s : min(s + 8, prompt)], cache=cache, use_cache=True).logits for s in range(0, prompt, 8)]
        got += [model(IDS[:, t : t + 1], cache=cache, use_cache=True).logits for t in range(prompt, IDS.shape[1])]
    got = torch.cat(got, dim=1)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    assert [layer.stream_keys.shape[2] for layer in cache.layers] == [sink + window] * N_LAYERS


def test_memory_accounting_matches_the_stored_tensors():
    model = tiny_llama()
    sink, window = 2, 5
    cache = HeadSplitCache(MIXED, N_KV, sink=sink, window=window)
    with compressed_attention(model):
        _generate(model, cache, n=7)
    seq = IDS.shape[1] + 6  # the last generated token is never fed back
    want = expected_bytes(MIXED, N_KV, seq, sink, window, HEAD_DIM, dtype_size=4)
    stored = sum(t.numel() * t.element_size() for layer in cache.layers
                 for t in (layer.keys, layer.values, layer.stream_keys, layer.stream_values))
    assert cache.stored_bytes() == stored == want
    assert [layer.stream_keys.shape[2] for layer in cache.layers] == [sink + window] * N_LAYERS
    assert [layer.keys.shape[2] for layer in cache.layers] == [seq] * N_LAYERS
    full = DynamicCache(config=model.config)
    _generate(model, full, n=7)
    dense = sum(layer.keys.numel() * 4 * 2 for layer in full.layers)
    assert dense == expected_bytes(ALL_KEPT, N_KV, seq, sink, window, HEAD_DIM, dtype_size=4) > want


def test_press_context_gives_generate_a_split_cache_and_masking_still_applies():
    model = tiny_llama()
    press = RetrievalHeadsPress(MIXED, N_KV, sink=2, window=5)
    with press(model):
        tokens = model.generate(IDS, max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
        logits = model(IDS).logits
        with masked_heads(model, [Head(1, 0)], mode="uniform"):
            masked = model(IDS).logits
    assert isinstance(press.last_cache, HeadSplitCache) and press.last_cache.get_seq_length() == IDS.shape[1]
    assert tokens.shape[1] == IDS.shape[1] + 5
    assert not torch.equal(masked, logits)
    with masked_heads(model, [Head(1, 0)], mode="uniform"), press(model):  # the other nesting order
        assert torch.equal(model(IDS).logits, masked)
    assert model.config._attn_implementation == "sdpa"


def test_the_cache_refuses_to_run_without_its_attention():
    model = tiny_llama()
    cache = HeadSplitCache(MIXED, N_KV, sink=2, window=5)
    model(IDS, cache=cache, use_cache=True)
    with pytest.raises(RuntimeError, match="compressed_attention"):
        model(IDS[:, :1], cache=cache, use_cache=True)


@pytest.mark.parametrize("chunk", [None, 1, 7, 256])
def test_the_toolkit_loop_over_a_split_cache_with_chunked_prefill_equals_its_plain_decoding(chunk):
    """kv-compress decodes through generation.generate with a cache and a chunked prefill: all kept changes nothing."""
    model = tiny_llama()
    ids = IDS[0].tolist()
    ref = generate(model, [ids], 12, StopTokens.none(64))
    cache = HeadSplitCache(ALL_KEPT, N_KV)
    with compressed_attention(model):
        got = generate(model, [ids], 12, StopTokens.none(64), cache=cache, prefill_chunk=chunk)
    assert torch.equal(got.tokens, ref.tokens)
    assert cache.get_seq_length() == len(ids) + 11  # the last token is never fed back


def test_streaming_heads_never_see_nor_mask_the_whole_context(monkeypatch):
    """The streaming group's keys and mask stay within sink + window + the block, in prefill and decode."""
    from headatlas.kvcache import attention

    seen = []
    original = attention.stream_mask

    def spy(block, q_len, *args, **kwargs):
        mask = original(block, q_len, *args, **kwargs)
        seen.append((block.keys.shape[2], q_len, None if mask is None else tuple(mask.shape[-2:])))
        return mask

    monkeypatch.setattr(attention, "stream_mask", spy)
    model = tiny_llama()
    sink, window, chunk = 2, 5, 8
    cache = HeadSplitCache(MIXED, N_KV, sink=sink, window=window)
    with compressed_attention(model):
        for s in range(0, 32, chunk):
            model(IDS[:, s : s + chunk], cache=cache, use_cache=True)
        for t in range(32, IDS.shape[1]):
            model(IDS[:, t : t + 1], cache=cache, use_cache=True)
    assert len(seen) == N_LAYERS * (32 // chunk + IDS.shape[1] - 32)
    for keys, q_len, mask in seen:
        assert keys <= sink + window + q_len
        assert mask is None or mask[1] == keys
