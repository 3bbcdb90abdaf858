"""The first author's retrieval-transition rule (alignment="counterfactual"): events, prompts, detection."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from headatlas.detect import DetectConfig, detect
from headatlas.detect.transition import counterfactual_events
from tests.conftest import make_tiny_model
from tests.detect.detect_helpers import word_tokenizer
from tests.multilingual.test_transition_detect import ANSWER_LEN, transition_prompts

# key positions 0..9; the source answer span is 4..7 holding tokens [20, 21, 22]
START, END = torch.tensor([4]), torch.tensor([7])
CF = torch.tensor([[50, 51, 52]])  # the counterfactual prompt's answer tokens at span offsets 0, 1, 2


def run(top1_per_head, targets, cf=CF, valid=None):
    top1 = torch.tensor(top1_per_head).view(1, len(targets), 1, -1)
    return counterfactual_events(top1, torch.tensor([targets]), START, END, cf, valid)[0, 0].tolist()


def test_token_of_the_counterfactual_at_the_attended_offset_is_counted():
    assert run([[4, 5, 6]], [50]) == [1, 0, 0], "only the head on offset 0 sees 50 in the counterfactual"
    assert run([[4, 5, 6]], [52]) == [0, 0, 1]


def test_outside_the_span_nothing_counts_even_if_the_token_matches():
    assert run([[3, 7, 9]], [50]) == [0, 0, 0]


def test_a_copy_counts_when_the_counterfactual_holds_the_same_token():
    # no copy exclusion in this rule: "Paris" -> "Paris" is an event when the target needle says "Paris" too
    assert run([[5]], [21], cf=torch.tensor([[20, 21, 22]])) == [1]


def test_counterfactual_shorter_than_the_span_and_valid_mask():
    short = torch.tensor([[50, -1, -1]])  # a one-token target answer against a three-token source span
    assert run([[4, 5]], [50], cf=short) == [1, 0]
    assert run([[5]], [-1], cf=short) == [0], "the -1 filler never matches"
    assert run([[4], [4]], [50, 50], valid=torch.tensor([[True, False]])) == [1]


def counterfactual_prompts(model, tok, seed):
    """The constructed transition prompts with a counterfactual: the target answer ids where the source span is."""
    out = []
    for p in transition_prompts(model, tok, seed=seed):
        cf_ids = [int(w[1:]) for w in p.meta["expected_continuation"].split()]
        out.append(dataclasses.replace(p, meta={**p.meta, "counterfactual_answer_token_ids": cf_ids}))
    return out


@torch.no_grad()
def plain_counterfactual_scores(model, prompts, max_new_tokens):
    """Eager attention at every step, no cache, loops over heads; the rule written out directly."""
    model.set_attn_implementation("eager")
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    total, counted = torch.zeros(n_layers, n_heads), 0
    try:
        for p in prompts:
            cf = p.meta["counterfactual_answer_token_ids"]
            events = torch.zeros(n_layers, n_heads)
            seq, emitted = list(p.input_ids), []
            s0, s1 = p.answer_token_span
            for _ in range(max_new_tokens):
                out = model(torch.tensor([seq]), output_attentions=True)
                tok = int(out.logits[0, -1].argmax())
                if tok == 2 or (tok == 95 and emitted):
                    break
                emitted.append(tok)
                for layer in range(n_layers):
                    for head in range(n_heads):
                        i = int(out.attentions[layer][0, head, -1].argmax())
                        if s0 <= i < s1 and i - s0 < len(cf) and cf[i - s0] == tok:
                            events[layer, head] += 1
                seq.append(tok)
            target = p.needle.target_answer.split()
            response = [f"w{t}" for t in emitted if 3 <= t < 95]
            if sum(1 for w in target if w in response) / len(target) > 0.5:
                counted += 1
                total += events / len(cf)
    finally:
        model.set_attn_implementation("sdpa")
    return total / counted, counted


def test_detect_with_the_counterfactual_rule_equals_a_plain_implementation(tmp_path):
    model, tok = make_tiny_model("llama"), word_tokenizer()
    prompts = counterfactual_prompts(model, tok, seed=0)
    config = DetectConfig(kind="transition", alignment="counterfactual", mode="greedy", max_new_tokens=ANSWER_LEN,
                          batch_size=3, progress=False, table_rows=0, heatmap=False)
    scores = detect(model, tok, prompts, config, tmp_path / "run")
    expected, counted = plain_counterfactual_scores(model, prompts, ANSWER_LEN)
    assert counted >= 3 and scores.meta["counted_prompts"] == counted
    assert expected.sum() > 0, "the constructed prompts must produce counterfactual events"
    torch.testing.assert_close(scores.scores, expected, atol=1e-6, rtol=1e-6)


def test_prompts_without_a_counterfactual_are_refused(tmp_path):
    model, tok = make_tiny_model("llama"), word_tokenizer()
    config = DetectConfig(kind="transition", alignment="counterfactual", progress=False, table_rows=0, heatmap=False)
    with pytest.raises(ValueError, match="counterfactual_answer_token_ids"):
        detect(model, tok, transition_prompts(model, tok, n=2), config, tmp_path / "run")
    assert not (tmp_path / "run" / "head_scores.json").exists()


def test_organism_counterfactual_prompt_swaps_only_the_needle():
    from headatlas.organism import load_organism
    from headatlas.organism.prompts import organism_counterfactuals, organism_prompts
    from headatlas.organism.tasks import organism_generator

    _, tok = load_organism()
    prompts = [p for p in organism_prompts(tok, "cross", 6, seed=3, lengths=[256], langs=["en", "zh"],
                                           generator=organism_generator()) if p.needle.lang == "en"]
    assert prompts
    for p, cf in zip(prompts, organism_counterfactuals(tok, prompts), strict=True):
        ids, cf_ids = p.input_ids, cf.meta["counterfactual_input_ids"]
        n0 = p.needle_token_span[0]
        assert cf_ids[:n0] == ids[:n0], "the same haystack up to the needle"
        assert tok.decode(cf.meta["counterfactual_answer_token_ids"]).strip() == p.needle.target_answer
        assert cf.meta["counterfactual_needle"].endswith(p.needle.target_answer + "。")  # the Chinese fact sentence
        tail = len(tok(p.text.rsplit("\n\n", 1)[1], add_special_tokens=False)["input_ids"])
        assert cf_ids[-tail:] == ids[-tail:], "the question after the haystack is unchanged"


def test_builtin_niah_counterfactual_uses_the_parallel_needle():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from headatlas.niah import build_prompt, cross_lingual_needles, load_haystack, load_needles
    from headatlas.niah.prompts import builtin_counterfactual

    needle = cross_lingual_needles("en", "de")[0]  # en/sandwich>de
    german = next(n for n in load_needles(lang="de") if n.id == "de/sandwich")
    hay, words = load_haystack("en"), {}
    for text in (hay.text[:20000], needle.text, german.text, needle.question, "Question: Answer:"):
        for w in text.replace(".", " . ").split():
            words.setdefault(w, len(words) + 1)
    raw = Tokenizer(models.WordLevel({"[UNK]": 0, **words}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    p = build_prompt(tok, hay, needle, context_length=300, depth=0.5)
    cf = builtin_counterfactual(tok, p)
    n0 = p.needle_token_span[0]
    assert cf.meta["counterfactual_input_ids"][:n0] == p.input_ids[:n0], "same haystack up to the needle"
    assert tok.decode(cf.meta["counterfactual_answer_token_ids"]) == german.answer
    assert cf.meta["counterfactual_needle"] == german.text
