# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Inference from MaskFormer's (class, mask) pairs of one image to semantic, panoptic and
instance segmentation. Plain functions of tensors and plain arguments; nothing here reads a
global catalog.

Shape shorthand in this module:

    Q: number of queries
    K: number of classes; class logits have K + 1 entries, the last one is "no object"
    H, W: height and width of the mask logits (the output resolution)
"""

from typing import Dict, List, Optional, Set, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances

__all__ = ["semantic_inference", "panoptic_inference", "instance_inference"]


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """
    Per-pixel class scores: ``semseg[k, h, w] = sum_q softmax(mask_cls[q])[k] *
    sigmoid(mask_pred[q, h, w])`` over the K real classes (the no-object probability is
    dropped, so scores are not normalised and may exceed 1).

    Args:
        mask_cls: (Q, K + 1) class logits.
        mask_pred: (Q, H, W) mask logits.
    Returns:
        (K, H, W) class scores.
    """
    probs = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("qk,qhw->khw", probs, mask_pred.sigmoid())


def panoptic_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    thing_ids: Set[int],
    object_mask_threshold: float,
    overlap_threshold: float,
) -> Tuple[torch.Tensor, List[Dict]]:
    """
    MaskFormer's panoptic inference. Queries predicting "no object", or whose best class
    probability is not above ``object_mask_threshold``, are dropped. Every pixel goes to the
    kept query with the highest ``probability * sigmoid(mask)``. A query becomes a segment if
    it owns at least one pixel, its own mask (sigmoid >= 0.5) is not empty, and the owned area
    is at least ``overlap_threshold`` of its own mask area. Queries of the same stuff class
    share one segment. Segment ids count from 1 in query order; 0 is void.

    Args:
        mask_cls: (Q, K + 1) class logits.
        mask_pred: (Q, H, W) mask logits.
        thing_ids: contiguous class ids that are things (all others are stuff).
        object_mask_threshold: minimum class probability of a kept query (exclusive).
        overlap_threshold: minimum owned / own-mask area ratio of a segment.
    Returns:
        panoptic_seg: (H, W) int32 segment ids.
        segments_info: one dict per segment: {"id", "isthing", "category_id"}.
    """
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    scores, labels, masks = scores[keep], labels[keep], mask_pred[keep].sigmoid()

    panoptic_seg = torch.zeros(mask_pred.shape[-2:], dtype=torch.int32, device=mask_pred.device)
    segments_info: List[Dict] = []
    if masks.shape[0] == 0:
        return panoptic_seg, segments_info

    owner = (scores.view(-1, 1, 1) * masks).argmax(0)
    stuff_segment_id: Dict[int, int] = {}
    for k, category_id in enumerate(labels.tolist()):
        owned = owner == k
        owned_area = owned.sum().item()
        own_area = (masks[k] >= 0.5).sum().item()
        if owned_area == 0 or own_area == 0 or owned_area / own_area < overlap_threshold:
            continue
        isthing = category_id in thing_ids
        if not isthing and category_id in stuff_segment_id:
            # Another query of this stuff class already made a segment: extend it.
            panoptic_seg[owned] = stuff_segment_id[category_id]
            continue
        segment_id = len(segments_info) + 1
        if not isthing:
            stuff_segment_id[category_id] = segment_id
        panoptic_seg[owned] = segment_id
        segments_info.append({"id": segment_id, "isthing": isthing, "category_id": category_id})
    return panoptic_seg, segments_info


def instance_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    topk: int,
    thing_ids: Optional[Set[int]] = None,
) -> Instances:
    """
    Mask2Former's instance inference: the ``topk`` highest (query, class) probabilities over
    all Q x K pairs (not sorted), each giving one instance with the query's mask.

    Args:
        mask_cls: (Q, K + 1) class logits.
        mask_pred: (Q, H, W) mask logits.
        topk: number of (query, class) pairs kept (at most Q * K).
        thing_ids: if given, pairs whose class is not in it are dropped after the top-k.
    Returns:
        Instances of image size (H, W) with ``pred_masks`` (N, H, W) float 0/1 (logit > 0),
        ``pred_boxes`` (all zeros: boxes from masks are not computed), ``scores`` (N,) =
        class probability x mean mask probability inside the binary mask, and
        ``pred_classes`` (N,) int64.
    """
    num_queries, num_classes = mask_cls.shape[0], mask_cls.shape[-1] - 1
    probs = F.softmax(mask_cls, dim=-1)[:, :-1]
    scores, flat_idx = probs.flatten().topk(min(topk, num_queries * num_classes), sorted=False)
    classes = flat_idx % num_classes
    masks = mask_pred[torch.div(flat_idx, num_classes, rounding_mode="floor")]
    if thing_ids is not None:
        keep = torch.tensor(
            [c in thing_ids for c in classes.tolist()], dtype=torch.bool, device=classes.device
        )
        scores, classes, masks = scores[keep], classes[keep], masks[keep]

    result = Instances(tuple(mask_pred.shape[-2:]))
    binary = (masks > 0).float()
    result.pred_masks = binary
    result.pred_boxes = Boxes(torch.zeros(masks.shape[0], 4, device=masks.device))
    mask_scores = (masks.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (
        binary.flatten(1).sum(1) + 1e-6
    )
    result.scores = scores * mask_scores
    result.pred_classes = classes
    return result
