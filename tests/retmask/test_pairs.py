"""RetMask pair generation on a tiny model: filters and their counts, the format, resuming, seeds, chat prompts."""

from __future__ import annotations

import json

import pytest
import torch

from headatlas.heads import Head, HeadScores
from headatlas.masking import save_ablated_model
from headatlas.retmask.pairs import (
    ChatTemplateError,
    PairConfig,
    PairStats,
    dropped_path,
    generate_pairs,
    load_prompts,
    stats_path,
)
from headatlas.runs import ResumeMismatchError, read_jsonl
from tests.retmask.conftest import make_tokenizer, prompt_text

HEADS = [Head(0, 0), Head(1, 3), Head(2, 1)]
# marker words (never drawn by prompt_text) that a test hook turns into forced outputs
EMPTY, SAME, EMPTY_WHEN_MASKED = "system", "assistant", "user"


class Forcer:
    """Hooks on a tiny model: rows whose prompt holds a marker get a forced output.

    ``EMPTY``: EOS first (both models: an empty pair); ``SAME``: token ``w5``
    forever (identical responses); ``EMPTY_WHEN_MASKED``: EOS first only while
    head 1.3 is zeroed (an empty rejected response). The mask is seen by
    looking at the input of layer 1's output projection, after the masking hook.
    """

    def __init__(self, model, tokenizer):
        self.ids = {m: tokenizer.convert_tokens_to_ids(m) for m in (EMPTY, SAME, EMPTY_WHEN_MASKED)}
        self.eos, self.same_token = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("w5")
        self.rows: dict[str, torch.Tensor] = {}
        self.masked = False
        head_dim = model.config.hidden_size // model.config.num_attention_heads
        self.cols = slice(3 * head_dim, 4 * head_dim)
        self.handles = [
            model.register_forward_pre_hook(self.see_prompt, with_kwargs=True),
            model.model.layers[1].self_attn.o_proj.register_forward_hook(self.see_mask),
            model.lm_head.register_forward_hook(self.force),
        ]

    def see_prompt(self, _module, _args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] > 1:  # the prefill: remember which rows carry a marker
            self.rows = {m: (ids == i).any(dim=1) for m, i in self.ids.items()}

    def see_mask(self, _module, args, _out):
        self.masked = bool((args[0][..., self.cols] == 0).all())

    def force(self, _module, _args, logits):
        logits = logits.clone()
        logits[self.rows[EMPTY], :, self.eos] += 1e4
        logits[self.rows[SAME], :, self.same_token] += 1e4
        if self.masked:
            logits[self.rows[EMPTY_WHEN_MASKED], :, self.eos] += 1e4
        return logits

    def remove(self):
        for h in self.handles:
            h.remove()


def make_prompts(n: int, seed: int = 0, marker: str | None = None) -> list[dict]:
    rng = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        text = prompt_text(rng, 4 + i % 5)
        out.append({"prompt": f"{text} {marker}" if marker else text})
    return out


@pytest.fixture()
def model_and_tokenizer(tiny_checkpoint):
    _, model, tokenizer = tiny_checkpoint
    return model, tokenizer


