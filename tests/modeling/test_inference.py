# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Semantic, panoptic and instance inference on hand-built queries and against explicit loops."""

import math

import torch

from mask_former.modeling import instance_inference, panoptic_inference, semantic_inference

BIG = 10.0  # a logit whose sigmoid / softmax share is ~1


def _onehot_logits(rows):
    """(Q, K + 1) class logits: BIG on the given class of each query, 0 elsewhere."""
    num_classes, labels = rows
    logits = torch.zeros((len(labels), num_classes + 1))
    for q, label in enumerate(labels):
        logits[q, label] = BIG
    return logits


def test_semantic_inference_equals_explicit_loop():
    g = torch.Generator().manual_seed(0)
    mask_cls = torch.randn((3, 5), generator=g)
    mask_pred = torch.randn((3, 4, 6), generator=g)
    got = semantic_inference(mask_cls, mask_pred)
    assert got.shape == (4, 4, 6)
    for k in range(4):
        for y in range(4):
            for x in range(6):
                total = 0.0
                for q in range(3):
                    exps = [math.exp(v) for v in mask_cls[q].tolist()]
                    prob = exps[k] / sum(exps)
                    total += prob / (1 + math.exp(-mask_pred[q, y, x].item()))
                assert abs(got[k, y, x].item() - total) < 1e-5


def test_panoptic_thing_and_merged_stuff():
    # 2x4 image; classes 0..2 with 0 a thing; class 3 is "no object".
    # q0 thing on columns 0-1, q1 and q2 the same stuff class on columns 2 and 3, q3 no-object.
    mask_cls = _onehot_logits((3, [0, 2, 2, 3]))
    mask_pred = torch.full((4, 2, 4), -BIG)
    mask_pred[0, :, 0:2] = BIG
    mask_pred[1, :, 2] = BIG
    mask_pred[2, :, 3] = BIG
    mask_pred[3] = BIG  # would own everything if no-object queries were kept
    seg, info = panoptic_inference(mask_cls, mask_pred, {0}, 0.0, 0.0)
    assert seg.dtype == torch.int32
    assert seg.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2]]
    assert info == [
        {"id": 1, "isthing": True, "category_id": 0},
        {"id": 2, "isthing": False, "category_id": 2},
    ]


def test_panoptic_two_things_of_one_class_stay_apart():
    mask_cls = _onehot_logits((3, [0, 0]))
    mask_pred = torch.full((2, 1, 4), -BIG)
    mask_pred[0, :, :2] = BIG
    mask_pred[1, :, 2:] = BIG
    seg, info = panoptic_inference(mask_cls, mask_pred, {0}, 0.0, 0.0)
    assert seg.tolist() == [[1, 1, 2, 2]]
    assert [s["id"] for s in info] == [1, 2] and all(s["isthing"] for s in info)


def test_panoptic_overlap_and_score_filtering():
    # q0: stuff class 1 with probability e^2 / (e^2 + 3) = 0.711, own mask = all 8 pixels.
    # q1: thing class 0 with probability ~1 on 6 pixels: it owns them (1 > 0.711), so q0 keeps
    #     2 / 8 = 0.25 of its mask < overlap 0.5 and is dropped; its 2 pixels stay void (0).
    # q2: class 2 with probability e^1 / (e^1 + 3) = 0.475 < object threshold 0.5: dropped.
    mask_cls = torch.zeros((3, 4))
    mask_cls[0, 1] = 2.0
    mask_cls[1, 0] = BIG
    mask_cls[2, 2] = 1.0
    mask_pred = torch.full((3, 2, 4), -BIG)
    mask_pred[0] = BIG
    mask_pred[1, :, :3] = BIG
    mask_pred[2] = 2 * BIG
    seg, info = panoptic_inference(mask_cls, mask_pred, {0}, 0.5, 0.5)
    assert seg.tolist() == [[1, 1, 1, 0], [1, 1, 1, 0]]
    assert info == [{"id": 1, "isthing": True, "category_id": 0}]
    # With a lower overlap threshold q0 keeps its 2 pixels, as segment 1 (ids follow queries).
    seg, info = panoptic_inference(mask_cls, mask_pred, {0}, 0.5, 0.2)
    assert seg.tolist() == [[2, 2, 2, 1], [2, 2, 2, 1]]
    assert [(s["id"], s["category_id"], s["isthing"]) for s in info] == [
        (1, 1, False),
        (2, 0, True),
    ]


def test_panoptic_query_without_own_mask_is_dropped():
    # q0 owns pixel 1 by argmax but its sigmoid never reaches 0.5: original area 0 -> dropped.
    mask_cls = _onehot_logits((2, [0, 1]))
    mask_pred = torch.tensor([[[-1.0, -1.0]], [[BIG, -BIG]]])
    seg, info = panoptic_inference(mask_cls, mask_pred, set(), 0.0, 0.0)
    assert seg.tolist() == [[1, 0]]
    assert info == [{"id": 1, "isthing": False, "category_id": 1}]


def test_panoptic_nothing_kept_gives_all_void():
    mask_cls = _onehot_logits((3, [3, 3]))  # both "no object"
    seg, info = panoptic_inference(mask_cls, torch.full((2, 3, 5), BIG), {0}, 0.0, 0.0)
    assert seg.shape == (3, 5) and seg.dtype == torch.int32
    assert not seg.any() and info == []
    # Also when every real query is below the object threshold.
    seg, info = panoptic_inference(torch.zeros((2, 4)), torch.full((2, 3, 5), BIG), {0}, 0.9, 0.0)
    assert not seg.any() and info == []


def _explicit_instances(mask_cls, mask_pred, topk, thing_ids=None):
    """Top-k (query, class) pairs by an explicit sort; returns sorted (score, class) tuples."""
    num_classes = mask_cls.shape[1] - 1
    probs = torch.softmax(mask_cls.double(), -1)
    pairs = sorted(
        ((probs[q, k].item(), q, k) for q in range(mask_cls.shape[0]) for k in range(num_classes)),
        reverse=True,
    )[:topk]
    out = []
    for prob, q, k in pairs:
        if thing_ids is not None and k not in thing_ids:
            continue
        binary = mask_pred[q].double() > 0
        sig = torch.sigmoid(mask_pred[q].double())
        mask_score = (sig * binary).sum().item() / (binary.sum().item() + 1e-6)
        out.append((round(prob * mask_score, 5), k, q))
    return sorted(out)


def test_instance_topk_against_explicit_sort():
    g = torch.Generator().manual_seed(1)
    mask_cls = torch.randn((4, 4), generator=g)  # Q = 4, K = 3
    mask_pred = torch.randn((4, 5, 6), generator=g)
    for thing_ids in (None, {0, 2}):
        result = instance_inference(mask_cls, mask_pred, 5, thing_ids=thing_ids)
        assert result.image_size == (5, 6)
        expected = _explicit_instances(mask_cls, mask_pred, 5, thing_ids)
        assert len(result) == len(expected) > 0
        got = []
        for score, cls, mask in zip(result.scores, result.pred_classes, result.pred_masks):
            # Identify the query by its binary mask.
            q = next(i for i in range(4) if torch.equal(mask, (mask_pred[i] > 0).float()))
            got.append((round(score.item(), 5), cls.item(), q))
        assert sorted(got) == expected
        assert result.pred_boxes.tensor.shape == (len(expected), 4)


def test_instance_topk_is_capped_by_number_of_pairs():
    result = instance_inference(torch.zeros((2, 3)), torch.zeros((2, 4, 4)), 100)
    assert len(result) == 2 * 2
