"""The copy-event rule on constructed top-1 positions: in span, out of span, wrong token, repeats, padding."""

from __future__ import annotations

import pytest
import torch

from headatlas.detect import DetectConfig, copy_event_mask, copy_events, mean_head_scores, prompt_scores

# one prompt, key tokens at positions 0..9; the answer span is [4, 7) holding tokens 40, 41, 42
KEYS = torch.tensor([[10, 11, 12, 13, 40, 41, 42, 41, 16, 17]])
START, END = torch.tensor([4]), torch.tensor([7])


def top1_rows(rows: list[list[int]]) -> torch.Tensor:
    """(S, H) attended positions of one layer -> (B=1, S, L=1, H)."""
    return torch.tensor(rows)[None, :, None, :]


def test_in_span_matching_token_is_an_event():
    top1 = top1_rows([[5, 4]])  # head 0 -> pos 5 (token 41), head 1 -> pos 4 (token 40)
    counts = copy_events(top1, torch.tensor([[41]]), KEYS, START, END)
    assert counts.tolist() == [[[1, 0]]]


def test_out_of_span_same_token_is_not_an_event():
    top1 = top1_rows([[7, 5]])  # position 7 holds 41 too, but lies outside the span
    assert copy_events(top1, torch.tensor([[41]]), KEYS, START, END).tolist() == [[[0, 1]]]


def test_wrong_token_in_span_is_not_an_event():
    top1 = top1_rows([[6, 6]])
    assert copy_events(top1, torch.tensor([[41]]), KEYS, START, END).sum() == 0


def test_span_end_is_exclusive_and_positions_past_the_keys_are_safe():
    top1 = top1_rows([[7, 50]])  # 50: a generated token beyond the prompt keys
    assert copy_events(top1, torch.tensor([[41]]), KEYS, START, END).sum() == 0


def test_repeated_position_counts_each_time_without_dedup_once_with():
    top1 = top1_rows([[5, 5], [5, 4], [5, 5]])  # three steps emitting 41, 40, 41
    targets = torch.tensor([[41, 40, 41]])
    assert copy_events(top1, targets, KEYS, START, END).tolist() == [[[2, 3]]]
    assert copy_events(top1, targets, KEYS, START, END, dedup=True).tolist() == [[[1, 2]]]
    # dedup keeps per-prompt scores <= 1; without it a head can exceed 1
    long_run = top1_rows([[5, 5]] * 5)
    raw = copy_events(long_run, torch.tensor([[41] * 5]), KEYS, START, END)
    assert (prompt_scores(raw, END - START) > 1).all()
    deduped = copy_events(long_run, torch.tensor([[41] * 5]), KEYS, START, END, dedup=True)
    assert (prompt_scores(deduped, END - START) <= 1).all()


def test_invalid_steps_do_not_count():
    top1 = top1_rows([[5, 5], [5, 5]])
    valid = torch.tensor([[True, False]])
    assert copy_events(top1, torch.tensor([[41, 41]]), KEYS, START, END, valid=valid).tolist() == [[[1, 1]]]


def test_batch_with_padding_offsets_and_layers():
    # prompt 1 is left-padded by 2: its span [4, 7) becomes [6, 9)
    keys = torch.cat([KEYS, torch.tensor([[0, 0, 10, 11, 12, 13, 40, 41, 42, 41]])])
    top1 = torch.tensor([[[5, 2], [4, 4]], [[7, 5], [7, 9]]])[:, None]  # (B=2, S=1, L=2, H=2)
    targets = torch.tensor([[41], [41]])
    mask = copy_event_mask(top1, targets, keys, torch.tensor([4, 6]), torch.tensor([7, 9]))
    assert mask.shape == (2, 1, 2, 2)
    counts = copy_events(top1, targets, keys, torch.tensor([4, 6]), torch.tensor([7, 9]))
    assert counts.tolist() == [[[1, 0], [0, 0]], [[1, 0], [1, 0]]]


def test_vectorised_rule_equals_a_python_loop():
    g = torch.Generator().manual_seed(0)
    B, S, L, H, T = 3, 7, 4, 5, 20
    keys = torch.randint(0, 4, (B, T), generator=g)
    top1 = torch.randint(0, T + 3, (B, S, L, H), generator=g)
    targets = torch.randint(0, 4, (B, S), generator=g)
    start, end = torch.tensor([2, 5, 0]), torch.tensor([9, 12, 20])
    valid = torch.rand(B, S, generator=g) > 0.2
    for dedup in (False, True):
        got = copy_events(top1, targets, keys, start, end, valid=valid, dedup=dedup)
        for b in range(B):
            for layer in range(L):
                for h in range(H):
                    hits = [
                        int(top1[b, s, layer, h])
                        for s in range(S)
                        if valid[b, s]
                        and start[b] <= top1[b, s, layer, h] < end[b]
                        and keys[b, top1[b, s, layer, h]] == targets[b, s]
                    ]
                    assert got[b, layer, h] == (len(set(hits)) if dedup else len(hits))


def test_scores_mean_over_counted_prompts_only():
    per_prompt = prompt_scores(torch.tensor([[[4]], [[2]], [[8]]]), torch.tensor([4, 4, 8]))
    assert mean_head_scores(per_prompt, torch.tensor([True, False, True])).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no counted"):
        mean_head_scores(per_prompt, torch.tensor([False, False, False]))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"mode": "sample"}, "mode"), ({"max_new_tokens": 0}, "max_new_tokens"), ({"rouge_threshold": 1.0}, "rouge"),
     ({"batch_size": 0}, "batch_size"), ({"table_rows": -1}, "table_rows")],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DetectConfig(**kwargs)


def test_fingerprint_ignores_batch_size_and_output_options():
    a = DetectConfig(batch_size=1, progress=False, table_rows=3)
    b = DetectConfig(batch_size=8, progress=True, heatmap=False)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != DetectConfig(dedup=True).fingerprint()
