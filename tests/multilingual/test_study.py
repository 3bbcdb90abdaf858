"""language_study end to end on a tiny model: per-language runs, sharing, RH vs RTH, summary, resume."""

from __future__ import annotations

import dataclasses
import json

import pytest

import headatlas.multilingual.study as study
from headatlas.detect import DetectConfig
from headatlas.heads import HeadScores
from headatlas.prompt_sources import PromptRequest
from headatlas.runs import ResumeMismatchError
from tests.conftest import make_tiny_model
from tests.detect.detect_helpers import copy_prompts, word_tokenizer
from tests.multilingual.test_transition_detect import ANSWER_LEN, transition_prompts


def test_language_study_writes_every_artifact_and_resumes(tmp_path, monkeypatch):
    model, tok = make_tiny_model("llama"), word_tokenizer()
    seeds = {"xx": 0, "yy": 1}

    def fake_prompts(_name, tokenizer, _max, req):
        if req.kind == "transition":
            return transition_prompts(model, tokenizer, seed=3)
        prompts = copy_prompts(model, tokenizer, n=4, seed=seeds[req.lang])
        for p in prompts:  # ids must differ per language
            p.meta["prompt_id"] = f"{req.lang}-{p.meta['prompt_id']}"
        return prompts

    monkeypatch.setattr(study, "build_prompts", fake_prompts)
    config = DetectConfig(mode="greedy", max_new_tokens=ANSWER_LEN, progress=False, table_rows=0,
                          rouge_threshold=0.0, accuracy_threshold=0.0, alignment="span")
    request = PromptRequest(lengths=[32], depths=[0.5])
    run = lambda: study.language_study(  # noqa: E731
        model, tok, "tiny", None, ["xx", "yy"], tmp_path, config, request, transitions=[("xx", "yy")], top_k=5
    )
    result = run()
    assert not result["failed"]
    for name in ("rh-xx", "rh-yy", "rth-xx-yy"):
        assert (tmp_path / name / "head_scores.json").is_file()
    sharing = json.loads((tmp_path / "sharing.json").read_text())
    assert sharing["languages"] == ["xx", "yy"] and "xx|yy" in sharing["pairs"]
    comp = json.loads((tmp_path / "rh_vs_rth-xx-yy.json").read_text())
    assert comp["top_k"] == 5 and len(comp["rh_top_k"]) == min(5, comp["rh_n_scored"])  # only scored heads
    rh = HeadScores.load(tmp_path / "rh-xx" / "head_scores.json")
    assert comp["rh_top_k"] == [str(h) for h, _ in rh.scored()[:5]] and all(rh[h] > 0 for h, _ in rh.scored())
    for png in ("sharing.png", "rh_vs_rth-xx-yy.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert "RH vs RTH (xx-yy)" in (tmp_path / "summary.md").read_text()
    # re-running resumes every run (nothing recomputed) and gives the same sharing
    again = run()
    assert again["sharing"] == result["sharing"]
    # another grid in the same folder: refused by name before any language starts, nothing written
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ResumeMismatchError, match=r"--lengths: \[32\] \(recorded\) vs \[64\] \(now\)"):
        study.language_study(model, tok, "tiny", None, ["zz"], tmp_path, config,
                             dataclasses.replace(request, lengths=[64]))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files
    assert json.loads((tmp_path / "sharing.json").read_text())["format"] == "headatlas/sharing"
