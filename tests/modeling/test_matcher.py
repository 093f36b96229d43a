# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Hungarian matcher: cost functions against explicit loops, known assignments, bad inputs."""

import itertools
import logging
import math

import pytest
import torch

from mask_former.modeling import matcher as matcher_mod
from mask_former.modeling.matcher import (
    HungarianMatcher,
    pairwise_dice_cost,
    pairwise_sigmoid_bce_cost,
    pairwise_sigmoid_focal_cost,
)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _focal_pixel(x: float, t: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    """Sigmoid focal loss of one pixel, written out from the definition."""
    p = _sigmoid(x)
    if t == 1:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def _bce_pixel(x: float, t: float) -> float:
    p = _sigmoid(x)
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def _dice(xs, ts) -> float:
    ps = [_sigmoid(x) for x in xs]
    inter = sum(p * t for p, t in zip(ps, ts))
    return 1 - (2 * inter + 1) / (sum(ps) + sum(ts) + 1)


def _loop_cost(fn, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Q, N) matrix of fn(row of logits, row of targets) by explicit loops."""
    out = torch.zeros(logits.shape[0], targets.shape[0], dtype=torch.float64)
    for q in range(logits.shape[0]):
        for n in range(targets.shape[0]):
            out[q, n] = fn(logits[q].tolist(), targets[n].tolist())
    return out


def _mean_pixels(pixel_fn):
    return lambda xs, ts: sum(pixel_fn(x, t) for x, t in zip(xs, ts)) / len(xs)


@pytest.fixture
def small_masks():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, generator=gen, dtype=torch.float64) * 2
    targets = (torch.rand(2, 6, generator=gen) > 0.5).double()
    targets[1] = 0  # an empty target mask
    return logits, targets


def test_focal_cost_equals_loop(small_masks):
    logits, targets = small_masks
    expected = _loop_cost(_mean_pixels(_focal_pixel), logits, targets)
    torch.testing.assert_close(pairwise_sigmoid_focal_cost(logits, targets), expected)


def test_focal_cost_hand_value():
    # logit 0 -> p = 0.5; positive pixel: 0.25 * 0.5**2 * ln 2; negative: 0.75 * 0.5**2 * ln 2.
    # Mask of 2 pixels, target (1, 0): mean = (0.0625 + 0.1875) * ln 2 / 2 = 0.125 * ln 2.
    cost = pairwise_sigmoid_focal_cost(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))
    assert cost.shape == (1, 1)
    assert cost.item() == pytest.approx(0.125 * math.log(2), rel=1e-6)


def test_bce_cost_equals_loop(small_masks):
    logits, targets = small_masks
    expected = _loop_cost(_mean_pixels(_bce_pixel), logits, targets)
    torch.testing.assert_close(pairwise_sigmoid_bce_cost(logits, targets), expected)


def test_dice_cost_equals_loop(small_masks):
    logits, targets = small_masks
    expected = _loop_cost(_dice, logits, targets)
    torch.testing.assert_close(pairwise_dice_cost(logits, targets), expected)
    # Hand value: p = 0.5 everywhere, t = (1, 1, 0, 0): 1 - (2 * 1 + 1) / (2 + 2 + 1) = 0.4.
    cost = pairwise_dice_cost(torch.zeros(1, 4), torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    assert cost.item() == pytest.approx(0.4)


def _class_only_case():
    """
    Class probabilities (columns: class 0, class 1, no-object) for 3 queries, targets of
    classes (0, 1). Greedy (best pair first) takes q0->t0 (0.50) and then q1->t1 (0.02), total
    0.52; the optimum is q1->t0 (0.45) + q0->t1 (0.45) = 0.90.
    """
    probs = torch.tensor([[0.50, 0.45, 0.05], [0.45, 0.02, 0.53], [0.01, 0.01, 0.98]])
    outputs = {"pred_logits": probs.log()[None], "pred_masks": torch.zeros(1, 3, 2, 2)}
    targets = [{"labels": torch.tensor([0, 1]), "masks": torch.zeros(2, 8, 8, dtype=torch.bool)}]
    return outputs, targets


def test_matcher_optimal_not_greedy():
    outputs, targets = _class_only_case()
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=0.0, cost_dice=0.0)
    [(pred_idx, tgt_idx)] = matcher(outputs, targets)
    assert pred_idx.dtype == torch.int64 and tgt_idx.dtype == torch.int64
    assert dict(zip(pred_idx.tolist(), tgt_idx.tolist())) == {0: 1, 1: 0}


def _blocky_targets(gen: torch.Generator, num: int, size=(4, 5), scale: int = 4) -> torch.Tensor:
    """Random binary masks of `size` blown up by `scale` (so nearest-downsampling recovers them)."""
    small = torch.rand(num, *size, generator=gen) > 0.5
    return small.repeat_interleave(scale, 1).repeat_interleave(scale, 2)


def test_matcher_recovers_permutation_from_masks():
    gen = torch.Generator().manual_seed(1)
    gt = _blocky_targets(gen, 3)
    # Query q predicts target perm[q] exactly at 1/4 resolution; query 3 predicts noise.
    perm = [2, 0, 1]
    pred = torch.stack([gt[i, ::4, ::4] for i in perm] + [torch.rand(4, 5, generator=gen) > 0.5])
    outputs = {
        "pred_logits": torch.zeros(1, 4, 4),
        "pred_masks": (pred.float() * 2 - 1)[None] * 8.0,
    }
    targets = [{"labels": torch.tensor([0, 1, 2]), "masks": gt}]
    for matcher in (
        HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0),
        HungarianMatcher(cost_class=0.0, cost_mask=0.0, cost_dice=1.0),
        HungarianMatcher(cost_class=1.0, cost_mask=5.0, cost_dice=5.0, num_points=400),
    ):
        torch.manual_seed(0)
        [(pred_idx, tgt_idx)] = matcher(outputs, targets)
        assert dict(zip(pred_idx.tolist(), tgt_idx.tolist())) == {0: 2, 1: 0, 2: 1}, matcher


def _reference_grid_cost(logits, masks, labels, small_targets, weights):
    """
    (Q, N) matching cost of one image from the per-pixel definitions, in plain Python loops:
    ``w_class * -softmax(logits)[label] + w_mask * mean focal + w_dice * dice`` of the mask
    logits (Q, h, w) against targets already at (h, w).
    """
    w_class, w_mask, w_dice = weights
    pred, small = masks.flatten(1).tolist(), small_targets.double().flatten(1).tolist()
    cost = torch.zeros(len(pred), len(small), dtype=torch.float64)
    for q, row in enumerate(logits.tolist()):
        prob = [math.exp(v) / sum(math.exp(u) for u in row) for v in row]
        for n, label in enumerate(labels.tolist()):
            focal = sum(_focal_pixel(x, t) for x, t in zip(pred[q], small[n])) / len(pred[q])
            dice = _dice(pred[q], small[n])
            cost[q, n] = -w_class * prob[label] + w_mask * focal + w_dice * dice
    return cost


def test_grid_costs_use_nearest_downsampled_targets():
    gen = torch.Generator().manual_seed(2)
    # Targets at 8x12 whose pixels differ inside every 4x4 block, so that nearest
    # downsampling (keeping pixel (4i, 4j)) differs from any averaging.
    gt = torch.rand(2, 8, 12, generator=gen) > 0.5
    logits = torch.randn(3, 5, generator=gen)
    masks = torch.randn(3, 2, 3, generator=gen)
    labels = torch.tensor([4, 1])
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=20.0, cost_dice=3.0)
    outputs = {"pred_logits": logits[None], "pred_masks": masks[None]}
    [cost] = matcher.cost_matrices(outputs, [{"labels": labels, "masks": gt}])
    assert cost.dtype == torch.float32 and cost.shape == (3, 2)
    expected = _reference_grid_cost(logits, masks, labels, gt[:, ::4, ::4], (2.0, 20.0, 3.0))
    torch.testing.assert_close(cost.double(), expected, rtol=1e-5, atol=1e-5)


def test_matcher_empty_targets_and_batch():
    outputs, targets = _class_only_case()
    outputs = {k: torch.cat([v, v]) for k, v in outputs.items()}
    targets = [
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8)},
        targets[0],
    ]
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)
    (p0, t0), (p1, t1) = matcher(outputs, targets)
    assert p0.numel() == 0 and t0.numel() == 0 and p0.dtype == torch.int64
    assert sorted(t1.tolist()) == [0, 1] and len(p1) == 2


def test_matcher_survives_nan_and_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(matcher_mod, "_warned_non_finite", False)
    gen = torch.Generator().manual_seed(3)
    gt = _blocky_targets(gen, 1)
    pred_masks = torch.randn(1, 3, 4, 5, generator=gen)
    pred_masks[0, 0] = float("nan")  # query 0: NaN mask
    pred_logits = torch.randn(1, 3, 3, generator=gen)
    pred_logits[0, 1, 0] = float("inf")  # query 1: softmax gives NaN
    outputs = {"pred_logits": pred_logits, "pred_masks": pred_masks}
    targets = [{"labels": torch.tensor([1]), "masks": gt}]
    with caplog.at_level(logging.WARNING, logger=matcher_mod.__name__):
        for num_points in (0, 50):
            matcher = HungarianMatcher(
                cost_class=1.0, cost_mask=20.0, cost_dice=1.0, num_points=num_points
            )
            [(pred_idx, tgt_idx)] = matcher(outputs, targets)
            # The only query with finite costs wins.
            assert pred_idx.tolist() == [2] and tgt_idx.tolist() == [0]
    warnings = [r for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 1


def test_matcher_all_nan_still_returns_full_assignment(monkeypatch):
    monkeypatch.setattr(matcher_mod, "_warned_non_finite", True)
    outputs = {
        "pred_logits": torch.full((1, 4, 3), float("nan")),
        "pred_masks": torch.full((1, 4, 2, 2), float("nan")),
    }
    targets = [{"labels": torch.tensor([0, 1]), "masks": torch.ones(2, 8, 8)}]
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)
    [(pred_idx, tgt_idx)] = matcher(outputs, targets)
    assert len(set(pred_idx.tolist())) == 2 and sorted(tgt_idx.tolist()) == [0, 1]


def test_matcher_rejects_bad_config_and_batch():
    with pytest.raises(ValueError, match="all 0"):
        HungarianMatcher(cost_class=0, cost_mask=0, cost_dice=0)
    with pytest.raises(ValueError, match="num_points"):
        HungarianMatcher(num_points=-1)
    outputs, targets = _class_only_case()
    with pytest.raises(ValueError, match="2 targets for a batch of 1"):
        HungarianMatcher()(outputs, targets * 2)


def test_batched_grid_matching_is_the_optimum_of_each_image():
    """
    Training computes the grid costs of all images at once, on targets padded to the largest
    N: each image's costs must equal its own per-pixel costs (computed here in loops), whatever
    its N (3, 0, 5, 1 here), and its assignment the brute-force optimum of those costs.
    """
    gen = torch.Generator().manual_seed(5)
    num_queries, num_classes, sizes = 7, 4, (3, 0, 5, 1)
    outputs = {
        "pred_logits": torch.randn(len(sizes), num_queries, num_classes + 1, generator=gen),
        "pred_masks": torch.randn(len(sizes), num_queries, 6, 5, generator=gen) * 3,
    }
    targets = [
        {
            "labels": torch.randint(num_classes, (n,), generator=gen),
            "masks": torch.rand(n, 24, 20, generator=gen) > 0.6,
        }
        for n in sizes
    ]
    weights = (2.0, 20.0, 1.0)
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=20.0, cost_dice=1.0)
    costs = matcher.cost_matrices(outputs, targets)
    matches = matcher(outputs, targets)
    for b, target in enumerate(targets):
        expected = _reference_grid_cost(
            outputs["pred_logits"][b],
            outputs["pred_masks"][b],
            target["labels"],
            target["masks"][:, ::4, ::4],  # 24x20 -> 6x5: nearest keeps pixel (4i, 4j)
            weights,
        )
        torch.testing.assert_close(costs[b].double(), expected, rtol=1e-5, atol=1e-5)
        pred_idx, tgt_idx = matches[b]
        assert len(pred_idx) == sizes[b] and sorted(tgt_idx.tolist()) == list(range(sizes[b]))
        got = dict(zip(tgt_idx.tolist(), pred_idx.tolist()))
        assert got == _brute_force_assignment(expected), b


def _brute_force_assignment(cost: torch.Tensor) -> dict:
    """{target: query} minimising the total cost over all injective assignments."""
    num_queries, num_targets = cost.shape
    best = min(
        itertools.permutations(range(num_queries), num_targets),
        key=lambda queries: sum(cost[q, n].item() for n, q in enumerate(queries)),
    )
    return dict(enumerate(best))


@pytest.mark.parametrize(
    "size, small", [((37, 53), (10, 13)), ((24, 32), (6, 8)), ((5, 9), (7, 4))]
)
def test_bool_masks_are_downsampled_like_float_ones(size, small):
    # Bool masks are resampled as uint8, without a float copy at full resolution: the same
    # pixels must be kept as by the float path, also for non-integer ratios.
    gen = torch.Generator().manual_seed(6)
    masks = torch.rand(3, *size, generator=gen) > 0.5
    like = torch.zeros((), dtype=torch.float64)
    got = matcher_mod._downsample(masks, small, like)
    expected = torch.nn.functional.interpolate(masks[:, None].double(), small, mode="nearest")
    assert got.dtype == torch.float64
    assert got.equal(expected.flatten(1))
    assert matcher_mod._downsample(masks.double(), small, like).equal(got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_binary_cross_entropies_equal_softplus(dtype):
    logits = torch.cat([torch.linspace(-30, 30, 601), torch.tensor([-1e3, -100.0, 100.0, 1e3])])
    logits = logits.to(dtype)
    bce_pos, bce_neg = matcher_mod._binary_cross_entropies(logits)
    softplus = torch.nn.functional.softplus
    # F.softplus returns x itself above 20, off by up to exp(-20) = 2.1e-9.
    tol = {"rtol": 2e-6, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 3e-9}
    torch.testing.assert_close(bce_pos, softplus(-logits), **tol)
    torch.testing.assert_close(bce_neg, softplus(logits), **tol)
