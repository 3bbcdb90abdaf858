"""The RetMask pipeline as one run: another lr is refused by name, a rerun resumes without redoing work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from retrieval_heads.heads import HeadScores
from retrieval_heads.retmask.pipeline import RetMaskPipelineConfig, run_retmask_pipeline
from retrieval_heads.runs import ResumeMismatchError

SUMMARIES = ("retmask_eval.json", "pairs_retmask.stats.json")  # rewritten by every run from the journals


def _snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished pipeline on the built-in model (4 prompts, 1 epoch, 2 examples a suite: ~8 s)."""
    root = tmp_path_factory.mktemp("pipeline")
    heads = HeadScores(torch.rand(4, 32, generator=torch.Generator().manual_seed(0))).save(root / "scores.json")
    config = RetMaskPipelineConfig(heads=str(heads), out=str(root / "rm"), n_prompts=4, lengths=(128,),
                                   max_new_tokens=4, epochs=1.0, n_eval=2, eval_lengths=(128,))
    report = run_retmask_pipeline(config)
    assert "retmask" in report["results"], "no pair survived: the test needs a trained model"
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
    assert "resuming: 1 of 1 trainings done" in err and "retmask evaluate: resuming: 10 of 10 done" in err
    assert {p: b for p, b in _snapshot(out).items() if p.name not in SUMMARIES} == \
        {p: b for p, b in files.items() if p.name not in SUMMARIES}
    report = json.loads((out / "retmask_eval.json").read_text())
    assert report["format"] == "retrieval-heads/retmask-eval" and {"versions", "created", "command"} <= set(report)
