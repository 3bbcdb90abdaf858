"""The shipped organism has retrieval heads: found by `detect`, causal under masking, mode-independent.

Small fixed held-out sets (deterministic); the thresholds sit below the model
card's measured numbers (docs/organism.md) so that they guard regressions.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from headatlas.detect import DetectConfig, detect
from headatlas.heads import Head
from headatlas.masking import masked_heads
from headatlas.organism import ORGANISM_PATH, load_organism
from headatlas.organism.tasks import exact_match_accuracy, make_eval_set, organism_generator
from headatlas.prompt_sources import PromptRequest, build_prompts
from headatlas.selection import random_heads, share_of_heads

pytestmark = pytest.mark.skipif(
    not (ORGANISM_PATH / "model.safetensors").is_file(), reason="no shipped organism checkpoint"
)

# measured on these sets (2026-12-02, fifth checkpoint, 4 x 32 heads, docs/organism.md); the thresholds sit
# below the measurements: 6 of 128 heads > 0.1 (all in layer 3, KV group 3), the top 10 % holding ~100 % of all
# score; greedy and teacher-forced: the same top-6, Spearman 1.00; with the top-6 masked mono 1.0 -> 0.167 (3 random
# draws 1.0 each), multihop 0.917 -> 0.0 (random 0.917-0.958), parametric 1.0 -> 0.417 (random 1.0 x3)
MAX_SHARE_ABOVE = 0.1  # at most this share of heads score above 0.1 (the bar)
MIN_TOP_SHARE = 0.9  # ... and the top 10 % of heads hold at least this share of the total score
MIN_RH_DROP = 0.5  # masking the top-K (5 %) retrieval heads costs mono at least this much accuracy (the bar)
MAX_RANDOM_DROP = 0.05  # K random heads outside them cost at most this on average (the issue: 0.1; measured 0)
MIN_SPEARMAN = 0.9  # greedy and teacher-forced scores rank the heads alike (the bar)
MIN_HOP_MINUS_PARAMETRIC = 0.2  # masking the retrieval heads costs multihop this much more than parametric


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
        config = DetectConfig(mode=mode, batch_size=6, progress=False, heatmap=False, table_rows=0)
        out[mode] = detect(model, tok, prompts, config, tmp_path_factory.mktemp(mode))
    return out


def test_retrieval_heads_are_sparse(scores):
    s = scores["teacher"].scores
    assert 0 < int((s > 0.1).sum()) <= MAX_SHARE_ABOVE * s.numel()
    ranked = s.flatten().sort(descending=True).values
    assert ranked[: round(0.1 * s.numel())].sum() >= MIN_TOP_SHARE * ranked.sum()


def test_greedy_and_teacher_rank_heads_alike(scores):
    k = share_of_heads(scores["teacher"].scores.numel())  # the top-K as a set: its heads score alike
    assert set(scores["teacher"].top_k(k)) == set(scores["greedy"].top_k(k))
    rho = spearmanr(scores["teacher"].scores.flatten(), scores["greedy"].scores.flatten()).statistic
    assert rho >= MIN_SPEARMAN, rho


@pytest.fixture(scope="module")
def masked_accuracy(organism, scores):
    """Exact match on 24 held-out prompts per task: unmasked, the top-K retrieval heads masked, K random heads
    outside them (3 seeds); K = 5 % of heads, as in the issue."""
    model, tok = organism
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    k = share_of_heads(n_layers * n_heads)
    rh = scores["teacher"].top_k(k)
    out = {}
    for task in ("mono", "multihop", "parametric"):
        examples = make_eval_set(task, 24, seed=12, lengths=(128, 256, 512), generator=organism_generator())

        def accuracy(heads: list[Head], examples=examples) -> float:
            with masked_heads(model, heads, mode="zero"):
                return exact_match_accuracy(model, tok, examples, batch_size=12)

        out[task] = {
            "base": accuracy([]),
            "rh": accuracy(rh),
            "random": [accuracy(random_heads(n_layers, n_heads, k, seed, exclude=rh)) for seed in range(3)],
        }
    return out


def test_masking_retrieval_heads_breaks_retrieval_and_random_heads_do_not(masked_accuracy):
    """The issue's causal test: the top 5 % of heads cost mono >= 50 points, random heads <= 10 (here 5) on average."""
    m = masked_accuracy["mono"]
    rh_drop = m["base"] - m["rh"]
    random_drops = [m["base"] - r for r in m["random"]]
    assert rh_drop >= MIN_RH_DROP, m
    assert sum(random_drops) / len(random_drops) <= MAX_RANDOM_DROP, m
    assert rh_drop > max(random_drops), m  # the retrieval heads matter more than any random draw


def test_masking_retrieval_heads_hurts_multihop_more_than_parametric(masked_accuracy):
    """Wu et al.: retrieval heads carry in-context (chain-of-thought) retrieval more than intrinsic knowledge.
    On this model parametric recall leans on them too (the card: -66 points vs multihop -95; here -58 vs -92), so the test
    asks for the ordering with a margin, and that random heads leave parametric recall alone."""
    hop, par = masked_accuracy["multihop"], masked_accuracy["parametric"]
    hop_drop, par_drop = hop["base"] - hop["rh"], par["base"] - par["rh"]
    assert hop_drop >= par_drop + MIN_HOP_MINUS_PARAMETRIC, (hop, par)
    assert sum(par["base"] - r for r in par["random"]) / len(par["random"]) <= MAX_RANDOM_DROP, par
