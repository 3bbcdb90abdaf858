"""TASK@LENGTH suites and the answers the evaluation records (the live-training gate counts changed ones)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from headatlas.retmask.evaluate import RetMaskEvalConfig, changed_answers, evaluate_models

ANSWERS = {"base": ["a", "b", "c", "d"], "tuned": ["a", "x", "c", "d"]}  # one answer of four differs


def stand_in():
    """Examples (task, length, i) with the right answer "a".."d"; a "model" answers from ANSWERS."""
    def make(task, n, seed, lengths=None, langs=None):
        return [SimpleNamespace(task=task, length=lengths[0], i=i, answer="abcd"[i]) for i in range(n)]

    return SimpleNamespace(make_eval_set=make, exact_match_accuracy=None,
                           generate_answers=lambda model, tok, exs, batch_size: [ANSWERS[model][ex.i] for ex in exs])


def test_length_suites_and_changed_answers(tmp_path):
    cfg = RetMaskEvalConfig(suites=("multikey@256", "mono@1536"), n_per_task=4)
    assert [(s.task, s.lengths) for s in cfg.build_suites()] == [("multikey", (256,)), ("mono", (1536,))]
    report = evaluate_models({m: (m, None) for m in ANSWERS}, cfg, out_dir=tmp_path, tasks=stand_in())
    row = report["results"]["tuned"]["mono@1536"]
    assert row["accuracy"] == 0.75 and row["changed_answers"] == 0.25
    assert report["results"]["base"]["multikey@256"]["changed_answers"] == 0.0
    assert changed_answers([None], ["a"]) is None
    with pytest.raises(ValueError, match="unknown suites"):
        RetMaskEvalConfig(suites=("nope@256",))
