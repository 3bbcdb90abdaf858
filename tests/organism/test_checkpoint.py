"""The shipped organism checkpoint: loads with the Auto classes, tokenizer invariants, accuracy targets."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from retrieval_heads.organism import ORGANISM_PATH, load_organism
from retrieval_heads.organism.corpus import TASKS
from retrieval_heads.organism.tasks import exact_match_accuracy, make_eval_set, organism_generator
from retrieval_heads.organism.tokenizer import form_tokens

pytestmark = pytest.mark.skipif(
    not (ORGANISM_PATH / "model.safetensors").is_file(), reason="no shipped organism checkpoint"
)

# The issue's accuracy targets, and the floors the shipped checkpoint is guarded at (a little below what
# it measured on this set, docs/organism.md). Not all targets are met yet (cross): test_issue_targets is an
# expected failure that turns into an error (strict) the day they are, so the floors get raised.
TARGETS = {"mono": 0.95, "cross": 0.90, "multihop": 0.80, "parametric": 0.90}  # the issue sets none for multikey
FLOORS = {"mono": 0.85, "cross": 0.7, "multihop": 0.8, "parametric": 0.9}  # measured 0.95, 0.80, 0.90, 1.00 (multikey 0.20)
N = 20


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
        task: exact_match_accuracy(model, tok, make_eval_set(task, N, seed=3, lengths=(128, 256, 512, 1024),
                                                             generator=gen), batch_size=10)
        for task in TASKS
    }


@pytest.mark.parametrize("task", sorted(FLOORS))
def test_accuracy_floors(accuracy, task):
    assert accuracy[task] >= FLOORS[task], f"{task}: {accuracy[task]:.2f} < {FLOORS[task]}"


@pytest.mark.xfail(reason="the shipped checkpoint does not reach the issue's targets yet (docs/organism.md)", strict=True)
def test_issue_targets(accuracy):
    assert all(accuracy[t] >= TARGETS[t] for t in TARGETS), accuracy
