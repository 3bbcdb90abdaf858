"""The shipped organism checkpoint: loads with the Auto classes, tokenizer invariants, accuracy targets."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from headatlas.organism import ORGANISM_PATH, load_organism
from headatlas.organism.corpus import TASKS
from headatlas.organism.tasks import exact_match_accuracy, make_eval_set, organism_generator
from headatlas.organism.tokenizer import form_tokens

pytestmark = pytest.mark.skipif(
    not (ORGANISM_PATH / "model.safetensors").is_file(), reason="no shipped organism checkpoint"
)

# The issue's accuracy targets, checked on the model card's held-out set (80 prompts per task, eval seed 1,
# 128-1024 tokens, every depth and language; docs/organism.md). Measured 2026-12-02 on the fifth
# checkpoint (4 x 32 heads): mono 1.000, cross 0.988, multihop 0.950, parametric 1.000, multikey 0.275.
TARGETS = {"mono": 0.95, "cross": 0.90, "multihop": 0.80, "parametric": 0.90}
MULTIKEY_FLOOR = 0.2  # the issue sets no multikey target; this guards the measured 0.275 against regressions
N, SEED = 80, 1


@pytest.fixture(scope="module")
def organism():
    return load_organism()


def test_loads_with_auto_classes():
    tok = AutoTokenizer.from_pretrained(ORGANISM_PATH)
    model = AutoModelForCausalLM.from_pretrained(ORGANISM_PATH)
    cfg = model.config
    assert cfg.model_type == "llama" and cfg.tie_word_embeddings
    assert cfg.num_key_value_heads < cfg.num_attention_heads
    assert cfg.num_hidden_layers * cfg.num_attention_heads >= 64
    assert next(model.parameters()).dtype == torch.float32
    assert tok.chat_template is None
    assert tok.eos_token and tok.bos_token and tok.pad_token
    assert sum(f.stat().st_size for f in ORGANISM_PATH.iterdir()) < 9_000_000


def test_tokenizer_byte_fallback_and_offsets(organism):
    _, tok = organism
    text = "Ünïcödé ✓ 🙂 中文 Kiswahili"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    ex = make_eval_set("mono", 4, seed=5, lengths=(256,))[0]
    enc = tok(ex.prompt, return_offsets_mapping=True)
    n = ex.needles[0]
    span = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < n.answer_end and b > n.answer_start]
    assert tok.decode([enc["input_ids"][i] for i in span]).strip() == ex.answer


def test_answers_multi_token_and_translations_disjoint(organism):
    _, tok = organism
    for ex in make_eval_set("cross", 24, seed=4, lengths=(128,)):
        n = ex.needles[0]
        src = ex.prompt[n.answer_start : n.answer_end]
        a, b = form_tokens(tok, ex.answer), form_tokens(tok, src)
        assert len(a) >= 2 and len(b) >= 2
        assert not set(a) & set(b), (src, ex.answer)


@pytest.fixture(scope="module")
def accuracy(organism):
    model, tok = organism
    gen = organism_generator()
    return {
        task: exact_match_accuracy(model, tok, make_eval_set(task, N, seed=SEED, lengths=(128, 256, 512, 1024),
                                                             generator=gen), batch_size=10)
        for task in TASKS
    }


@pytest.mark.parametrize("task", sorted(TARGETS))
def test_issue_accuracy_targets(accuracy, task):
    assert accuracy[task] >= TARGETS[task], f"{task}: {accuracy[task]:.3f} < {TARGETS[task]}"


def test_multikey_floor(accuracy):
    assert accuracy["multikey"] >= MULTIKEY_FLOOR, accuracy
