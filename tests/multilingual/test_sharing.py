"""Sharing analysis across languages and RH vs RTH comparison on hand-made scores."""

from __future__ import annotations

import pytest
import torch

from headatlas.heads import HeadScores
from headatlas.multilingual.sharing import compare_head_sets, sharing_analysis


def test_sharing_on_hand_made_scores():
    en = HeadScores(torch.tensor([[0.9, 0.0, 0.3], [0.6, 0.2, 0.0]]))
    de = HeadScores(torch.tensor([[0.8, 0.3, 0.0], [0.0, 0.2, 0.0]]))
    zh = HeadScores(torch.tensor([[0.7, 0.0, 0.0], [0.0, 0.3, 0.0]]))
    res = sharing_analysis({"en": en, "de": de, "zh": zh}, top_k=2)
    # top-2: en {0.0, 1.0}, de {0.0, 0.1}, zh {0.0, 1.1}
    assert res["pairs"]["en|de"]["intersection"] == 1
    assert res["pairs"]["en|de"]["jaccard"] == pytest.approx(1 / 3)
    assert res["shared_by_all"]["heads"] == ["0.0", "1.1"]
    # strong heads (>= 0.5): 0.0 everywhere > 0.1 (agnostic); 1.0 only in en (not agnostic)
    assert set(res["strong"]["heads"]) == {"0.0", "1.0"}
    assert res["strong"]["language_agnostic"] == ["0.0"]
    assert res["jaccard_matrix"][0][0] == 1.0


def test_rh_vs_rth():
    rh = HeadScores(torch.tensor([[0.0, 0.0], [0.9, 0.5]]))
    rth = HeadScores(torch.tensor([[0.4, 0.3], [0.0, 0.5]]))
    res = compare_head_sets(rh, rth, top_k=2)
    assert res["overlap"]["intersection"] == 1
    assert res["rh_layer_histogram"] == [0, 2] and res["rth_layer_histogram"] == [1, 1]
    assert res["rh_mean_layer"] == 1.0 and res["rth_mean_layer"] == 0.5


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shapes differ"):
        sharing_analysis({"en": HeadScores(torch.zeros(2, 2)), "de": HeadScores(torch.zeros(3, 2))})