def test_filters_and_counts(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    prompts = make_prompts(5) + make_prompts(2, 1, EMPTY) + make_prompts(3, 2, SAME) + make_prompts(2, 3, EMPTY_WHEN_MASKED)
    prompts = [{"id": f"p{i}", **p, "task": "toy"} for i, p in enumerate(prompts)]
    out = tmp_path / "pairs.jsonl"
    config = PairConfig(max_new_tokens=6, batch_size=4, same_seed_for_both=False)
    forcer = Forcer(model, tokenizer)
    try:
        stats = generate_pairs(model, tokenizer, HEADS, prompts, config, out, progress=False)
    finally:
        forcer.remove()

    assert stats.dropped == {"empty_both": 2, "empty_rejected": 2, "identical": 3}
    assert (stats.n_prompts, stats.n_pairs, stats.n_dropped) == (12, 5, 7)
    assert PairStats.load(stats_path(out)) == stats
    rows = list(read_jsonl(out))
    assert sorted(r["id"] for r in rows) == [f"p{i}" for i in range(5)]
    by_id = {p["id"]: p for p in prompts}
    for r in rows:  # TRL's preference format, plain text
        assert set(r) == {"id", "prompt", "chosen", "rejected", "meta"}
        assert r["prompt"] == by_id[r["id"]]["prompt"]
        assert r["chosen"].strip() and r["rejected"].strip() and r["chosen"] != r["rejected"]
        assert r["meta"]["input"] == {"task": "toy"}
        assert r["chosen"].startswith(" ")  # the continuation keeps its leading space: prompt + chosen is the text
    dropped = {d["id"]: d for d in read_jsonl(dropped_path(out))}
    assert {d["reason"] for d in dropped.values()} == {"empty_both", "empty_rejected", "identical"}
    assert all(d["chosen"].strip() for d in dropped.values() if d["reason"] == "empty_rejected")
    assert stats.heads == ["0.0", "1.3", "2.1"] and stats.settings["temperature"] == 0.6


def test_rejected_equals_the_baked_checkpoint(model_and_tokenizer, tmp_path):
    """The hook-masked model samples what the saved ablated checkpoint samples (same per-prompt seeds)."""
    from transformers import AutoModelForCausalLM

    model, tokenizer = model_and_tokenizer
    prompts = make_prompts(4)
    config = PairConfig(max_new_tokens=8, batch_size=2, same_seed_for_both=True)
    generate_pairs(model, tokenizer, HEADS, prompts, config, tmp_path / "a.jsonl", progress=False)
    baked = AutoModelForCausalLM.from_pretrained(save_ablated_model(model, HEADS, tmp_path / "ablated")).eval()
    generate_pairs(baked, tokenizer, [], prompts, config, tmp_path / "b.jsonl", progress=False)  # all identical
    rejected = {r["id"]: r["rejected"] for r in read_jsonl(tmp_path / "a.jsonl")}
    rejected |= {r["id"]: r["rejected"] for r in read_jsonl(dropped_path(tmp_path / "a.jsonl"))}
    baked_out = {r["id"]: r["chosen"] for r in read_jsonl(dropped_path(tmp_path / "b.jsonl"))}
    assert baked_out == rejected


def test_resume_skips_done_prompts_and_matches_a_fresh_run(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    prompts = make_prompts(8, seed=5)
    config = PairConfig(max_new_tokens=6, batch_size=3, same_seed_for_both=False)
    out = tmp_path / "resumed.jsonl"
    first = generate_pairs(model, tokenizer, HEADS, prompts[:5], config, out, progress=False)  # "interrupted"
    assert first.n_generated == 5
    second = generate_pairs(model, tokenizer, HEADS, prompts, config, out, progress=False)
    assert (second.n_resumed, second.n_generated, second.n_prompts) == (5, 3, 8)
    assert second.n_pairs + second.n_dropped == 8
    again = generate_pairs(model, tokenizer, HEADS, prompts, config, out, progress=False)
    assert again.n_generated == 0 and again.n_pairs == second.n_pairs

    fresh = tmp_path / "fresh.jsonl"  # one go, another batch size: per-prompt seeds give the same responses
    generate_pairs(model, tokenizer, HEADS, prompts, PairConfig(**{**config.__dict__, "batch_size": 8}), fresh,
                   progress=False)

    def responses(path):
        rows = list(read_jsonl(path)) + list(read_jsonl(dropped_path(path)))
        return {r["id"]: (r["chosen"], r["rejected"]) for r in rows}

    assert responses(out) == responses(fresh)
    # the one refusal (headatlas.runs.ResumeMismatchError): `demo` and `retmask pairs` catch it
    files = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ResumeMismatchError, match=r"--heads \(masked\): \['0.0', '1.3', '2.1'\] .recorded. vs"):
        generate_pairs(model, tokenizer, HEADS[:1], prompts, config, out, progress=False)
    with pytest.raises(ResumeMismatchError, match="--temperature: 0.6 .recorded. vs 0.9 .now."):
        generate_pairs(model, tokenizer, HEADS, prompts, PairConfig(**{**config.__dict__, "temperature": 0.9}), out,
                       progress=False)
    import copy

    retrained = copy.deepcopy(model)  # same path, other weights: its responses must not join the old ones
    with torch.no_grad():
        next(retrained.parameters()).add_(0.01)
    with pytest.raises(ResumeMismatchError, match="the model's weights differ"):
        generate_pairs(retrained, tokenizer, HEADS, prompts, config, out, progress=False)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == files  # refused before writing anything


def test_chat_prompts_and_missing_template(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    chats = [
        {"messages": [{"role": "system", "content": "w1 w2"}, {"role": "user", "content": "w3 w4 w5"},
                      {"role": "assistant", "content": "w6"}, {"role": "user", "content": "w7"}]},
        {"prompt": [{"role": "user", "content": "w8 w9 w10 w11"}]},
    ]
    out = tmp_path / "chat.jsonl"
    stats = generate_pairs(model, tokenizer, HEADS, chats, PairConfig(max_new_tokens=6, same_seed_for_both=False),
                           out, progress=False)
    rows = list(read_jsonl(out)) + list(read_jsonl(dropped_path(out)))
    assert stats.n_prompts == 2 and len(rows) == 2
    first = next(r for r in rows if r["id"] == "0")
    assert first["prompt"] == chats[0]["messages"][:2]  # the first turn only (paper: first-turn prompts)
    kept = list(read_jsonl(out))
    for r in kept:  # conversational preference format
        assert r["chosen"][0]["role"] == "assistant" and isinstance(r["chosen"][0]["content"], str)

    plain_tok = make_tokenizer(chat_template=False)
    with pytest.raises(ChatTemplateError, match="no chat template"):
        generate_pairs(model, plain_tok, HEADS, chats, PairConfig(max_new_tokens=2), tmp_path / "x.jsonl",
                       progress=False)


def test_prompt_sources(tmp_path):
    from datasets import Dataset

    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"w{i}"}) for i in range(3)) + "\n")
    assert [r["prompt"] for r in load_prompts(path, limit=2)] == ["w0", "w1"]
    Dataset.from_list([{"messages": [{"role": "user", "content": "w1"}]}, {"messages": []}]).save_to_disk(
        tmp_path / "ds"
    )
    records = load_prompts(f"dataset:{tmp_path / 'ds'}")
    assert records[0]["messages"] == [{"role": "user", "content": "w1"}]
    Dataset.from_list([{"text": "w1"}]).save_to_disk(tmp_path / "bad")
    with pytest.raises(ValueError, match="no 'prompt' or 'messages' column"):
        load_prompts(f"dataset:{tmp_path / 'bad'}")
    with pytest.raises(FileNotFoundError):
        load_prompts(tmp_path / "missing.jsonl")


