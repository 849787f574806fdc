"""Hand-computed examples for the lens metrics (tiny vocabularies, 2-d embeddings)."""

import math

import pytest
import torch

from causalshift.lens import metrics as M


def test_target_ranks_counts_strictly_larger_and_ties_favour_target():
    logits = torch.tensor(
        [
            [3.0, 1.0, 2.0, 0.0],  # target 0 is the max -> rank 0
            [3.0, 1.0, 2.0, 0.0],  # target 3 is the min -> rank 3
            [2.0, 2.0, 1.0, 2.0],  # target 1 ties the max with two others -> rank 0
            [5.0, 1.0, 1.0, 0.0],  # target 2 ties with 1; only 5.0 is strictly larger -> 1
        ]
    )
    targets = torch.tensor([0, 3, 1, 2])
    assert M.target_ranks(logits, targets).tolist() == [0, 3, 0, 1]
    ranks = M.target_ranks(logits, targets)
    assert M.topk_hits(ranks, 1).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert M.topk_hits(ranks, 2).tolist() == [1.0, 0.0, 1.0, 1.0]


def test_cosine_2d():
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    y = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, -1.0]])
    got = M.cosine(x, y)
    assert got.tolist() == pytest.approx([1.0, 1 / math.sqrt(2), -1.0], abs=1e-6)


def test_projection_endpoints_midpoint_and_scale_invariance():
    a = torch.tensor([[1.0, 0.0]] * 4)
    b = torch.tensor([[0.0, 1.0]] * 4)
    h = torch.tensor(
        [
            [3.0, 0.0],  # along the input embedding -> 0
            [0.0, 0.5],  # along the output embedding -> 1
            [1.0, 1.0],  # equal cosines -> 0.5
            [-1.0, -1.0],  # orthogonal to the axis' direction too: still 0.5
        ]
    )
    assert M.projection(h, a, b).tolist() == pytest.approx([0.0, 1.0, 0.5, 0.5], abs=1e-6)
    # p = 0.5 + (cos(h,b) - cos(h,a)) / (2 (1 - cos(a,b)))
    h2 = torch.tensor([[2.0, 1.0]])
    cos_a, cos_b = 2 / math.sqrt(5), 1 / math.sqrt(5)
    expected = 0.5 + (cos_b - cos_a) / 2
    assert M.projection(h2, a[:1] * 7, b[:1] * 0.1).item() == pytest.approx(expected, abs=1e-6)


def test_first_position_bos():
    t = torch.tensor([[2, 5, 6], [2, 7, 8]])
    assert M.first_position(t, 2) == 1
    assert M.first_position(t, None) == 0
    assert M.first_position(torch.tensor([[2, 5], [3, 2]]), 2) == 0


def test_shift_layers_hand_example():
    top_in = [1.0, 0.9, 0.6, 0.3, 0.1, 0.05]
    top_out = [0.0, 0.05, 0.1, 0.2, 0.35, 0.4]
    got = M.shift_layers(top_in, top_out)
    # input_until: last layer with input >= 0.5 -> layer 2
    # output_from: 0.5 * 0.4 = 0.2 -> from layer 3 on all >= 0.2
    # crossover: output > input from layer 4 on (0.2 < 0.3 at layer 3)
    assert got == {"input_until": 2, "output_from": 3, "crossover": 4}


def test_shift_layers_requires_suffix_and_handles_never():
    # output dips below half its final value at layer 3: output_from must come after the dip
    top_in = [1.0, 0.4, 0.2, 0.6, 0.1]
    top_out = [0.0, 0.5, 0.6, 0.1, 0.5]
    got = M.shift_layers(top_in, top_out)
    assert got == {"input_until": 3, "output_from": 4, "crossover": 4}
    never = M.shift_layers([0.1, 0.2], [0.0, 0.0])
    assert never == {"input_until": None, "output_from": None, "crossover": None}


def test_mean_ci95_normal_approximation():
    sums = torch.tensor([1.0, 3.0, 2.0, 2.0])
    counts = torch.tensor([2.0, 2.0, 2.0, 2.0])
    mean, lo, hi = M.mean_ci95(sums, counts)
    # per-sequence means 0.5, 1.5, 1, 1: mean 1, sd = sqrt(1/6), se = sd / 2
    half = 1.96 * math.sqrt(1 / 6) / 2
    assert mean == pytest.approx(1.0)
    assert (lo, hi) == pytest.approx((1 - half, 1 + half))
    # sequences without positions are left out of the interval
    mean2, lo2, hi2 = M.mean_ci95(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert (mean2, lo2, hi2) == (1.0, 1.0, 1.0)
