# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""NaN/inf predictions never crash the matcher, and every iteration's count reaches the log."""

import torch
from detectron2.utils.events import EventStorage

from mask_former.modeling.matcher import HungarianMatcher


def _outputs_and_targets():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn((2, 4, 3), generator=g)
    masks = torch.randn((2, 4, 6, 8), generator=g)
    targets = [
        {"labels": torch.tensor([0, 1]), "masks": torch.rand((2, 12, 16), generator=g) > 0.5},
        {"labels": torch.tensor([1]), "masks": torch.rand((1, 12, 16), generator=g) > 0.5},
    ]
    return logits, masks, targets


def test_non_finite_predictions_are_matched_and_counted_per_iteration():
    logits, masks, targets = _outputs_and_targets()
    masks[0, 1] = float("nan")  # query 1 of image 0: all its costs (2 targets) are NaN
    logits[1, 2, 0] = float("inf")  # query 2 of image 1: its class cost is NaN
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)
    with EventStorage(start_iter=3) as storage:
        indices = matcher({"pred_logits": logits, "pred_masks": masks}, targets)
        # Two layers' matching in one iteration add up; the count is per iteration.
        matcher({"pred_logits": logits, "pred_masks": masks}, targets)
        assert storage.latest()["matcher/non_finite_costs"] == (2 * (2 + 1), 3)
        storage.step()
        matcher({"pred_logits": logits, "pred_masks": masks}, targets)
        assert storage.latest()["matcher/non_finite_costs"] == (2 + 1, 4)
    # Valid one-to-one assignments that avoid the broken queries.
    (p0, t0), (p1, t1) = indices
    assert sorted(t0.tolist()) == [0, 1] and 1 not in p0.tolist()
    assert t1.tolist() == [0] and p1.tolist() != [2]


def test_finite_predictions_write_no_count():
    logits, masks, targets = _outputs_and_targets()
    with EventStorage() as storage:
        HungarianMatcher()({"pred_logits": logits, "pred_masks": masks}, targets)
        assert "matcher/non_finite_costs" not in storage.latest()
