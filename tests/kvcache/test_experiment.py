"""kv-compress conditions (retrieval KV heads, controls drawn outside them) and bad command-line input."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from headatlas.cli import app
from headatlas.heads import HeadScores
from headatlas.kvcache.experiment import KVCompressConfig, conditions
from headatlas.kvcache.plan import KVHead


def test_conditions_keep_the_retrieval_kv_head_and_draw_controls_outside_it():
    scores = torch.zeros(4, 32)
    scores[3, [25, 27, 28, 29, 30, 31]] = 0.6  # the organism's six retrieval heads: KV group 3 of layer 3
    scores[1, 2] = 0.05
    cfg = KVCompressConfig(model="m", heads="h", out="o", budgets=[2, 4], random_seeds=3)
    conds = {c.name: c for c in conditions(cfg, HeadScores(scores), 4, 32, 4)}
    assert conds["retrieval"].heads == [KVHead(3, 3)]
    assert len(conds["full"].heads) == 16 and conds["windowed"].heads == []
    for s in range(3):
        control = conds[f"random-retrieval-s{s}"].heads
        assert len(control) == 1 and KVHead(3, 3) not in control
    assert conds["top-2"].heads == [KVHead(3, 3), KVHead(1, 0)]
    assert not set(conds["random-top-2-s0"].heads) & set(conds["top-2"].heads)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    res = runner.invoke(app, ["kv-compress", "--model", "organism", "--heads", str(tmp_path / "none.json"),
                              "--out", str(out)])
    assert res.exit_code == 2 and "Invalid value" in res.output and not out.exists()
    res = runner.invoke(app, ["decore", "--model", "organism", "--heads", str(tmp_path / "none.json"), "--task",
                              "conflict", "--out", str(out)])
    assert res.exit_code == 2 and "Invalid value" in res.output and not out.exists()


def test_per_layer_budgets_keep_b_kv_heads_in_every_layer():
    scores = torch.rand(4, 32, generator=torch.Generator().manual_seed(0))
    cfg = KVCompressConfig(model="m", heads="h", out="o", budgets=[1, 2], per_layer=True, random_seeds=2)
    conds = {c.name: c for c in conditions(cfg, HeadScores(scores), 4, 32, 4)}
    for b in (1, 2):
        for name in (f"top-{b}pl", f"random-top-{b}pl-s0", f"random-top-{b}pl-s1"):
            layers = [k.layer for k in conds[name].heads]
            assert sorted(layers) == sorted(list(range(4)) * b), name
        assert not set(conds[f"random-top-{b}pl-s1"].heads) & set(conds[f"top-{b}pl"].heads)


def test_multi_needle_prompts_hold_that_many_needles_and_ask_one():
    from headatlas.model_spec import load_model
    from headatlas.prompt_sources import PromptRequest, build_prompts

    _, tok, spec = load_model("organism")
    req = PromptRequest(lengths=[512], depths=[0.5], per_cell=2, n_needles=5)
    prompts = build_prompts("organism", tok, spec.max_positions, req)
    for p in prompts:
        assert p.meta["n_needles"] == 5 and p.meta["task"] == "multikey" and p.meta["prompt_id"].endswith("|N5")
        assert p.text.count(p.needle.text) == 1 and p.text.count("Question:") == 1  # one question, about one needle
    single = build_prompts("organism", tok, spec.max_positions, PromptRequest(lengths=[512], depths=[0.5], per_cell=2))
    assert [p.meta["n_needles"] for p in single] == [1, 1]


def test_kv_compress_reports_each_needle_count_with_tokens_per_second(tmp_path):
    from headatlas.kvcache.experiment import run_kv_compress

    scores = torch.zeros(4, 32)
    scores[3, [25, 27, 28, 29, 30, 31]] = 0.6
    heads = HeadScores(scores).save(tmp_path / "h.json")
    cfg = KVCompressConfig(model="organism", heads=str(heads), out=str(tmp_path / "kv"), budgets=[], random_seeds=0,
                           lengths=[256], depths=[0.5], per_cell=1, needle_counts=[1, 3], max_new_tokens=6)
    result = run_kv_compress(cfg, progress=False)
    assert set(result["by_needles"]) == {"1", "3"}
    for n, summary in result["by_needles"].items():
        assert [r["name"] for r in summary["conditions"]] == ["full", "windowed", "retrieval"]
        assert all(r["needles"] == int(n) and r["tokens_per_s"] > 0 for r in summary["conditions"])
    assert result["conditions"] == result["by_needles"]["1"]["conditions"]


def test_needle_counts_bad_input_is_one_line(tmp_path):
    heads = HeadScores(torch.zeros(4, 32)).save(tmp_path / "h.json")
    res = CliRunner().invoke(app, ["kv-compress", "--model", "organism", "--heads", str(heads), "--out",
                                   str(tmp_path / "o"), "--needle-counts", "1,x"])
    assert res.exit_code == 2 and "--needle-counts" in res.output and not (tmp_path / "o").exists()


def test_multi_needle_prompts_outside_a_built_in_model_are_refused():
    import pytest

    from headatlas.prompt_sources import PromptRequest, build_prompts

    with pytest.raises(ValueError, match="--needle-counts 3"):
        build_prompts("some/llama", None, 4096, PromptRequest(lengths=[512], depths=[0.5], n_needles=3))
