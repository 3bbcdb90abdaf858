"""Masking: exact equivalences with hand-made ablations, in forward and generate()."""

from __future__ import annotations

import pytest
import torch

from headatlas import (
    Head,
    ModelSpec,
    head_output_means,
    masked_heads,
    save_ablated_model,
    zero_heads_in_weights,
)
from headatlas.model_spec import projection_weight_in_dim
from tests.conftest import make_tiny_model

HEADS = [Head(0, 1), Head(2, 5), Head(2, 6)]


def test_empty_mask_is_bit_for_bit(family):
    model = make_tiny_model(family)
    ids = torch.randint(3, 96, (2, 10))
    with torch.no_grad():
        ref = model(ids).logits
        for mode in ("zero", "uniform"):
            with masked_heads(model, [], mode=mode):
                assert torch.equal(model(ids).logits, ref)


def test_zero_equals_zeroed_output_projection_columns(family):
    model = make_tiny_model(family)
    spec = ModelSpec.from_model(model)
    ids = torch.randint(3, 96, (2, 10))
    with torch.no_grad():
        ref = model(ids).logits
        with masked_heads(model, HEADS, mode="zero"):
            hooked = model(ids).logits
        # by hand: zero the heads' input columns of the output projection
        for h in HEADS:
            proj = spec.output_projections[h.layer]
            proj.weight.narrow(projection_weight_in_dim(proj), h.head * spec.head_dim, spec.head_dim).zero_()
        manual = model(ids).logits
    torch.testing.assert_close(hooked, manual, atol=1e-5, rtol=1e-5)
    assert (hooked - ref).abs().max() > 1e-3, "masking three heads must change the logits"


def test_uniform_mode_makes_the_head_attend_uniformly():
    model = make_tiny_model("llama", attn="eager")
    ids = torch.randint(3, 96, (1, 9))
    with torch.no_grad(), masked_heads(model, [Head(1, 3)], mode="uniform"):
        att = model(ids, output_attentions=True).attentions[1][0, 3]  # (T, T)
    expected = torch.tril(torch.ones(9, 9)) / torch.arange(1, 10)[:, None]
    torch.testing.assert_close(att, expected)


def test_uniform_mode_same_under_sdpa_and_eager():
    outs = []
    ids = torch.randint(3, 96, (2, 9))
    for attn in ("sdpa", "eager"):
        model = make_tiny_model("qwen2", attn=attn)
        with torch.no_grad(), masked_heads(model, HEADS, mode="uniform"):
            outs.append(model(ids).logits)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_mean_mode_replaces_the_slice_with_the_mean():
    model = make_tiny_model("llama")
    spec = ModelSpec.from_model(model)
    batches = [{"input_ids": torch.randint(3, 96, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}]
    means = head_output_means(model, batches)
    assert means.shape == (3, 8, spec.head_dim)
    seen = {}
    with torch.no_grad(), masked_heads(model, [Head(2, 5)], mode="mean", means=means):
        # registered after the mask hook, so it sees the masked input
        handle = spec.output_projections[2].register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].clone()))
        try:
            model(torch.randint(3, 96, (1, 6)))
        finally:
            handle.remove()
    x = seen["x"].reshape(1, 6, 8, spec.head_dim)
    assert torch.allclose(x[:, :, 5], means[2, 5].expand(1, 6, -1))


def test_masks_act_on_prefill_and_every_decode_step():
    model = make_tiny_model("llama")
    spec = ModelSpec.from_model(model)
    calls = []

    def spy(_m, args):  # registered after the mask hook: sees the masked input
        x = args[0].reshape(*args[0].shape[:-1], 8, spec.head_dim)
        calls.append((x.shape[1], x[..., 5, :].abs().max().item()))

    ids = torch.randint(3, 96, (1, 7))
    with torch.no_grad(), masked_heads(model, [Head(2, 5)], mode="zero"):
        handle = spec.output_projections[2].register_forward_pre_hook(spy)
        try:
            model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
        finally:
            handle.remove()
    assert [n for n, _ in calls] == [7, 1, 1, 1]
    assert all(v == 0 for _, v in calls)


def test_generate_with_mask_equals_generate_of_ablated_weights(family):
    model = make_tiny_model(family)
    ids = torch.randint(3, 96, (1, 8))
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        with masked_heads(model, HEADS, mode="zero"):
            hooked = model.generate(ids, **kw)
        with zero_heads_in_weights(model, HEADS):
            baked = model.generate(ids, **kw)
        decode_only = None
        with masked_heads(model, HEADS, mode="zero", prefill=False):
            decode_only = model(ids).logits
        plain = model(ids).logits
    assert torch.equal(hooked, baked)
    assert torch.equal(decode_only, plain), "prefill=False leaves a multi-token forward untouched"


def test_baked_checkpoint_reloads_and_equals_hook(tmp_path):
    from transformers import AutoModelForCausalLM

    model = make_tiny_model("qwen2")
    ids = torch.randint(3, 96, (2, 10))
    with torch.no_grad():
        before = model(ids).logits
        save_ablated_model(model, HEADS, tmp_path / "ablated")
        assert torch.equal(model(ids).logits, before), "saving must leave the in-memory model unchanged"
        with masked_heads(model, HEADS, mode="zero"):
            hooked = model(ids).logits
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ablated", dtype=torch.float32).eval()
        baked = reloaded(ids).logits
    torch.testing.assert_close(baked, hooked, atol=1e-5, rtol=1e-5)
    from headatlas.masking import read_ablation

    assert read_ablation(tmp_path / "ablated") == HEADS


def test_unknown_head_and_bad_mode_raise():
    model = make_tiny_model("llama")
    with pytest.raises(ValueError, match=r"head 3\.0 does not exist.*3 layers x 8"), masked_heads(model, [Head(3, 0)]):
        pass
    with pytest.raises(ValueError, match="does not exist"), masked_heads(model, [Head(0, 8)]):
        pass
    with pytest.raises(ValueError, match="unknown mask mode"), masked_heads(model, [Head(0, 0)], mode="erase"):
        pass
    with pytest.raises(ValueError, match="needs means"), masked_heads(model, [Head(0, 0)], mode="mean"):
        pass


def test_hooks_removed_after_exception():
    model = make_tiny_model("llama")
    spec = ModelSpec.from_model(model)
    with pytest.raises(RuntimeError), masked_heads(model, HEADS, mode="zero"):
        raise RuntimeError("boom")
    assert all(len(p._forward_pre_hooks) == 0 for p in spec.output_projections)
    with pytest.raises(RuntimeError), masked_heads(model, HEADS, mode="uniform"):
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
