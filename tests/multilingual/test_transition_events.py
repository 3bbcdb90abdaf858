"""The transition event rule on constructed cases."""

from __future__ import annotations

import torch

from headatlas.detect.transition import align_answer, aligned_table, transition_events

# key positions 0..9; the source answer span is 4..7 holding tokens [20, 21, 22]
KEY = torch.tensor([[1, 2, 3, 4, 20, 21, 22, 5, 6, 7]])
START, END = torch.tensor([4]), torch.tensor([7])


def run(top1_per_head, targets, aligned, valid=None):
    top1 = torch.tensor(top1_per_head).view(1, len(targets), 1, -1)
    return transition_events(top1, torch.tensor([targets]), KEY, START, END, aligned, valid)[0, 0].tolist()


def test_aligned_translation_is_counted():
    aligned = torch.ones(1, 1, 3, dtype=torch.bool)
    assert run([[4]], [50], aligned) == [1]


def test_plain_copy_is_not_counted():
    aligned = torch.ones(1, 1, 3, dtype=torch.bool)
    assert run([[5]], [21], aligned) == [0], "emitting the attended token itself is a copy, not a transition"


def test_out_of_span_is_not_counted():
    aligned = torch.ones(1, 1, 3, dtype=torch.bool)
    assert run([[3, 7, 9]], [50], aligned) == [0, 0, 0]


def test_unaligned_target_token_is_not_counted():
    aligned = torch.zeros(1, 1, 3, dtype=torch.bool)
    aligned[0, 0, 2] = True  # the emitted token renders only the word at span offset 2
    assert run([[4, 6]], [50], aligned) == [0, 1]


def test_multi_token_target_word_counts_each_step():
    # a target word of three tokens [50, 51, 52] rendering the source word spanning offsets 0..2
    src_spans = [(0, 3), (3, 5), (5, 7)]
    units = align_answer("Nairobi", "内罗毕")
    table = aligned_table(src_spans, units, [{50, 51, 52}], step_tokens=[50, 51, 52, 99])
    assert table.tolist() == [[True] * 3, [True] * 3, [True] * 3, [False] * 3]
    counts = run([[4, 9], [5, 9], [6, 9], [4, 9]], [50, 51, 52, 99], table[None])
    assert counts == [3, 0], "three aligned steps for the head on the span; none for the head off it"


def test_valid_mask_drops_steps_after_the_stop():
    aligned = torch.ones(1, 2, 3, dtype=torch.bool)
    assert run([[4], [4]], [50, 51], aligned, valid=torch.tensor([[True, False]])) == [1]


def test_alignment_from_lexicon_pairs():
    units = align_answer("Berlin -> Kenya", "Berlin -> Kenia", [("Kenya", "Kenia"), ("Berlin", "Berlin")])
    assert units == [((0, 6), "Berlin"), ((10, 15), "Kenia")]
    table = aligned_table([(0, 6), (6, 10), (10, 15)], units, [{7}, {8, 9}], step_tokens=[7, 8, 9])
    assert table.tolist() == [[True, False, False], [False, False, True], [False, False, True]]
