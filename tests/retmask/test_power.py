"""RetMask with power: general prompts (never evaluation items), suite choice and size, pooled contrasts, the gate."""

from __future__ import annotations

import numpy as np
import pytest

from headatlas.builtins import task_suite
from headatlas.retmask.general import CORPUS, composition, general_prompts
from headatlas.retmask.power import eval_items_per_suite, live_gate, pooled_contrast, select_suites
from headatlas.stats import items_for_effect, minimal_detectable_effect


@pytest.fixture(scope="module")
def suite():
    return task_suite("organism")


def test_general_prompts_cover_corpus_every_task_language_and_length_and_extend(suite):
    rows = general_prompts(suite, 84, seed=0, lengths=(128, 256, 512, 1024))
    assert {r["kind"] for r in rows} == {CORPUS, *suite.tasks}
    assert {r["lang"] for r in rows} == set(suite.generator.langs)
    assert {r["length"] for r in rows} == {128, 256, 512, 1024}
    assert len({r["prompt"] for r in rows}) == len(rows)  # non-identical
    tok = __import__("transformers").AutoTokenizer.from_pretrained(str(__import__("headatlas.model_spec").model_spec
                                                                       .resolve_model_path("organism")))
    assert all(len(tok(r["prompt"])["input_ids"]) <= r["length"] + 2 for r in rows)  # within the trained window
    assert [r["id"] for r in general_prompts(suite, 84, seed=0, lengths=(128, 256, 512, 1024), start=40)][:4] == \
        [r["id"] for r in rows[40:44]]  # a longer list extends a shorter one
    assert general_prompts(suite, 10, seed=0, lengths=(128, 256, 512, 1024)) == rows[:10]
    counts = composition(rows[:7], {r["id"]: r for r in rows})
    assert sum(counts["kind"].values()) == 7


def test_general_prompts_are_never_evaluation_items(suite):
    """Task prompts ask about training key names; the evaluation asks about held-out ones."""
    from headatlas.organism.corpus import name_split

    train, held = set(name_split("train")), set(name_split("eval"))
    assert not train & held
    rows = [r for r in general_prompts(suite, 140, seed=0, lengths=(128, 256)) if r["kind"] in ("mono", "multikey")]
    asked = [r["prompt"].rsplit("Question:", 1)[1] for r in rows]
    assert all(any(name in q for name in train) and not any(name in q.split() for name in held) for q in asked)
    eval_prompts = {ex.prompt for task in ("mono", "multikey") for ex in suite.make_eval_set(task, n=40, seed=20_260_707,
                                                                                             lengths=(128, 256))}
    assert not eval_prompts & {r["prompt"] for r in rows}


def test_minimal_detectable_effect_has_its_power_by_simulation():
    """At the MDE, a paired two-sided 5 % test (normal approximation) rejects ~80 % of the time."""
    sd, n = 0.36, 400
    mde = minimal_detectable_effect(sd, n)
    rng = np.random.default_rng(0)
    d = rng.normal(mde, sd, size=(4000, n))
    z = d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(n))
    assert abs((np.abs(z) > 1.959964).mean() - 0.8) < 0.03
    assert minimal_detectable_effect(sd, items_for_effect(sd, 0.03)) <= 0.03 < minimal_detectable_effect(
        sd, items_for_effect(sd, 0.03) - 1)
    n_suite = eval_items_per_suite(sd, 0.03, n_seeds=3, n_suites=4)
    assert minimal_detectable_effect(sd, 3 * 4 * n_suite) <= 0.03


def test_select_suites_keeps_headroom_and_one_past_the_training_length():
    base = {"multikey@256": 0.45, "multikey@512": 0.3, "mono@1536": 0.78, "mono@1792": 0.55, "cross@1536": 0.95,
            "multikey@1024": 0.1}
    assert select_suites(base, max_suites=2, past=1024) == ["multikey@256", "mono@1792"]
    assert select_suites(base, max_suites=4, past=1024) == ["multikey@256", "mono@1792", "multikey@512", "mono@1536"]
    assert select_suites({"a@128": 0.9}) == []


def test_pooled_contrast_averages_seeds_per_item_and_pools_suites():
    items = {"s0/r": {"a": [1, 1, 0, 0], "b": [1, 0]}, "s1/r": {"a": [1, 0, 0, 0], "b": [1, 1]},
             "s0/c": {"a": [1, 0, 0, 0], "b": [0, 0]}, "s1/c": {"a": [1, 0, 0, 0], "b": [1, 0]}}
    out = pooled_contrast(items, ["s0/r", "s1/r"], ["s0/c", "s1/c"], ["a", "b"])
    per_item = [0, 0.5, 0, 0, 0.5, 0.5]  # mean over seeds of r - c, items of a then b
    assert out["n_items"] == 6 and out["delta"] == pytest.approx(np.mean(per_item))
    assert out["sd"] == pytest.approx(np.std(per_item, ddof=1))
    assert out["mde"] == pytest.approx(minimal_detectable_effect(out["sd"], 6))
    assert out["delta_low"] <= out["delta"] <= out["delta_high"]


def test_live_gate_needs_heldout_accuracy_and_changed_answers_in_every_arm():
    assert live_gate({"retmask": [0.9, 1.0], "control": [0.8]}, {"retmask": 0.06, "control": 0.05})["live"]
    gate = live_gate({"retmask": [0.9, 0.7], "control": [None]}, {"retmask": 0.2, "control": None})
    assert not gate["live"] and len(gate["reasons"]) == 3


def test_every_arm_samples_chunks_until_the_target_and_both_train_on_as_many(tmp_path, suite):
    from rich.console import Console

    from headatlas.heads import Head
    from headatlas.model_spec import load_model
    from headatlas.retmask.pipeline import RetMaskPipelineConfig, make_arm_pairs
    from headatlas.runs import read_jsonl

    model, tok, _spec = load_model("organism", dtype="float32", device="cpu")
    prompts = general_prompts(suite, 24, seed=0, lengths=(128,))
    order = {p["id"]: i for i, p in enumerate(prompts)}
    arms = {"retmask": [Head(3, h) for h in (25, 27, 28, 29, 30, 31)],
            "control": [Head(0, 5), Head(1, 17), Head(1, 21), Head(3, 1), Head(3, 12), Head(3, 17)]}
    cfg = RetMaskPipelineConfig(heads="unused", out=str(tmp_path), n_prompts=4, max_new_tokens=4)
    stats = make_arm_pairs(model, tok, arms, prompts, cfg, Console(quiet=True), target=5)
    for arm, s in stats.items():
        kept = sorted(order[r["id"]] for r in read_jsonl(tmp_path / f"pairs_{arm}.jsonl"))
        assert s["n_prompts"] % 4 == 0 or s["n_prompts"] == 24  # whole chunks, or the budget
        assert s["n_pairs"] >= 5 or s["n_prompts"] == 24
        assert sum(i < s["n_prompts"] - 4 for i in kept) < 5  # one chunk fewer would not have reached the target
        assert len(list(read_jsonl(tmp_path / s["train_file"]))) == s["n_train"] == min(x["n_pairs"] for x in stats.values())
