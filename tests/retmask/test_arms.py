"""RetMask and its random-heads control side by side: paired intervals in the evaluation, both arms in the
report, and the demo running both."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from headatlas.retmask.evaluate import RetMaskEvalConfig, evaluate_models, format_table

# per model, the items of each suite it gets right (40 items a suite)
RIGHT = {"base": {"multikey_long": range(0, 10), "parametric": range(0, 40)},
         "retmask": {"multikey_long": range(0, 30), "parametric": range(0, 40)},
         "random_control": {"multikey_long": range(0, 11), "parametric": range(1, 40)}}


def stand_in_tasks():
    """Examples are (suite task, index); a "model" is its name, right on the items RIGHT lists."""
    task_suite = {"multikey": "multikey_long", "parametric": "parametric"}
    return SimpleNamespace(
        make_eval_set=lambda task, n, seed, lengths=None, langs=None: [(task_suite[task], i) for i in range(n)],
        exact_match_accuracy=lambda model, tokenizer, examples, batch_size: sum(
            i in RIGHT[model][suite] for suite, i in examples) / len(examples))


@pytest.fixture(scope="module")
def arms_eval(tmp_path_factory):
    out = tmp_path_factory.mktemp("arms") / "retmask"
    models = {name: (name, None) for name in RIGHT}
    extra = {"heads": {"retmask": {"masked": ["3.25", "3.27"]}, "random_control": {"masked": ["0.5", "1.17"]}},
             "pairs": {arm: {"n_prompts": n, "n_pairs": p, "n_train": 19, "training": {
                 "steps": 4, "heldout_reward_accuracy_after": 1.0}} for arm, n, p in
                 (("retmask", 96, 72), ("random_control", 192, 19))}}
    report = evaluate_models(models, RetMaskEvalConfig(suites=("multikey_long", "parametric"), n_per_task=40),
                             out_dir=out, tasks=stand_in_tasks(), extra=extra,
                             contrasts=[("retmask", "random_control")])
    return out, report


def test_changes_and_contrasts_carry_paired_intervals(arms_eval):
    out, report = arms_eval
    res, contrast = report["results"], report["contrasts"]["retmask - random_control"]
    assert res["retmask"]["multikey_long"]["delta"] == pytest.approx(0.5)
    assert contrast["multikey_long"]["delta"] == pytest.approx(19 / 40)
    assert 0 < contrast["multikey_long"]["delta_low"] < 0.475 < contrast["multikey_long"]["delta_high"]
    # the control loses item 0 of parametric: one item of 40, an interval that reaches 0
    row = res["random_control"]["parametric"]
    assert row["delta"] == pytest.approx(-1 / 40) and row["delta_low"] < 0 <= row["delta_high"]
    assert res["base"]["multikey_long"]["ci_low"] < 0.25 < res["base"]["multikey_long"]["ci_high"]
    journal = [json.loads(line) for line in (out / "retmask_eval.jsonl").read_text().splitlines()]
    assert all(len(r["items"]) == 40 for r in journal) and len(journal) == 6  # the base scored once
    assert "+47.5 [" in format_table(report)
    with pytest.raises(ValueError, match="not evaluated"):
        evaluate_models({"base": ("base", None)}, RetMaskEvalConfig(suites=("parametric",), n_per_task=2),
                        tasks=stand_in_tasks(), contrasts=[("base", "nope")])


def test_report_shows_both_arms_with_intervals(arms_eval, tmp_path):
    from headatlas.report import collect_runs, write_report

    out, _ = arms_eval
    (cmp,) = collect_runs([out]).retmask
    assert cmp.models == ["base", "retmask", "random_control"]
    assert cmp.contrasts["retmask - random_control"]["multikey_long"]["delta"] == pytest.approx(0.475)
    assert cmp.arms["random_control"] == {"masked": "0.5, 1.17", "prompts": 192, "pairs kept": 19, "trained on": 19,
                                          "steps": 4, "held-out reward accuracy": 1.0}
    html = write_report([out], tmp_path / "report.html").read_text(encoding="utf-8")
    assert "retmask - random_control" in html and "interval excludes 0" in html
    assert "Δ random_control 95 % CI" in html and "<h4>Arms</h4>" in html
    low, high = (cmp.contrasts["retmask - random_control"]["multikey_long"][k] for k in ("delta_low", "delta_high"))
    assert f"[{low:.4f}, {high:.4f}]" in html


def test_the_demo_runs_the_control_arm(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import headatlas.retmask.pipeline as pipeline
    from headatlas.cli import app
    from headatlas.heads import HeadScores

    seen = []
    monkeypatch.setattr(pipeline, "run_retmask_pipeline", lambda config, console=None: seen.append(config))
    for name in ("rh-en", "rth-en-de"):
        HeadScores(torch.rand(4, 32, generator=torch.Generator().manual_seed(0))).save(
            tmp_path / "languages" / name / "head_scores.json")
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--steps", "retmask"])
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.random_control and config.top_k == 6 and config.n_prompts == 64
    assert "multikey_long" in config.eval_suites and "parametric" in config.eval_suites
