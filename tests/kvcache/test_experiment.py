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
    cfg = KVCompressConfig(model="m", heads="h", out="o", budgets=[1, 2], random_seeds=3)
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
    assert res.exit_code == 2 and res.output.startswith("kv-compress: --heads") and not out.exists()
    res = runner.invoke(app, ["decore", "--model", "organism", "--heads", str(tmp_path / "none.json"), "--task",
                              "conflict", "--out", str(out)])
    assert res.exit_code == 2 and res.output.startswith("decore: --heads") and not out.exists()


def test_per_layer_budgets_keep_b_kv_heads_in_every_layer():
    scores = torch.rand(4, 32, generator=torch.Generator().manual_seed(0))
    cfg = KVCompressConfig(model="m", heads="h", out="o", budgets=[1, 2], per_layer=True, random_seeds=2)
    conds = {c.name: c for c in conditions(cfg, HeadScores(scores), 4, 32, 4)}
    for b in (1, 2):
        for name in (f"top-{b}pl", f"random-top-{b}pl-s0", f"random-top-{b}pl-s1"):
            layers = [k.layer for k in conds[name].heads]
            assert sorted(layers) == sorted(list(range(4)) * b), name
        assert not set(conds[f"random-top-{b}pl-s1"].heads) & set(conds[f"top-{b}pl"].heads)


def test_budgets_are_refused_never_dropped_and_keep_only_kv_heads_with_a_score():
    """A budget outside 1 .. n-1 or above the KV heads holding a scored head is refused; the default budgets
    stop at that count (zero-score KV heads are never "top" KV heads)."""
    import pytest

    scores = torch.zeros(4, 32)
    scores[3, [25, 27, 28, 29, 30, 31]] = 0.6  # KV head 3.kv3
    scores[1, 2] = 0.05  # KV head 1.kv0
    s = HeadScores(scores)
    for budgets, message in (([16], "a budget keeps 1 to 15 KV heads whole"), ([99], "1 to 15"),
                             ([4], "budget 4: only 2 KV heads hold a head scoring above"), ([3], "use budgets up to 2")):
        with pytest.raises(ValueError, match=message):
            conditions(KVCompressConfig(model="m", heads="h", out="o", budgets=budgets), s, 4, 32, 4)
    with pytest.raises(ValueError, match="at least 1"):
        KVCompressConfig(model="m", heads="h", out="o", budgets=[0, 2])
    default = {c.name: c for c in conditions(KVCompressConfig(model="m", heads="h", out="o", random_seeds=1), s, 4, 32, 4)}
    assert [n for n in default if n.startswith("top-")] == ["top-1", "top-2"]
    assert default["top-2"].heads == [KVHead(3, 3), KVHead(1, 0)]
    with pytest.raises(ValueError, match="in every layer"):  # per layer: 1 .. n_kv - 1
        conditions(KVCompressConfig(model="m", heads="h", out="o", budgets=[4], per_layer=True), s, 4, 32, 4)


def test_values_once_changed_silently_are_refused_in_one_line_before_anything_is_written(tmp_path):
    """niah-eval --top-k 1000 (every head masked), kv-compress --budgets 99 (dropped), decore --alpha nan
    (NaN in the JSON), --heads of another model: exit code 2, one line, no output folder."""
    raw = torch.zeros(4, 32)
    raw[3, [25, 27, 28, 29, 30, 31]], raw[1, 2] = 0.6, 0.05  # the organism's shape
    mine = HeadScores(raw, {"model": "organism"}).save(tmp_path / "rh.json")
    other = HeadScores(raw, {"model": "another/model"}).save(tmp_path / "other.json")
    out = tmp_path / "out"
    runner = CliRunner()
    cases = [
        (["niah-eval", "--model", "organism", "--heads", f"rh={mine}", "--top-k", "1000", "--lengths", "256",
          "--depths", "0.5", "--per-cell", "1"], "top_k=1000 is more than the model's 128 heads"),
        (["niah-eval", "--model", "organism", "--heads", f"rh={mine}", "--top-k", "8", "--lengths", "256",
          "--depths", "0.5", "--per-cell", "1"], "top_k=8: only 7 of the 128 heads score"),
        (["niah-eval", "--model", "organism", "--heads", f"rh={other}", "--lengths", "256", "--depths", "0.5",
          "--per-cell", "1"], "made for model another/model, not for organism"),
        (["kv-compress", "--model", "organism", "--heads", str(mine), "--budgets", "99"], "--budgets 99"),
        (["kv-compress", "--model", "organism", "--heads", str(mine), "--budgets", "0"], "at least 1"),
        (["decore", "--model", "organism", "--heads", str(mine), "--task", "conflict", "--alpha", "nan"], "finite"),
        (["decore", "--model", "organism", "--heads", str(mine), "--task", "conflict", "--alpha", "1,inf"], "finite"),
    ]
    for args, message in cases:
        res = runner.invoke(app, [*args, "--out", str(out)])
        assert res.exit_code == 2 and message in " ".join(res.output.split()), (args, res.output)
        assert not out.exists(), args
    res = runner.invoke(app, ["niah-eval", "--model", "organism", "--heads", f"rh={other}", "--allow-other-model",
                              "--top-k", "1000", "--lengths", "256", "--depths", "0.5", "--per-cell", "1",
                              "--out", str(out)])
    assert res.exit_code == 2 and "top_k=1000" in res.output  # the model check passed; the count is refused


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