def test_vllm_engine_orchestration_with_a_stand_in(tiny_checkpoint, tmp_path, monkeypatch):
    """engine='vllm' with a stand-in `vllm` module: chosen from the original dir, rejected from the baked ablation,
    one request per prompt carrying its seed, chosen responses journaled across a crash."""
    import sys
    import types
    from dataclasses import dataclass as dc

    from transformers import AutoModelForCausalLM

    from headatlas.masking import read_ablation

    path, _, tokenizer = tiny_checkpoint
    model = AutoModelForCausalLM.from_pretrained(path).eval()  # _name_or_path: the local directory
    engines: list[str] = []

    @dc
    class SamplingParams:
        temperature: float
        top_p: float
        max_tokens: int
        seed: int
        stop: list | None = None
        include_stop_str_in_output: bool = False

    class LLM:
        def __init__(self, model, tokenizer=None, **kwargs):
            engines.append(model)
            self.model = AutoModelForCausalLM.from_pretrained(model).eval()
            self.heads = [str(h) for h in read_ablation(model)] if model != str(path) else []

        def generate(self, prompts, params):
            outs = []
            for p, sp in zip(prompts, params, strict=True):
                g = torch.Generator().manual_seed(sp.seed)
                ids = torch.tensor([p["prompt_token_ids"]])
                with torch.no_grad():
                    for _ in range(sp.max_tokens):
                        probs = torch.softmax(self.model(input_ids=ids).logits[0, -1] / sp.temperature, -1)
                        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g)[None]], dim=1)
                new = ids[0, len(p["prompt_token_ids"]):].tolist()
                text = tokenizer.decode(p["prompt_token_ids"] + new)[len(tokenizer.decode(p["prompt_token_ids"])):]
                outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(text=text, token_ids=new,
                                                                                 finish_reason="length")]))
            return outs

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    out = tmp_path / "v.jsonl"
    config = PairConfig(max_new_tokens=4, engine="vllm", same_seed_for_both=False)
    prompts = make_prompts(3)
    stats = generate_pairs(model, tokenizer, HEADS, prompts, config, out, progress=False)
    assert stats.n_prompts == 3 and stats.n_pairs + stats.n_dropped == 3
    ablated = out.with_name("v.ablated")
    assert engines == [str(path), str(ablated)] and read_ablation(ablated) == HEADS
    assert len(list(read_jsonl(out.with_name("v.vllm_chosen.jsonl")))) == 3

    # a crash after the chosen pass: the journal is reused, only the ablated engine runs again
    for f in (out, dropped_path(out)):
        f.unlink(missing_ok=True)
    engines.clear()
    again = generate_pairs(model, tokenizer, HEADS, prompts, config, out, progress=False)
    assert engines == [str(ablated)] and again.n_pairs == stats.n_pairs


def test_retmask_pipeline_refuses_work_from_other_base_weights(tmp_path):
    from headatlas.retmask.pipeline import RetMaskPipelineConfig, open_pipeline
    from headatlas.runs import ResumeMismatchError

    config = RetMaskPipelineConfig(heads=str(HeadScores(torch.rand(3, 8)).save(tmp_path / "s.json")),
                                   out=str(tmp_path / "rm"))
    assert not open_pipeline(config, "aaaa").resumed  # first run: records the base
    assert open_pipeline(config, "aaaa").resumed  # same weights: resumes
    with pytest.raises(ResumeMismatchError, match="the base model's weights differ from the recorded run's"):
        open_pipeline(config, "bbbb")
