"""The model card's measure script on the shipped checkpoint, at a tiny size: structure and self-consistency."""

from __future__ import annotations

import json

import pytest

from headatlas.organism import ORGANISM_PATH
from headatlas.organism.corpus import TASKS
from headatlas.organism.measure import measure

pytestmark = pytest.mark.skipif(
    not (ORGANISM_PATH / "model.safetensors").is_file(), reason="no shipped organism checkpoint"
)


def test_measure_report_is_consistent():
    r = measure(n_per_task=4, n_detect=8, seeds=(0, 1, 2))
    assert set(r["accuracy"]) == set(TASKS)
    assert all(0.0 <= a["all"] <= 1.0 for a in r["accuracy"].values())
    cfg = json.loads((ORGANISM_PATH / "config.json").read_text())
    n_layers, n_heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    ret = r["retrieval"]
    assert ret["n_heads"] == n_layers * n_heads and len(ret["scores"]) == n_layers
    assert all(len(row) == n_heads for row in ret["scores"])
    assert ret["n_above_threshold"] == sum(v > ret["threshold"] for row in ret["scores"] for v in row)
    masking, curve = r["masking"], r["masking_curve"]
    k = masking["k"]
    assert k == round(0.05 * n_layers * n_heads) and len(masking["retrieval_heads"]) == k
    for t, m in masking["tasks"].items():
        assert m["base"] == r["accuracy"][t]["all"]
        assert m["drop_rh"] == pytest.approx(m["base"] - m["rh_masked"], abs=1e-3)
        assert all(not set(d["heads"]) & set(masking["retrieval_heads"]) for d in m["random_masked"].values())
    # the dose-response curve at K = k masks the same heads on the same mono prompts as the main table
    assert curve["base"] == masking["tasks"]["mono"]["base"]
    assert curve["k"][str(k)]["rh_masked"] == masking["tasks"]["mono"]["rh_masked"]
