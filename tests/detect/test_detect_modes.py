"""Greedy and teacher detection against independent plain implementations; batch-size independence; stops."""

from __future__ import annotations

import torch

from headatlas.detect import DetectConfig, StopTokens, detect, greedy_batch
from headatlas.heads import HeadScores
from headatlas.niah import rouge1_recall
from tests.conftest import make_tiny_model
from tests.detect.detect_helpers import NEWLINE_ID, copy_prompts, tiny_setup, word_tokenizer

MAX_NEW = 10
THRESHOLD = 0.3


def _config(**kw) -> DetectConfig:
    base = dict(max_new_tokens=MAX_NEW, rouge_threshold=THRESHOLD, accuracy_threshold=THRESHOLD, progress=False, table_rows=0, heatmap=False)
    return DetectConfig(**{**base, **kw})


# ---- independent implementations: eager attention maps, no KV cache, Python loops over heads ----------
@torch.no_grad()
def plain_greedy_events(model, tokenizer, prompts, max_new, threshold):
    """The paper's rule, written plainly: per prompt, the attended span positions of each head's copy events."""
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    eos = {tokenizer.eos_token_id, *([model.generation_config.eos_token_id] if model.generation_config.eos_token_id is not None else [])}
    texts = {i: tokenizer.decode([i]) for i in range(len(tokenizer))}
    newline = {i for i, t in texts.items() if "\n" in t}
    blank = {i for i, t in texts.items() if not t.strip()}
    base = model.config._attn_implementation
    model.set_attn_implementation("eager")
    hits_all, counted_all = [], []
    try:
        for p in prompts:
            seq = list(p.input_ids)
            start, end = p.answer_token_span
            hits = {(layer, h): [] for layer in range(n_layers) for h in range(n_heads)}
            emitted, started, stop_tail = [], False, ""
            for _ in range(max_new):
                out = model(torch.tensor([seq]), output_attentions=True)
                t = int(out.logits[0, -1].argmax())
                if t in eos:
                    break
                if t in newline and started:
                    stop_tail = texts[t].split("\n", 1)[0]
                    break
                for layer in range(n_layers):
                    for h in range(n_heads):
                        i = int(out.attentions[layer][0, h, -1].argmax())  # one host sync per head, as the reference
                        if start <= i < end and seq[i] == t:
                            hits[(layer, h)].append(i)
                emitted.append(t)
                started = started or t not in blank
                seq.append(t)
            response = (tokenizer.decode(emitted, skip_special_tokens=True) + stop_tail).strip()
            hits_all.append(hits)
            counted_all.append(rouge1_recall(response, p.needle.answer, "en") > threshold)
    finally:
        model.set_attn_implementation(base)
    return hits_all, counted_all


def plain_scores(prompts, hits_all, counted_all, shape, dedup):
    """Head scores and sparse per-prompt event counts from the plain event lists."""
    totals = torch.zeros(shape, dtype=torch.float64)
    events_all = []
    for p, hits, counted in zip(prompts, hits_all, counted_all, strict=True):
        start, end = p.answer_token_span
        events = {k: (len(set(v)) if dedup else len(v)) for k, v in hits.items()}
        events_all.append({f"{k[0]}.{k[1]}": n for k, n in events.items() if n})
        if counted:
            for (layer, h), n in events.items():
                totals[layer, h] += n / (end - start)
    return (totals / max(sum(counted_all), 1)).float(), events_all


@torch.no_grad()
def plain_teacher_scores(model, prompts, threshold):
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    base = model.config._attn_implementation
    model.set_attn_implementation("eager")
    totals = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    n_counted, events_all = 0, []
    try:
        for p in prompts:
            start, end = p.answer_token_span
            answer = list(p.input_ids[start:end])
            seq = list(p.input_ids) + answer
            out = model(torch.tensor([seq]), output_attentions=True)
            events, correct = {}, 0
            for j, a in enumerate(answer):
                row = len(p.input_ids) - 1 + j
                if int(out.logits[0, row].argmax()) != a:
                    continue
                correct += 1
                for layer in range(n_layers):
                    for h in range(n_heads):
                        i = int(out.attentions[layer][0, h, row].argmax())
                        if start <= i < end and seq[i] == a:
                            events[(layer, h)] = events.get((layer, h), 0) + 1
            events_all.append({f"{k[0]}.{k[1]}": n for k, n in events.items()})
            if correct / len(answer) > threshold:
                n_counted += 1
                for (layer, h), n in events.items():
                    totals[layer, h] += n / len(answer)
    finally:
        model.set_attn_implementation(base)
    return (totals / max(n_counted, 1)).float(), events_all


