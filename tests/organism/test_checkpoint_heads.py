"""The shipped organism has retrieval heads: found by `detect`, causal under masking, mode-independent.

Small fixed held-out sets (deterministic); the thresholds sit below the model
card's measured numbers (docs/organism.md) so that they guard regressions.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from retrieval_heads.detect import DetectConfig, detect
from retrieval_heads.heads import Head
from retrieval_heads.masking import masked_heads
from retrieval_heads.organism import ORGANISM_PATH, load_organism
from retrieval_heads.organism.tasks import exact_match_accuracy, make_eval_set, organism_generator
from retrieval_heads.prompt_sources import PromptRequest, build_prompts
from retrieval_heads.selection import random_heads

pytestmark = pytest.mark.skipif(
    not (ORGANISM_PATH / "model.safetensors").is_file(), reason="no shipped organism checkpoint"
)

# measured on these sets (2026-12-01, fourth checkpoint, docs/organism.md); the thresholds sit below the
# measurements: 6 of 64 heads > 0.1, the top-6 holding 86 % of all score; Spearman 1.00 with the same top-6;
# mono 0.958 unmasked, 0.792 with the top-3 retrieval heads masked, 1.0 / 0.958 / 0.917 with 3 random draws;
# with 8 heads: 0.25 vs 0.917 / 0.958 / 0.917; multihop 0.958 -> 0.458 (random 0.958 x3); parametric 1.0 -> 0.958
MAX_SHARE_ABOVE = 0.1  # at most this share of heads score above 0.1 (the issue's bar)
MIN_TOP6_SHARE = 0.7  # ... and the top 10 % of heads hold at least this share of the total score
MIN_RH_DROP = 0.1  # masking the top-K (5 %) retrieval heads costs mono at least this much accuracy
ISSUE_RH_DROP = 0.5  # the issue asks this much (test_issue_masking_drop; measured 0.17 here, 0.40 on the card set)
MAX_RANDOM_DROP = 0.05  # K random heads outside them cost at most this much, on average over seeds
MIN_RH_DROP_8 = 0.5  # with 8 heads (12.5 %) masked, retrieval heads cost mono at least this much ...
RH_OVER_RANDOM_8 = 2.0  # ... and at least this many times the mean cost of 8 random heads
MIN_SPEARMAN = 0.9  # greedy and teacher-forced scores rank the heads alike (the issue's bar)
MIN_HOP_MINUS_PARAMETRIC = 0.3  # masking the retrieval heads costs multihop this much more than parametric


@pytest.fixture(scope="module")
def organism():
    torch.set_num_threads(2)
    return load_organism()


@pytest.fixture(scope="module")
def scores(organism, tmp_path_factory):
    model, tok = organism
    request = PromptRequest(lengths=[512, 1024], depths=[0.0, 0.5, 1.0], per_cell=3, seed=11)
    prompts = build_prompts("organism", tok, model.config.max_position_embeddings, request)
    out = {}
    for mode in ("teacher", "greedy"):
        config = DetectConfig(mode=mode, batch_size=6, progress=False, heatmap=False, top_k_table=0)
        out[mode] = detect(model, tok, prompts, config, tmp_path_factory.mktemp(mode))
    return out


def test_retrieval_heads_are_sparse(scores):
    s = scores["teacher"].scores
    assert 0 < int((s > 0.1).sum()) <= MAX_SHARE_ABOVE * s.numel()
    ranked = s.flatten().sort(descending=True).values
    assert ranked[: round(0.1 * s.numel())].sum() >= MIN_TOP6_SHARE * ranked.sum()


def test_greedy_and_teacher_rank_heads_alike(scores):
    assert scores["teacher"].top_k(4) == scores["greedy"].top_k(4)
    rho = spearmanr(scores["teacher"].scores.flatten(), scores["greedy"].scores.flatten()).statistic
    assert rho >= MIN_SPEARMAN, rho


@pytest.fixture(scope="module")
def masked_accuracy(organism, scores):
    """Exact match on 24 held-out prompts per task: unmasked, top-K retrieval heads masked, K random heads
    (K = 5 % of heads; "mono@8": the dose-response point with 8 heads)."""
    model, tok = organism
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    k5 = max(1, round(0.05 * n_layers * n_heads))
    out = {}
    for name, task, k in (("mono", "mono", k5), ("multihop", "multihop", k5), ("parametric", "parametric", k5),
                          ("mono@8", "mono", 8)):
        examples = make_eval_set(task, 24, seed=12, lengths=(128, 256, 512), generator=organism_generator())

        def accuracy(heads: list[Head], examples=examples) -> float:
            with masked_heads(model, heads, mode="zero"):
                return exact_match_accuracy(model, tok, examples, batch_size=12)

        rh = scores["teacher"].top_k(k)
        base = out[task]["base"] if task in out else accuracy([])  # same prompts, same unmasked model
        out[name] = {
            "base": base,
            "rh": accuracy(rh),
            "random": [accuracy(random_heads(n_layers, n_heads, k, seed, exclude=rh)) for seed in range(3)],
        }
    return out


def test_masking_retrieval_heads_breaks_retrieval_and_random_heads_do_not(masked_accuracy):
    m = masked_accuracy["mono"]
    rh_drop = m["base"] - m["rh"]
    random_drops = [m["base"] - r for r in m["random"]]
    assert rh_drop >= MIN_RH_DROP, m
    assert sum(random_drops) / len(random_drops) <= MAX_RANDOM_DROP, m
    assert rh_drop > max(random_drops), m  # the retrieval heads matter more than any random draw
    m8 = masked_accuracy["mono@8"]
    rh_drop_8 = m8["base"] - m8["rh"]
    random_drop_8 = sum(m8["base"] - r for r in m8["random"]) / len(m8["random"])
    assert rh_drop_8 >= MIN_RH_DROP_8 and rh_drop_8 >= RH_OVER_RANDOM_8 * random_drop_8, m8


@pytest.mark.xfail(reason="the top-3 retrieval heads cost mono 17 points here and 40 on the model card set, "
                          "not the issue's 50 (docs/organism.md)", strict=True)
def test_issue_masking_drop(masked_accuracy):
    m = masked_accuracy["mono"]
    assert m["base"] - m["rh"] >= ISSUE_RH_DROP, m


def test_masking_retrieval_heads_hurts_multihop_more_than_parametric(masked_accuracy):
    """Wu et al.: retrieval heads carry in-context (chain-of-thought) retrieval, not intrinsic knowledge."""
    hop, par = masked_accuracy["multihop"], masked_accuracy["parametric"]
    hop_drop, par_drop = hop["base"] - hop["rh"], par["base"] - par["rh"]
    assert hop_drop >= par_drop + MIN_HOP_MINUS_PARAMETRIC, (hop, par)
    assert par_drop <= MAX_RANDOM_DROP, par  # parametric recall does not need the retrieval heads
