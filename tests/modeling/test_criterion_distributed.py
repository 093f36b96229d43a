# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Two workers (gloo), one image each, give the losses and the (DDP-averaged) gradients of one
process with both images: the class loss is a weighted mean over ALL workers' queries and the
mask losses share one normaliser, also when a worker's image has no segment at all.
"""

import os

import pytest
import torch

from mask_former.engine import launch
from mask_former.modeling.criterion import SetCriterion
from mask_former.modeling.matcher import HungarianMatcher

NUM_CLASSES, QUERIES = 4, 5


def _batch(num_segments):
    """Outputs (leaf tensors) and targets of images with the given numbers of segments."""
    g = torch.Generator().manual_seed(7)
    logits = torch.randn((len(num_segments), QUERIES, NUM_CLASSES + 1), generator=g)
    masks = torch.randn((len(num_segments), QUERIES, 6, 8), generator=g)
    targets = [
        {
            "labels": torch.randint(0, NUM_CLASSES, (n,), generator=g),
            "masks": torch.rand((n, 24, 32), generator=g) > 0.5,
        }
        for n in num_segments
    ]
    return logits.requires_grad_(), masks.requires_grad_(), targets


def _criterion():
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)
    return SetCriterion(num_classes=NUM_CLASSES, matcher=matcher, no_object_weight=0.1)


def _losses_and_grads(logits, masks, targets):
    losses = _criterion()({"pred_logits": logits, "pred_masks": masks}, targets)
    sum(losses.values()).backward()
    return {k: v.item() for k, v in losses.items()}, logits.grad, masks.grad


def _one_image_per_worker(num_segments, out_dir):
    rank = torch.distributed.get_rank()
    logits, masks, targets = _batch(num_segments)
    mine = slice(rank, rank + 1)
    losses, g_logits, g_masks = _losses_and_grads(
        logits[mine].detach().requires_grad_(),
        masks[mine].detach().requires_grad_(),
        targets[mine],
    )
    torch.save((losses, g_logits, g_masks), os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.parametrize("num_segments", [(3, 1), (2, 0)], ids=["uneven", "empty-shard"])
def test_two_workers_equal_one_process(tmp_path, num_segments):
    launch(_one_image_per_worker, 2, args=(num_segments, str(tmp_path)), use_cpu=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    losses, g_logits, g_masks = _losses_and_grads(*_batch(num_segments))
    for name, value in losses.items():
        mean_over_workers = sum(r[0][name] for r in ranks) / 2  # what detectron2 logs
        assert mean_over_workers == pytest.approx(value, rel=1e-6, abs=1e-7), name
    for rank, (worker_losses, worker_g_logits, worker_g_masks) in enumerate(ranks):
        assert all(torch.isfinite(torch.tensor(v)) for v in worker_losses.values())
        # DDP averages the workers' gradients: each worker's gradient / 2.
        torch.testing.assert_close(worker_g_logits / 2, g_logits[rank : rank + 1])
        torch.testing.assert_close(worker_g_masks / 2, g_masks[rank : rank + 1])