def _samples(out_dir):
    import json

    return [json.loads(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()]


# ---- tests -----------------------------------------------------------------------------------------------
def test_greedy_equals_plain_implementation(tmp_path):
    model, tokenizer, prompts = tiny_setup(n=6)
    hits, counted = plain_greedy_events(model, tokenizer, prompts, MAX_NEW, THRESHOLD)
    for dedup in (False, True):
        out = tmp_path / f"dedup{dedup}"
        scores = detect(model, tokenizer, prompts, _config(dedup=dedup, batch_size=3), out)
        expected, events = plain_scores(prompts, hits, counted, scores.scores.shape, dedup)
        samples = _samples(out)
        assert [s["counted"] for s in samples] == counted
        assert [s["events"] for s in samples] == events
        assert sum(sum(e.values()) for e, c in zip(events, counted, strict=True) if c) > 0, "test needs events"
        assert 0 < sum(counted) < len(prompts), "test needs counted and failed prompts"
        torch.testing.assert_close(scores.scores, expected, atol=1e-6, rtol=0)
        assert HeadScores.load(out / "head_scores.json").scores.equal(scores.scores)


def test_teacher_equals_plain_implementation(tmp_path):
    model, tokenizer, prompts = tiny_setup(n=6)
    scores = detect(model, tokenizer, prompts, _config(mode="teacher", batch_size=3), tmp_path)
    expected, events = plain_teacher_scores(model, prompts, THRESHOLD)
    assert [s["events"] for s in _samples(tmp_path)] == events
    assert sum(sum(e.values()) for e in events) > 0
    torch.testing.assert_close(scores.scores, expected, atol=1e-6, rtol=0)


def test_results_do_not_depend_on_batch_size(tmp_path):
    model, tokenizer, prompts = tiny_setup(n=7, seed=3)
    for mode in ("greedy", "teacher"):
        one = detect(model, tokenizer, prompts, _config(mode=mode, batch_size=1), tmp_path / f"{mode}1")
        three = detect(model, tokenizer, prompts, _config(mode=mode, batch_size=3), tmp_path / f"{mode}3")
        assert torch.equal(one.scores, three.scores), mode
        assert one.scores.sum() > 0
        strip = [{k: v for k, v in s.items() if k != "seconds"} for s in _samples(tmp_path / f"{mode}1")]
        assert strip == [{k: v for k, v in s.items() if k != "seconds"} for s in _samples(tmp_path / f"{mode}3")]


def test_stop_tokens_are_read_from_the_vocabulary():
    model = make_tiny_model("llama")
    stops = StopTokens.from_tokenizer(model, word_tokenizer())
    assert stops.newline.nonzero().flatten().tolist() == [NEWLINE_ID]
    assert stops.eos.nonzero().flatten().tolist() == [2]
    assert stops.blank[NEWLINE_ID] and not stops.blank[5]


def test_greedy_stops_at_eos_and_at_newline_only_after_content():
    model = make_tiny_model("llama")
    vocab = 96
    none = torch.zeros(vocab, dtype=torch.bool)
    prompt = copy_prompts(model, word_tokenizer(), n=1)[0]
    free = greedy_batch(model, [prompt.input_ids], [prompt.answer_token_span], 6,
                        StopTokens(none.clone(), none.clone(), none.clone()))
    tokens = free.tokens[0].tolist()
    assert free.n_scored.tolist() == [6] and free.stop_reason == ["max_new_tokens"]
    # the 3rd emitted token as EOS: two scored tokens
    eos = none.clone()
    eos[tokens[2]] = True
    first = tokens.index(tokens[2])
    out = greedy_batch(model, [prompt.input_ids], [prompt.answer_token_span], 6, StopTokens(eos, none.clone(), none.clone()))
    assert out.n_scored.tolist() == [first] and out.stop_reason == ["eos"]
    # the same token as a "newline": it stops only once a non-blank token was emitted before it
    newline = none.clone()
    newline[tokens[0]] = True
    blank = none.clone()
    out = greedy_batch(model, [prompt.input_ids], [prompt.answer_token_span], 6, StopTokens(none.clone(), newline, blank))
    later = [i for i, t in enumerate(tokens) if t == tokens[0] and i > 0]
    assert out.n_scored.tolist() == [later[0] if later else 6]
    blank_first = none.clone()
    blank_first[tokens[0]] = True  # a blank leading "newline" never starts the answer
    out = greedy_batch(model, [prompt.input_ids], [prompt.answer_token_span], 6,
                       StopTokens(none.clone(), newline, blank_first))
    expected = next((i for i in range(1, 6) if tokens[i] == tokens[0] and any(t != tokens[0] for t in tokens[1:i])), 6)
    assert out.n_scored.tolist() == [expected]


def test_every_family_decodes_and_batches_identically(family):
    """Greedy and teacher run on every supported family; a batch of 3 equals three batches of 1."""
    from headatlas.detect import teacher_batch

    model = make_tiny_model(family)
    prompts = copy_prompts(model, word_tokenizer(), n=3)
    none = torch.zeros(96, dtype=torch.bool)
    stops = StopTokens(none, none, none)
    seqs, spans = [p.input_ids for p in prompts], [p.answer_token_span for p in prompts]
    greedy, teacher = greedy_batch(model, seqs, spans, 6, stops), teacher_batch(model, seqs, spans)
    for i in range(3):
        alone = greedy_batch(model, [seqs[i]], [spans[i]], 6, stops)
        assert torch.equal(greedy.tokens[i], alone.tokens[0]) and torch.equal(greedy.counts[i], alone.counts[0])
        assert torch.equal(teacher.counts[i], teacher_batch(model, [seqs[i]], [spans[i]]).counts[0])
