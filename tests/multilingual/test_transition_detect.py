"""detect(kind="transition") against an independent plain implementation, batch sizes, resume."""

from __future__ import annotations

import json

import pytest
import torch

from headatlas.detect import DetectConfig, detect
from tests.conftest import make_tiny_model
from tests.detect.detect_helpers import FakeNeedle, FakePrompt, plain_greedy, word_tokenizer

STOP_IDS = {0, 2, 95}  # pad, eos, newline of the word tokenizer
ANSWER_LEN = 6


def transition_prompts(model, tokenizer, n=6, seed=0):
    """Cross-lingual-style prompts: a random source answer in the context; the target answer is what the
    model writes (its own greedy continuation), so every prompt is answered 'correctly in the target language'."""
    g = torch.Generator().manual_seed(seed)
    prompts = []
    for k in range(n):
        length = int(torch.randint(18, 36, (1,), generator=g))
        ids = torch.randint(3, 95, (length,), generator=g).tolist()
        start = length // 3
        span = (start, start + 4)
        cont = []
        for tok in plain_greedy(model, ids, ANSWER_LEN):
            if tok in STOP_IDS:
                break
            cont.append(tok)
        if not cont:
            continue
        source = tokenizer.decode(ids[span[0] : span[1]])
        target = tokenizer.decode(cont)
        offsets, pos = [], 0
        for word in source.split(" "):
            offsets.append((pos, pos + len(word)))
            pos += len(word) + 1
        needle = FakeNeedle(text=source, question="?", answer=source, lang="xx", id=f"n{k}",
                            target_answer=target, target_lang="yy")
        prompts.append(FakePrompt(
            input_ids=ids, text=tokenizer.decode(ids), context_length=length, depth=0.33, needle=needle,
            needle_token_span=span, answer_token_span=span, answer_token_ids=ids[span[0] : span[1]],
            meta={"prompt_id": f"t{seed}-{k}", "answer_token_char_offsets": offsets,
                  "expected_continuation": " " + target},
        ))
    return prompts


@torch.no_grad()
def plain_transition_scores(model, prompts, max_new_tokens):
    """Eager attention maps at every step, no KV cache, Python loops over heads (the 'span' alignment)."""
    model.set_attn_implementation("eager")
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    total = torch.zeros(n_layers, n_heads)
    counted = 0
    try:
        for p in prompts:
            target_ids = [int(w[1:]) for w in p.meta["expected_continuation"].split()]  # "w17" -> 17
            events = torch.zeros(n_layers, n_heads)
            seq, started = list(p.input_ids), False
            s0, s1 = p.answer_token_span
            emitted = []
            for _ in range(max_new_tokens):
                out = model(torch.tensor([seq]), output_attentions=True)
                tok = int(out.logits[0, -1].argmax())
                if tok == 2 or (tok == 95 and started):
                    break
                started = True
                emitted.append(tok)
                for layer in range(n_layers):
                    for head in range(n_heads):
                        i = int(out.attentions[layer][0, head, -1].argmax())
                        if s0 <= i < s1 and tok in target_ids and seq[i] != tok:
                            events[layer, head] += 1
                seq.append(tok)
            response = " ".join(f"w{t}" for t in emitted if 3 <= t < 95)
            target = p.needle.target_answer.split()
            recall = sum(1 for w in target if w in response.split()) / len(target)
            if recall > 0.5:
                counted += 1
                total += events / len(target_ids)
    finally:
        model.set_attn_implementation("sdpa")
    return total / counted, counted


def test_transition_scores_equal_plain_implementation(tmp_path):
    model, tok = make_tiny_model("llama"), word_tokenizer()
    prompts = transition_prompts(model, tok)
    config = DetectConfig(kind="transition", alignment="span", mode="greedy", max_new_tokens=ANSWER_LEN,
                          batch_size=3, progress=False, table_rows=0, heatmap=False)
    scores = detect(model, tok, prompts, config, tmp_path / "run")
    expected, counted = plain_transition_scores(model, prompts, ANSWER_LEN)
    assert counted >= 3 and scores.meta["counted_prompts"] == counted
    assert expected.sum() > 0, "the constructed prompts must produce transition events"
    torch.testing.assert_close(scores.scores, expected, atol=1e-6, rtol=1e-6)
    assert scores.meta["kind"] == "transition" and scores.meta["method"] == "transition-score"


@pytest.mark.parametrize("mode", ["greedy", "teacher"])
def test_transition_scores_do_not_depend_on_batch_size(tmp_path, mode):
    model, tok = make_tiny_model("llama"), word_tokenizer()
    prompts = transition_prompts(model, tok, seed=1)
    runs = []
    for bs in (1, 4):
        cfg = DetectConfig(kind="transition", alignment="span", mode=mode, max_new_tokens=ANSWER_LEN,
                           batch_size=bs, progress=False, table_rows=0, heatmap=False, rouge_threshold=0.0, accuracy_threshold=0.0)
        runs.append(detect(model, tok, prompts, cfg, tmp_path / f"{mode}{bs}").scores)
    assert torch.equal(runs[0], runs[1])


def test_transition_run_resumes_to_the_same_file(tmp_path):
    model, tok = make_tiny_model("llama"), word_tokenizer()
    prompts = transition_prompts(model, tok, seed=2)
    cfg = DetectConfig(kind="transition", alignment="span", max_new_tokens=ANSWER_LEN, progress=False,
                       table_rows=0, heatmap=False)
    full = detect(model, tok, prompts, cfg, tmp_path / "full")

    seen = []

    def stop_after_two(_rec):
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        detect(model, tok, prompts, cfg, tmp_path / "resumed", on_sample=stop_after_two)
    resumed = detect(model, tok, prompts, cfg, tmp_path / "resumed")
    assert torch.equal(full.scores, resumed.scores)
    a = [json.loads(x) for x in (tmp_path / "full" / "samples.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "resumed" / "samples.jsonl").read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert [strip(r) for r in a] == [strip(r) for r in b]


def test_copy_needles_are_refused_for_transition(tmp_path):
    from headatlas.detect import PromptError
    from tests.detect.detect_helpers import copy_prompts

    model, tok = make_tiny_model("llama"), word_tokenizer()
    with pytest.raises(PromptError, match="cross-lingual needle"):
        detect(model, tok, copy_prompts(model, tok, n=2), DetectConfig(kind="transition", progress=False), tmp_path)
