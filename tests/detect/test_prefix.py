"""Prefix sharing and the static-cache decode path give the scores of the plain path (tiny Llama, organism)."""

from __future__ import annotations

import json

import pytest
import torch

from headatlas.detect import DetectConfig, StopTokens, detect, greedy_batch, teacher_batch
from headatlas.generation import auto_batch_size, left_pad, prefill
from headatlas.prefix import (
    PrefixKeeper,
    can_share_prefix,
    common_prefix_len,
    compute_prefix,
    plan_batches,
    prefix_groups,
)
from tests.conftest import make_tiny_model
from tests.detect.detect_helpers import NEWLINE_ID, FakeNeedle, FakePrompt, plain_greedy, word_tokenizer

ANSWER = 6


def haystack_prompts(model, tokenizer, lengths=(90, 120), depths=(0.0, 0.55, 0.7, 0.85, 1.0)):
    """Prompts built like a NIAH grid from one random haystack: they share the tokens before their needle."""
    g = torch.Generator().manual_seed(5)
    hay = torch.randint(3, NEWLINE_ID, (max(lengths),), generator=g).tolist()
    prompts = []
    for length in lengths:
        base = hay[: length - ANSWER]
        answer = plain_greedy(model, base, ANSWER)  # the model's own continuation: it tends to copy it
        for depth in depths:
            start = int(depth * (length - ANSWER))
            ids = base[:start] + answer + base[start:]
            text = tokenizer.decode(answer)
            prompts.append(FakePrompt(
                input_ids=ids, text="", context_length=length, depth=depth,
                needle=FakeNeedle(text=text, question="?", answer=text), needle_token_span=(start, start + ANSWER),
                answer_token_span=(start, start + ANSWER), answer_token_ids=answer,
                meta={"prompt_id": f"L{length}-d{depth}"},
            ))
    return prompts


@pytest.fixture(scope="module")
def tiny():
    model = make_tiny_model("llama")
    tokenizer = word_tokenizer()
    return model, tokenizer, haystack_prompts(model, tokenizer)


def test_groups_share_the_longest_prefix_and_save_tokens():
    seqs = [[1] * 80 + [2, 3], [1] * 80 + [4], [1] * 70 + [5] * 9, [9] * 5]
    groups = prefix_groups(seqs, min_prefix=64)
    assert sorted(i for g, _ in groups for i in g) == [0, 1, 2, 3]
    shared = {tuple(g): p for g, p in groups}
    assert shared[(0, 1, 2)] == 70 and shared[(3,)] == 0
    # every group's shared length is a common prefix of its members, shorter than each of them
    for members, p in groups:
        assert all(common_prefix_len(seqs[members[0]], seqs[i]) >= p and len(seqs[i]) > p for i in members)
    assert plan_batches(seqs, 2, min_prefix=64) == [([2, 1], 70), ([0], 70), ([3], 0)]


def test_prefill_after_a_shared_prefix_gives_the_same_logits(tiny):
    model, _, prompts = tiny
    seqs = [p.input_ids for p in prompts[1:4]]  # three depths: padding between prefix and rest differs per row
    n = min(common_prefix_len(seqs[0], s) for s in seqs)
    assert n > 20
    plain, _ = prefill(model, *left_pad(seqs, 0))
    shared, _ = prefill(model, *left_pad(seqs, 0, n), prefix=compute_prefix(model, seqs[0][:n]))
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fast", ["off", "static"])
def test_greedy_and_teacher_batches_equal_with_a_prefix(tiny, monkeypatch, fast):
    monkeypatch.setenv("HEADATLAS_FAST_DECODE", fast)
    model, tokenizer, prompts = tiny
    stops = StopTokens.from_tokenizer(model, tokenizer)
    batch = prompts[1:5]
    seqs, spans = [p.input_ids for p in batch], [p.answer_token_span for p in batch]
    n = min(common_prefix_len(seqs[0], s) for s in seqs)
    start, end = spans[0]
    twin = list(seqs[0][:end]) + [7, 8] + list(seqs[0][end + 2 :])  # the same needle, a different tail
    cases = [(seqs, spans, n), ([seqs[0], twin, seqs[0][:-3]], [spans[0]] * 3, start + 2)]  # prefix ends in a span
    for seqs, spans, cut in cases:
        prefix = compute_prefix(model, seqs[0][:cut])
        greedy = greedy_batch(model, seqs, spans, 8, stops, prefix=prefix)
        monkeypatch.setenv("HEADATLAS_FAST_DECODE", "off")
        plain = greedy_batch(model, seqs, spans, 8, stops)
        monkeypatch.setenv("HEADATLAS_FAST_DECODE", fast)
        assert torch.equal(greedy.tokens, plain.tokens) and torch.equal(greedy.counts, plain.counts)
        assert plain.counts.sum() > 0
        shared_t, plain_t = teacher_batch(model, seqs, spans, prefix=prefix), teacher_batch(model, seqs, spans)
        assert torch.equal(shared_t.counts, plain_t.counts) and torch.equal(shared_t.predictions, plain_t.predictions)
        assert plain_t.counts.sum() > 0
    with pytest.raises(ValueError, match="start with the prefix"):
        teacher_batch(model, [seqs[0], [7] * 40], spans[:2], prefix=compute_prefix(model, seqs[0][:30]))


