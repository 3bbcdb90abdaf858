"""The RetMask pipeline as one run: another lr is refused by name, a rerun resumes without redoing work;
the random-heads control arm masks heads outside the retrieval heads and trains on as many pairs, as many steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from headatlas.heads import HeadScores
from headatlas.retmask.pipeline import RetMaskPipelineConfig, run_retmask_pipeline
from headatlas.runs import ResumeMismatchError, read_jsonl

SUMMARIES = ("retmask_eval.json", "pairs_retmask.stats.json", "pairs_random_control.stats.json")  # rewritten by every run from the journals


def _snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished pipeline with its control arm on the built-in model (4 prompts, 1 epoch, 2 examples a suite: ~15 s)."""
    root = tmp_path_factory.mktemp("pipeline")
    heads = HeadScores(torch.rand(4, 32, generator=torch.Generator().manual_seed(0))).save(root / "scores.json")
    config = RetMaskPipelineConfig(heads=str(heads), out=str(root / "rm"), n_prompts=4, lengths=(128,),
                                   max_new_tokens=4, epochs=1.0, n_eval=2, eval_lengths=(128,), past_lengths=(128,),
                                   random_control=True)
    report = run_retmask_pipeline(config)
    assert {"retmask", "random_control"} <= set(report["results"]), "no pair survived: the test needs trained models"
    return config, report


def test_another_lr_is_refused_and_the_folder_left_alone(finished):
    """The old pipeline skipped training (a model existed) and wrote the new lr into retmask_eval.json
    beside the scores of the model trained with the old one."""
    config, _ = finished
    out = config.out
    files = _snapshot(Path(out))
    with pytest.raises(ResumeMismatchError, match=r"lr: 2e-05 \(recorded\) vs 0.001 \(now\)"):
        run_retmask_pipeline(RetMaskPipelineConfig(**{**config.__dict__, "lr": 1e-3}))
    assert _snapshot(Path(out)) == files
    report = json.loads((Path(out) / "retmask_eval.json").read_text())
    assert report["pipeline"]["lr"] == 2e-5


def test_a_rerun_keeps_every_finished_step(finished, capsys):
    config, first = finished
    out = Path(config.out)
    files = _snapshot(out)
    capsys.readouterr()
    again = run_retmask_pipeline(config)
    assert again["results"] == first["results"]
    err = capsys.readouterr().err
    assert err.count("resuming: 1 of 1 trainings done") == 2 and "retmask evaluate: resuming: 15 of 15 done" in err
    assert {p: b for p, b in _snapshot(out).items() if p.name not in SUMMARIES} == \
        {p: b for p, b in files.items() if p.name not in SUMMARIES}
    report = json.loads((out / "retmask_eval.json").read_text())
    assert report["format"] == "headatlas/retmask-eval" and {"versions", "created", "command"} <= set(report)


def test_the_control_arm_masks_other_heads_with_as_many_pairs_and_steps(finished):
    config, report = finished
    out = Path(config.out)
    retmask, control = (report["heads"][arm]["masked"] for arm in ("retmask", "random_control"))
    assert len(retmask) == len(control) == 6 and not set(retmask) & set(control)  # K = 5 % of 128 heads
    assert report["heads"]["random_control"]["random_seed"] == 0
    pairs = report["pairs"]
    n_train = pairs["retmask"]["n_train"]
    assert n_train == pairs["random_control"]["n_train"] == min(p["n_pairs"] for p in pairs.values()) >= 1
    for arm, stats in pairs.items():
        rows = list(read_jsonl(out / stats["train_file"]))
        assert len(rows) == n_train and stats["train_file"] == f"pairs_{arm}.train.jsonl"
        run = json.loads((out / f"model_{arm}" / "retmask_run.json").read_text())
        assert run["n_pairs"] == n_train
    assert pairs["retmask"]["training"]["steps"] == pairs["random_control"]["training"]["steps"] >= 1
    # the base is scored once, both arms on the same items; RetMask - control with its paired interval
    contrast = report["contrasts"]["retmask - random_control"]
    assert set(contrast) == set(report["results"]["base"])
    for suite, row in contrast.items():
        r, c = report["results"]["retmask"][suite], report["results"]["random_control"][suite]
        assert row["delta"] == pytest.approx(r["accuracy"] - c["accuracy"])
        assert row["delta_low"] <= row["delta"] <= row["delta_high"]
        assert r["delta_low"] <= r["delta"] <= r["delta_high"] and r["ci_low"] <= r["accuracy"] <= r["ci_high"]


def test_the_records_name_the_builtin_model_not_its_install_path(finished):
    config, report = finished
    out = Path(config.out)
    assert report["models"]["base"] == "organism"
    for arm in ("retmask", "random_control"):
        run = json.loads((out / f"model_{arm}" / "retmask_run.json").read_text())
        assert run["base_model"] == "organism"
