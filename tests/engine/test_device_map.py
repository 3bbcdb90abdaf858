"""A model split by an accelerate device map (CPU and disk offload here) is captured, masked and scored
exactly like the same model in one piece."""

from __future__ import annotations

import pytest
import torch

from headatlas import capture_attention, masked_heads
from headatlas.detect import DetectConfig, detect
from headatlas.model_spec import load_model
from tests.conftest import make_tiny_model
from tests.detect.detect_helpers import copy_prompts, word_tokenizer

pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    make_tiny_model("llama").save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def split_and_whole(checkpoint, tmp_path_factory):
    whole, tok, _ = load_model(str(checkpoint), device="cpu", dtype="float32")
    n_layers = whole.config.num_hidden_layers
    placement = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    placement |= {f"model.layers.{i}": "disk" if i == n_layers - 1 else "cpu" for i in range(n_layers)}
    split, _, _ = load_model(str(checkpoint), dtype="float32", device_map=placement,
                             offload_folder=str(tmp_path_factory.mktemp("offload")))
    assert any(p.device.type == "meta" for p in split.parameters())  # the last layer lives on disk
    return split, whole, tok


def test_capture_and_masking_match_the_whole_model(split_and_whole):
    split, whole, _ = split_and_whole
    ids = torch.randint(3, 90, (2, 24), generator=torch.Generator().manual_seed(0))
    records, logits = [], []
    for model in (split, whole):
        with torch.no_grad(), capture_attention(model, keys_per_row=2) as rec:
            logits.append(model(ids).logits)
        records.append(rec.stacked())
        with torch.no_grad(), masked_heads(model, [(0, 1), (1, 2)], mode="zero"):
            logits.append(model(ids).logits)
    assert torch.equal(records[0].indices, records[1].indices)
    torch.testing.assert_close(logits[0], logits[2])  # captured forward: split == whole
    torch.testing.assert_close(logits[1], logits[3])  # masked forward: split == whole
    assert not torch.allclose(logits[1], logits[0])  # the mask acted


@pytest.mark.parametrize("mode", ["teacher", "greedy"])
def test_detect_on_a_split_model_gives_the_same_scores(split_and_whole, tmp_path, mode):
    split, whole, tok = split_and_whole
    prompts = copy_prompts(whole, tok, n=4, seed=1)
    cfg = DetectConfig(mode=mode, max_new_tokens=8, rouge_threshold=0.3, accuracy_threshold=0.3, progress=False, table_rows=0, heatmap=False)
    a = detect(split, tok, prompts, cfg, tmp_path / "split")
    b = detect(whole, tok, prompts, cfg, tmp_path / "whole")
    assert torch.equal(a.scores, b.scores) and b.scores.sum() > 0