def _samples(out) -> list[dict]:
    lines = (out / "samples.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


@pytest.mark.parametrize("mode", ["greedy", "teacher"])
def test_detect_scores_do_not_depend_on_sharing_or_batch_size(tiny, tmp_path, mode):
    model, tokenizer, prompts = tiny
    assert can_share_prefix(model)
    base = dict(mode=mode, max_new_tokens=8, rouge_threshold=0.3, accuracy_threshold=0.3, progress=False, table_rows=0, heatmap=False)
    runs = {}
    for share, batch in ((False, 1), (True, 1), (True, 3)):
        out = tmp_path / f"{share}-{batch}"
        runs[share, batch] = detect(model, tokenizer, prompts, DetectConfig(share_prefix=share, batch_size=batch, **base), out)
        runs[share, batch] = (runs[share, batch].scores, _samples(out))
    plain_scores, plain_samples = runs[False, 1]
    assert plain_scores.sum() > 0
    for key in ((True, 1), (True, 3)):
        assert torch.equal(runs[key][0], plain_scores), key
        assert runs[key][1] == plain_samples, key


def test_auto_batch_size_is_one_on_cpu_and_recorded(tiny, tmp_path):
    model, tokenizer, prompts = tiny
    assert auto_batch_size(model, 4096, 50) == 1
    cfg = DetectConfig(mode="teacher", rouge_threshold=0.3, accuracy_threshold=0.3, progress=False, table_rows=0, heatmap=False)
    assert cfg.batch_size == "auto"
    detect(model, tokenizer, prompts[:2], cfg, tmp_path)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config"]["batch_size"] == 1 and run["config"]["share_prefix"] is True
    with pytest.raises(ValueError, match="batch_size"):
        DetectConfig(batch_size="many")


ORGANISM = pytest.importorskip("headatlas.organism").ORGANISM_PATH


def organism_prompts(tokenizer) -> list[FakePrompt]:
    """Variants of the organism's own prompts that share their start: filler from other prompts is inserted
    before the needle (the span follows the shared prefix) or after it (the span lies inside it)."""
    from headatlas.prompt_sources import PromptRequest, build_prompts

    built = build_prompts("organism", tokenizer, 2048, PromptRequest(lengths=[256], depths=[0.3, 0.5, 0.7], per_cell=2))
    prompts = []
    for k, p in enumerate(built[:2]):
        ids, (start, end) = list(p.input_ids), p.answer_token_span
        for where, cut in (("before", start - 4), ("after", end + 8)):
            for j, other in enumerate(built[2:5]):
                filler = list(other.input_ids[20:32])
                shift = len(filler) if where == "before" else 0
                prompts.append(FakePrompt(
                    input_ids=ids[:cut] + filler + ids[cut:], text="", context_length=256, depth=p.depth,
                    needle=FakeNeedle(text=p.needle.text, question="?", answer=p.needle.answer),
                    needle_token_span=(start + shift, end + shift), answer_token_span=(start + shift, end + shift),
                    answer_token_ids=ids[start:end], meta={"prompt_id": f"o{k}-{where}-{j}"},
                ))
    return prompts


@pytest.mark.skipif(not (ORGANISM / "model.safetensors").is_file(), reason="no shipped organism")
@pytest.mark.parametrize("mode", ["teacher", "greedy"])
def test_organism_detect_is_the_same_with_a_shared_prefix(tmp_path, mode):
    from headatlas.model_spec import load_model

    model, tokenizer, _ = load_model("organism", device="cpu")
    prompts = organism_prompts(tokenizer)
    assert sum(len(g) > 1 and p > 0 for g, p in prefix_groups([p.input_ids for p in prompts])) >= 2
    base = dict(mode=mode, max_new_tokens=6, progress=False, table_rows=0, heatmap=False)
    shared = detect(model, tokenizer, prompts, DetectConfig(share_prefix=True, batch_size=2, **base), tmp_path / "a")
    plain = detect(model, tokenizer, prompts, DetectConfig(share_prefix=False, batch_size=1, **base), tmp_path / "b")
    assert torch.equal(shared.scores, plain.scores) and plain.scores.sum() > 0
    assert _samples(tmp_path / "a") == _samples(tmp_path / "b")


def test_the_keeper_computes_a_group_prefix_once_and_frees_it_for_the_next(monkeypatch):
    import headatlas.prefix as prefix_module

    model = make_tiny_model("llama")
    calls = []
    monkeypatch.setattr(prefix_module, "compute_prefix", lambda m, t: calls.append(tuple(t)) or compute_prefix(m, t))
    keeper = PrefixKeeper(model)
    first = keeper.get([5, 6, 7])
    assert keeper.get((5, 6, 7)) is first and calls == [(5, 6, 7)]  # the group's next batch: no second forward
    other = keeper.get([5, 6, 8])
    assert other is not first and other.tokens == (5, 6, 8) and calls == [(5, 6, 7), (5, 6, 8)]
    assert keeper.get([]) is None and keeper.current is None  # no shared prefix: nothing held
    ref = compute_prefix(model, [5, 6, 8])
    for (k, v), (rk, rv) in zip(other.states, ref.states, strict=True):
        torch.testing.assert_close(k, rk)
        torch.testing.assert_close(v, rv)
