"""The peers' head-set formats: read, write, round-trip; the Duo export byte for byte against a published layout.

The fixtures carry the layouts observed in the peers' repositories (2026-12), with made-up values:
``duo_full_attention_heads.tsv`` as mit-han-lab/duo-attention's ``attn_patterns/*/full_attention_heads.tsv``
(``%.18e``, tabs, ``\\n`` after each layer), ``headkv_retrieval_heads.json`` as FYYFU/HeadKV's
``Important_Head/head_score/*.json``, ``qrhead_config.yaml`` as princeton-pli/QRHead's ``configs/*.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from headatlas.heads import Head, HeadScoreFileError, HeadScores
from headatlas.peers import (
    read_duo_pattern,
    read_qrhead_heads,
    read_wu_json,
    write_duo_pattern,
    write_qrhead_heads,
    write_wu_json,
)

FIXTURES = Path(__file__).parent / "fixtures"


def test_headkv_file_loads_as_wu_json_and_round_trips(tmp_path):
    scores = read_wu_json(FIXTURES / "headkv_retrieval_heads.json")
    assert scores[Head(1, 1)] == pytest.approx(0.75) and scores[Head(0, 1)] == pytest.approx(0.18799578, rel=1e-6)
    assert scores.top_k(2) == [Head(1, 1), Head(0, 1)]
    again = read_wu_json(write_wu_json(scores, tmp_path / "wu.json"))
    torch.testing.assert_close(again.scores, scores.scores)


def test_qrhead_list_and_ranked_output(tmp_path):
    listed = read_qrhead_heads(FIXTURES / "qrhead_config.yaml", n_layers=2, n_heads=2)
    assert listed.top_k(3) == [Head(1, 1), Head(0, 1), Head(1, 0)] and listed[Head(0, 0)] == 0.0
    assert listed.meta["scores"] == "ranks"
    assert write_qrhead_heads(listed, 3) == "1-1,0-1,1-0"
    assert read_qrhead_heads(write_qrhead_heads(listed, 3), 2, 2).top_k(3) == listed.top_k(3)  # round trip
    ranked = read_qrhead_heads('[["1-0", 0.9], ["0-0", 0.2]]', 2, 2)
    assert ranked[Head(1, 0)] == pytest.approx(0.9) and ranked.meta["scores"] == "qr-scores"
    with pytest.raises(HeadScoreFileError, match="outside"):
        read_qrhead_heads("5-0", 2, 2)


def test_duo_pattern_reads_expands_and_exports_byte_for_byte(tmp_path):
    published = (FIXTURES / "duo_full_attention_heads.tsv").read_bytes()
    per_kv = read_duo_pattern(FIXTURES / "duo_full_attention_heads.tsv")
    assert per_kv.scores.tolist() == [[0.60546875, 0.0], [0.99609375, 1.0], [0.0, 0.4375]]
    per_query = read_duo_pattern(FIXTURES / "duo_full_attention_heads.tsv", n_heads=4)  # GQA groups of 2
    assert per_query.scores[0].tolist() == [0.60546875, 0.60546875, 0.0, 0.0]
    out = write_duo_pattern(per_query, tmp_path / "pattern", n_kv_heads=2, sink_size=4, recent_size=64)
    assert out.read_bytes() == published  # the export is the published layout, byte for byte
    back = read_duo_pattern(tmp_path / "pattern", n_heads=4)
    assert torch.equal(back.scores, per_query.scores) and back.meta["recent_size"] == 64


def test_duo_export_of_query_head_scores_takes_each_groups_best():
    scores = HeadScores(torch.tensor([[0.1, 0.7, 0.2, 0.0]]))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tsv = write_duo_pattern(scores, tmp, n_kv_heads=2)
        assert read_duo_pattern(tsv).scores.tolist() == [[pytest.approx(0.7), pytest.approx(0.2)]]
