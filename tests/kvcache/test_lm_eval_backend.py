"""kv-hf: the full cache through it is hf; streaming heads are a sink + window (against transformers' own
sliding-window attention); the KV-head choices (retrieval, random at equal memory, top, lists) and their errors."""

from __future__ import annotations

import pytest
import torch
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from headatlas.evaluate.fixtures import TASKS_DIR
from headatlas.kvcache import HeadSplitCache, KVHead, compressed_attention, full_per_layer, kv_heads_of
from headatlas.kvcache.lm_eval_backend import KVHFLM

TEXT = "The Rhine flows into the North Sea. Die Antwort lautet 7. Question: Where? Answer: Berlin"
CONTEXTS = ["Note: the key opens Berlin. Question: what does the key open? Answer:", "Q: 7 + 5?"]


def _ll(lm, pairs):
    reqs = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    return [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]


def _gen(lm):
    gen = {"until": ["\n"], "max_gen_toks": 10, "do_sample": False}
    return lm.generate_until([Instance("generate_until", {}, (c, dict(gen)), i) for i, c in enumerate(CONTEXTS)],
                             disable_tqdm=True)


PAIRS = [(TEXT[:40], TEXT[40:]), ("Question: Where?", " Answer: Berlin")]


def test_every_kv_head_kept_equals_hf(tiny_model):
    model, tok = tiny_model
    ref = HFLM(pretrained=model, tokenizer=tok, batch_size=1)
    lm = KVHFLM.from_model(model, tok, kv_heads="all", prefill_chunk=7, batch_size=1)
    assert _ll(lm, PAIRS) == pytest.approx(_ll(ref, PAIRS), abs=1e-4)
    assert _gen(lm) == _gen(ref)
    assert model.config._attn_implementation == "sdpa"  # restored after every call


def test_streaming_heads_equal_transformers_sliding_window(tiny_model):
    """Every KV head streaming with sink 0 is a sliding window of ``window`` keys: Mistral's, on the same weights."""
    from transformers import MistralConfig, MistralForCausalLM

    model, tok = tiny_model
    window = 6
    cfg = MistralConfig(**{k: v for k, v in model.config.to_dict().items() if k in MistralConfig().to_dict()})
    cfg.sliding_window, cfg._attn_implementation = window, "eager"
    mistral = MistralForCausalLM(cfg).eval()
    missing = mistral.load_state_dict(model.state_dict(), strict=True)
    assert not missing.missing_keys
    lm = KVHFLM.from_model(model, tok, kv_heads="none", sink=0, window=window, prefill_chunk=5, batch_size=1)
    ids = torch.tensor([lm.tok_encode(TEXT)])
    with torch.no_grad():
        ref = mistral(ids).logits
    got = lm._model_call(ids)
    assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()
    assert not torch.allclose(got, model(ids).logits, atol=1e-3)  # the window matters on this text


def test_a_kv_head_list_runs_through_the_split_cache(tiny_model):
    model, tok = tiny_model
    kept = [KVHead(0, 1), KVHead(2, 0)]
    lm = KVHFLM.from_model(model, tok, kv_heads="0.1;2.0", sink=2, window=4, prefill_chunk=1000, batch_size=1)
    assert lm.kv_heads == kept
    ids = torch.tensor([lm.tok_encode(TEXT)])
    cache = HeadSplitCache(full_per_layer(kept, 3), model.config.num_key_value_heads, 2, 4)
    with torch.no_grad(), compressed_attention(model):
        direct = model(ids, past_key_values=cache, use_cache=True).logits
    assert torch.allclose(lm._model_call(ids), direct, atol=1e-5)
    assert lm.get_model_info()["kv_heads_kept"] == ["0.kv1", "2.kv0"]


def test_retrieval_random_and_top_choices(tiny_model, head_files):
    model, tok = tiny_model
    n_kv = model.config.num_key_value_heads
    retrieval = KVHFLM.from_model(model, tok, heads=str(head_files["rh"]), top_k=3, kv_heads="retrieval").kv_heads
    from headatlas.heads import Head

    assert retrieval == kv_heads_of([Head(2, 1), Head(2, 5), Head(1, 0)], 8, n_kv)
    rand = KVHFLM.from_model(model, tok, heads=str(head_files["rh"]), top_k=3, kv_heads="random", seed=3).kv_heads
    assert len(rand) == len(retrieval) and not set(rand) & set(retrieval)  # equal memory, disjoint
    top = KVHFLM.from_model(model, tok, heads=str(head_files["rh"]), kv_heads="top", budget=1).kv_heads
    assert top == [KVHead(2, 0)]  # the KV head of 2.1 (0.9), the best query head


@pytest.mark.parametrize("args, match", [
    ({"kv_heads": "most"}, "kv_heads='most'"), ({"kv_heads": "9.0"}, "9.kv0"),
    ({"kv_heads": "top"}, "budget"), ({"kv_heads": "retrieval"}, "heads="),
    ({"kv_heads": "all", "window": 0}, "window"),
])
def test_bad_model_args_are_refused_in_one_line(tiny_model, args, match):
    model, tok = tiny_model
    with pytest.raises(ValueError, match=match):
        KVHFLM.from_model(model, tok, **args)


def test_simple_evaluate_runs_every_request_type(tiny_dir, local_tasks, organism_standin):
    tm = TaskManager(include_path=[str(TASKS_DIR), str(local_tasks)], include_defaults=False)
    lm = KVHFLM(pretrained=str(tiny_dir), device="cpu", batch_size=1, kv_heads="0.0;1.1", sink=2, window=8)
    res = simple_evaluate(model=lm, tasks=["tiny_mc", "tiny_rolling", "organism_mono"], task_manager=tm, limit=2,
                          bootstrap_iters=0, gen_kwargs={"max_gen_toks": 6})
    assert set(res["results"]) == {"tiny_mc", "tiny_rolling", "organism_mono"}
    assert res["config"]["kv_heads_kept"] == ["0.kv0", "1.kv1"]
