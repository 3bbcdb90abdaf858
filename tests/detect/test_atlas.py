"""compare-scorers' statistics against independent computations, and its report section."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headatlas.atlas import AtlasConfig, agreement, judge, plot_atlas, spearman
from headatlas.heads import Head, HeadScores
from headatlas.report import collect_runs, render_report
from headatlas.runs import atomic_write_json, stamp


def _pearson_of_ranks(a, b):
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def test_spearman_equals_pearson_of_ranks_without_ties_and_averages_ties():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert spearman(a, b) == pytest.approx(_pearson_of_ranks(a, b))
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1.5, 1.5, 3, 4], [1, 2, 3, 4])[0, 1])
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0


def test_agreement_matrices():
    a = HeadScores(torch.tensor([[0.9, 0.8, 0.1, 0.0]]))
    b = HeadScores(torch.tensor([[0.0, 0.8, 0.9, 0.1]]))
    ag = agreement({"a": a, "b": b}, k=2)
    assert ag["jaccard"] == [[1.0, pytest.approx(1 / 3, abs=1e-4)], [pytest.approx(1 / 3, abs=1e-4), 1.0]]
    assert ag["spearman"][0][0] == 1.0 and ag["spearman"][0][1] == ag["spearman"][1][0]


def test_judge_pairs_items_and_pools_random_seeds():
    items = {"unmasked": [1, 1, 1, 1, 0], "copy": [0, 0, 1, 0, 0], "random-s0": [1, 1, 1, 0, 0],
             "random-s1": [1, 1, 1, 1, 0]}
    rows = judge(items, ["copy"], ["random-s0", "random-s1"], "unmasked")
    assert rows["copy"]["delta"] == pytest.approx(-0.6) and rows["random"]["delta"] == pytest.approx(-0.1)
    assert rows["copy"]["vs_random"] == pytest.approx(-0.5)  # paired: copy - mean of the seeds, per item
    assert rows["copy"]["ci_low"] <= -0.6 <= rows["copy"]["ci_high"]


def test_config_refuses_unknown_scorers():
    with pytest.raises(ValueError, match="unknown"):
        AtlasConfig(model="organism", out="x", scorers="copy,nope")


def test_report_shows_the_atlas(tmp_path):
    scores = {"copy": [[0.9, 0.1]], "qr": [[0.2, 0.3]]}
    row = {"score": 0.5, "delta": -0.25, "ci_low": -0.5, "ci_high": 0.0, "n": 4}
    result = {"k": 1, "n_heads_total": 2, "scorers": {n: {"scores": s, "top_k": ["0.0"]} for n, s in scores.items()},
              "agreement": {"scorers": ["copy", "qr"], "k": 1, "spearman": [[1, -1], [-1, 1]],
                            "jaccard": [[1, 0], [0, 1]]},
              "masking": {"niah": {"unmasked": {"score": 0.75, "n": 4}, "copy": row, "qr": row, "random": row}},
              "kv": {"budget": 1, "niah": {"full": {"score": 1.0, "n": 4}, "copy": row, "windowed": row}},
              "meta": {"model": "toy"}}
    atomic_write_json(tmp_path / "atlas.json", stamp("atlas", result))
    assert [p.name for p in plot_atlas(result, tmp_path)] == ["heatmaps.png", "agreement.png", "validity.png"]
    html = render_report(collect_runs([tmp_path]))
    assert 'id="atlas"' in html and "top-1 Jaccard" in html and "[-0.5000, 0.0000]" in html
    assert Head(0, 0) == Head.parse("0.0")
