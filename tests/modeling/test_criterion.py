# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""SetCriterion and its losses: hand-computed values, edge cases, point sampling, distributed."""

import math
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
import yaml
from model_testing import tiny_swin_cfg

from mask_former.modeling.criterion import (
    SetCriterion,
    average_num_masks,
    dice_loss,
    sigmoid_bce_loss,
    sigmoid_focal_loss,
)
from mask_former.modeling.mask_losses import stack_target_masks
from mask_former.modeling.matcher import HungarianMatcher
from tests.paths import TINY_SWIN_SEMANTIC as FIXTURE


class FixedMatcher(torch.nn.Module):
    """Returns preset (prediction, target) indices, to test the losses apart from matching."""

    def __init__(self, indices):
        super().__init__()
        self.indices = [
            (torch.tensor(p, dtype=torch.int64), torch.tensor(t, dtype=torch.int64))
            for p, t in indices
        ]
        self.calls = 0

    def forward(self, outputs, targets):
        self.calls += 1
        return self.indices


def _matcher(cost_class, cost_mask, cost_dice, num_points=0):
    return HungarianMatcher(
        cost_class=cost_class, cost_mask=cost_mask, cost_dice=cost_dice, num_points=num_points
    )


def _criterion(matcher, num_classes=4, no_object_weight=0.1, **kwargs):
    """A criterion with unit loss weights (unless given): its losses are the plain formulas."""
    return SetCriterion(
        num_classes=num_classes, matcher=matcher, no_object_weight=no_object_weight, **kwargs
    )


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_sigmoid_focal_loss_hand_values():
    # Pixel (x=0, t=1): p_t = 0.5, BCE = ln 2, (1-p_t)^2 = 0.25, alpha_t = 0.25 -> ln2 / 16.
    # Pixel (x=0, t=0): same but alpha_t = 0.75 -> 3 ln2 / 16.
    # Pixel (x=ln 3, t=1): p = 0.75, BCE = ln(4/3), (0.25)^2 = 1/16, alpha 0.25 -> ln(4/3) / 64.
    # Pixel (x=ln 3, t=0): p = 0.75, BCE = ln 4, 0.75^2, alpha 0.75 -> 0.421875 ln 4.
    logits = torch.tensor([[0.0, 0.0], [math.log(3), math.log(3)]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    mask0 = (math.log(2) / 16 + 3 * math.log(2) / 16) / 2
    mask1 = (math.log(4 / 3) / 64 + 0.421875 * math.log(4)) / 2
    loss = sigmoid_focal_loss(logits, targets, num_masks=4.0)
    assert loss.item() == pytest.approx((mask0 + mask1) / 4, rel=1e-6)


def test_sigmoid_bce_loss_hand_values():
    # Mask 0: (ln 2 + ln 2) / 2; mask 1: (ln(4/3) + ln 4) / 2; divided by num_masks = 2.
    logits = torch.tensor([[0.0, 0.0], [math.log(3), math.log(3)]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    expected = (math.log(2) + (math.log(4 / 3) + math.log(4)) / 2) / 2
    assert sigmoid_bce_loss(logits, targets, 2.0).item() == pytest.approx(expected, rel=1e-6)


def test_dice_loss_hand_values():
    # Mask 0: p = 0.5 x 4, t = (1,1,0,0): 1 - (2*1 + 1) / (2 + 2 + 1) = 0.4.
    # Mask 1: p = (0.75, 0.25, 0.75, 0.25), t = (1,0,0,0): 1 - (1.5 + 1) / (2 + 1 + 1) = 0.375.
    x = math.log(3)
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [x, -x, x, -x]])
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert dice_loss(logits, targets, 3.0).item() == pytest.approx((0.4 + 0.375) / 3, rel=1e-6)


def _toy_batch(seed: int = 0, num_classes: int = 4):
    """2 images, Q=5 queries, masks 3x4 predicted for 12x16 targets (3 and 1 segments)."""
    gen = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(2, 5, num_classes + 1, generator=gen),
        "pred_masks": torch.randn(2, 5, 3, 4, generator=gen) * 3,
    }
    targets = [
        {"labels": torch.tensor([2, 0, 2]), "masks": torch.rand(3, 12, 16, generator=gen) > 0.5},
        {"labels": torch.tensor([3]), "masks": torch.rand(1, 12, 16, generator=gen) > 0.5},
    ]
    return outputs, targets


def test_ce_uses_no_object_weight():
    outputs, targets = _toy_batch()
    crit = _criterion(FixedMatcher(TOY_INDICES), losses=("labels",))
    assert crit.empty_weight.tolist() == pytest.approx([1, 1, 1, 1, 0.1])
    assert "empty_weight" in crit.state_dict()
    losses = crit(outputs, targets)
    assert set(losses) == {"loss_ce"}
    assert losses["loss_ce"].item() == pytest.approx(_hand_ce(outputs), rel=1e-5)


# Classes per query of _toy_batch under TOY_INDICES: unmatched -> 4 (no object).
TOY_INDICES = [([4, 1, 2], [0, 2, 1]), ([0], [0])]
TOY_CLASSES = [[4, 2, 0, 4, 2], [3, 4, 4, 4, 4]]


def _hand_ce(outputs, no_object_weight=0.1):
    """Weighted mean of the per-query NLL, written out with math.log / math.exp."""
    num, den = 0.0, 0.0
    for b in range(2):
        for q in range(5):
            row = outputs["pred_logits"][b, q].tolist()
            c = TOY_CLASSES[b][q]
            nll = -(row[c] - math.log(sum(math.exp(v) for v in row)))
            w = no_object_weight if c == 4 else 1.0
            num, den = num + w * nll, den + w
    return num / den


def _upsampled_focal_and_dice(outputs, targets, indices):
    """Independent full-resolution mask losses: explicit per-pixel formulas over matched pairs."""
    focal, dice, count = 0.0, 0.0, sum(len(t["labels"]) for t in targets)
    for b, (pred_idx, tgt_idx) in enumerate(indices):
        for q, n in zip(pred_idx, tgt_idx):
            up = F.interpolate(
                outputs["pred_masks"][b, q][None, None].double(),
                size=targets[b]["masks"].shape[-2:],
                mode="bilinear",
                align_corners=False,
            ).flatten()
            t = targets[b]["masks"][n].double().flatten()
            p = up.sigmoid()
            ce = -(t * p.log() + (1 - t) * (1 - p).log())
            p_t = p * t + (1 - p) * (1 - t)
            alpha_t = 0.25 * t + 0.75 * (1 - t)
            focal += (alpha_t * (1 - p_t) ** 2 * ce).mean().item()
            dice += 1 - (2 * (p * t).sum().item() + 1) / (p.sum().item() + t.sum().item() + 1)
    return focal / count, dice / count


def test_full_resolution_mask_losses_match_explicit_computation():
    outputs, targets = _toy_batch()
    indices = [([4, 1, 2], [0, 2, 1]), ([0], [0])]
    crit = _criterion(FixedMatcher(indices), losses=("masks",))
    losses = crit(outputs, targets)
    focal, dice = _upsampled_focal_and_dice(outputs, targets, indices)
    assert set(losses) == {"loss_mask", "loss_dice"}
    assert losses["loss_mask"].item() == pytest.approx(focal, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(dice, rel=1e-5)


def test_losses_are_returned_weighted_in_every_layer():
    """
    The criterion owns the loss weights: each loss, of the last layer and of every aux layer,
    is its own weight times the value of the plain formulas (computed here by hand).
    """
    outputs, targets = _toy_batch()
    outputs["aux_outputs"] = [_toy_batch(seed=1)[0]]
    weights = {"loss_ce": 2.0, "loss_mask": 20.0, "loss_dice": 3.0}
    crit = _criterion(
        FixedMatcher(TOY_INDICES),
        no_object_weight=0.25,
        class_weight=2.0,
        mask_weight=20.0,
        dice_weight=3.0,
        num_aux_layers=1,
    )
    assert crit.loss_weight == {**weights, **{f"{k}_0": v for k, v in weights.items()}}
    losses = crit(outputs, targets)
    assert set(losses) == set(crit.loss_weight)
    for suffix, layer in (("", outputs), ("_0", outputs["aux_outputs"][0])):
        focal, dice = _upsampled_focal_and_dice(layer, targets, TOY_INDICES)
        hand = {"loss_ce": _hand_ce(layer, 0.25), "loss_mask": focal, "loss_dice": dice}
        for name, value in hand.items():
            got = losses[name + suffix].item()
            assert got == pytest.approx(weights[name] * value, rel=1e-5), name + suffix


def test_criterion_and_matcher_from_config():
    cfg = tiny_swin_cfg(
        **{
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 6,
            "MODEL.MASK_FORMER.CLASS_WEIGHT": 2.0,
            "MODEL.MASK_FORMER.MASK_WEIGHT": 20.0,
            "MODEL.MASK_FORMER.DICE_WEIGHT": 3.0,
            "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT": 0.25,
            "MODEL.MASK_FORMER.DEC_LAYERS": 3,
            "MODEL.MASK_FORMER.DEEP_SUPERVISION": True,
            "MODEL.MASK_FORMER.TRAIN_NUM_POINTS": 0,
        }
    )
    crit = SetCriterion(cfg)
    assert crit.num_classes == 6 and crit.num_aux_layers == 2 and crit.num_points == 0
    assert crit.empty_weight.tolist() == [1, 1, 1, 1, 1, 1, 0.25]
    base = {"loss_ce": 2.0, "loss_mask": 20.0, "loss_dice": 3.0}
    expected = dict(base)
    for i in (0, 1):
        expected.update({f"{k}_{i}": v for k, v in base.items()})
    assert crit.loss_weight == expected
    matcher = crit.matcher
    assert isinstance(matcher, HungarianMatcher)
    assert (matcher.cost_class, matcher.cost_mask, matcher.cost_dice) == (2.0, 20.0, 3.0)
    assert matcher.num_points == 0
    # Without deep supervision only the last layer has losses; keyword overrides of a cfg.
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = False
    crit = SetCriterion(cfg, num_points=7, oversample_ratio=2.0)
    assert crit.loss_weight == base and crit.num_aux_layers == 0
    assert crit.num_points == 7 and crit.oversample_ratio == 2.0
    assert HungarianMatcher(cfg, num_points=5).num_points == 5


def test_aux_outputs_get_suffixed_losses_and_own_matching():
    outputs, targets = _toy_batch()
    aux = [_toy_batch(seed=s)[0] for s in (1, 2)]
    outputs["aux_outputs"] = aux
    matcher = FixedMatcher([([4, 1, 2], [0, 2, 1]), ([0], [0])])
    crit = _criterion(matcher, num_aux_layers=2)
    losses = crit(outputs, targets)
    names = {"loss_ce", "loss_mask", "loss_dice"}
    assert set(losses) == names | {f"{n}_{i}" for n in names for i in (0, 1)}
    assert matcher.calls == 3
    alone = _criterion(matcher)(aux[1], targets)
    for name in names:
        assert losses[f"{name}_1"].item() == pytest.approx(alone[name].item(), rel=1e-6)


def _perfect_case():
    """
    One image, K = 2, two targets at 24 x 32 and 4 queries at 6 x 8: queries 0 and 1 predict
    targets 1 and 0 with logits of +-100, queries 2 and 3 predict "no object". Targets vary
    along one axis only (stripes of 4 pixels), so that the bilinear upsampling of the
    predictions keeps every pixel on the right side with |logit| >= 25 (a corner of a mask would
    not: there bilinear interpolation mixes three cells of the other sign).
    """
    gen = torch.Generator().manual_seed(4)
    cols = (torch.rand(8, generator=gen) > 0.5).repeat_interleave(4).expand(24, 32)
    rows = (torch.rand(6, generator=gen) > 0.5).repeat_interleave(4)[:, None].expand(24, 32)
    gt = torch.stack([cols, rows])
    logits = torch.full((1, 4, 3), -100.0)
    logits[0, 0, 1] = logits[0, 1, 0] = 100.0  # query 0 -> class 1, query 1 -> class 0
    logits[0, 2:, 2] = 100.0  # queries 2, 3 -> no object
    masks = torch.full((1, 4, 6, 8), -100.0)
    masks[0, 0] = gt[1, ::4, ::4].float() * 200 - 100
    masks[0, 1] = gt[0, ::4, ::4].float() * 200 - 100
    outputs = {"pred_logits": logits, "pred_masks": masks}
    return outputs, [{"labels": torch.tensor([0, 1]), "masks": gt}]


def test_perfect_prediction_gives_near_zero_losses():
    outputs, targets = _perfect_case()
    crit = _criterion(_matcher(1.0, 20.0, 1.0), num_classes=2)
    losses = crit(outputs, targets)
    for name, value in losses.items():
        assert 0 <= value.item() < 1e-4, name
    # Sanity: the same masks given to the wrong targets are far from zero.
    bad = _criterion(FixedMatcher([([0, 1], [0, 1])]), num_classes=2)
    assert bad(outputs, targets)["loss_dice"].item() > 0.1


def test_perfect_prediction_point_sampled():
    # Point sampling interpolates the targets bilinearly, so points near a mask edge get soft
    # targets and the BCE cannot reach 0 there (importance sampling would even pick exactly
    # those points, so uniform points are used); away from edges it is ~0, so the loss stays
    # far below that of a wrong assignment, and the point matcher finds the right one.
    torch.manual_seed(0)
    outputs, targets = _perfect_case()
    kwargs = dict(num_points=500, oversample_ratio=3.0, importance_sample_ratio=0.0)
    matcher = _matcher(2.0, 5.0, 5.0, num_points=500)
    good = _criterion(matcher, num_classes=2, **kwargs)(outputs, targets)
    bad = _criterion(FixedMatcher([([0, 1], [0, 1])]), num_classes=2, **kwargs)(outputs, targets)
    assert good["loss_ce"].item() < 1e-4
    for name in ("loss_mask", "loss_dice"):
        assert good[name].item() < 0.1 * bad[name].item(), (name, good[name], bad[name])


@pytest.mark.parametrize("num_points", [0, 100])
def test_zero_gt_gives_finite_losses_and_gradients(num_points):
    outputs, targets = _toy_batch()
    outputs = {k: v.clone().requires_grad_() for k, v in outputs.items()}
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 12, 16)}
    matcher = _matcher(1.0, 20.0, 1.0, num_points=num_points)
    crit = _criterion(matcher, num_points=num_points)

    # One empty image beside a non-empty one.
    losses = crit(outputs, [empty, targets[1]])
    assert all(torch.isfinite(v) for v in losses.values())

    # A batch without any segment: every query must predict "no object" (class 4).
    losses = crit(outputs, [empty, empty])
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    expected_ce = -outputs["pred_logits"].detach().log_softmax(-1)[..., 4].mean()
    assert losses["loss_ce"].item() == pytest.approx(expected_ce.item(), rel=1e-6)
    sum(losses.values()).backward()
    assert torch.isfinite(outputs["pred_logits"].grad).all()
    assert outputs["pred_logits"].grad.abs().sum() > 0
    assert torch.isfinite(outputs["pred_masks"].grad).all()


def _smooth_case():
    """
    Predictions (2, 8, 8) and targets (2, 32, 32) whose outer ring is 0, so that sampling
    points near the border (zero padding in grid_sample) and full-resolution upsampling
    (border clamping) see the same values.
    """
    gen = torch.Generator().manual_seed(5)
    pred = torch.randn(2, 8, 8, generator=gen) * 3
    pred[:, [0, -1], :] = 0
    pred[:, :, [0, -1]] = 0
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    disc = ((yy - 14) ** 2 + (xx - 17) ** 2) < 81
    square = (yy > 5) & (yy < 20) & (xx > 8) & (xx < 28)
    return pred, torch.stack([disc, square])


def _full_resolution_bce_and_dice(pred, gt):
    up = F.interpolate(pred[:, None].double(), size=gt.shape[-2:], mode="bilinear")
    p, t = up[:, 0].flatten(1).sigmoid(), gt.double().flatten(1)
    bce = -(t * p.log() + (1 - t) * (1 - p).log()).mean(1)
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce.sum().item() / 2, dice.sum().item() / 2


def test_uniform_point_losses_approach_full_resolution():
    pred, gt = _smooth_case()
    outputs = {"pred_logits": torch.zeros(1, 2, 3), "pred_masks": pred[None]}
    targets = [{"labels": torch.tensor([0, 1]), "masks": gt}]
    bce_full, dice_full = _full_resolution_bce_and_dice(pred, gt)
    errors = []
    for num_points in (30, 3000, 200000):
        torch.manual_seed(0)
        crit = _criterion(
            FixedMatcher([([0, 1], [0, 1])]),
            num_classes=2,
            losses=("masks",),
            num_points=num_points,
            oversample_ratio=1.0,
            importance_sample_ratio=0.0,
        )
        losses = crit(outputs, targets)
        errors.append(
            (
                abs(losses["loss_mask"].item() - bce_full) / bce_full,
                abs(losses["loss_dice"].item() - dice_full) / dice_full,
            )
        )
    assert errors[-1][0] < errors[0][0] and errors[-1][1] < errors[0][1], errors
    assert errors[-1][0] < 0.01 and errors[-1][1] < 0.01, errors


def test_criterion_rejects_bad_arguments():
    matcher = HungarianMatcher()
    with pytest.raises(ValueError, match="unknown losses"):
        _criterion(matcher, losses=("labels", "boxes"))
    with pytest.raises(ValueError, match="importance_sample_ratio"):
        _criterion(matcher, num_points=10, importance_sample_ratio=1.5)
    outputs, targets = _toy_batch()
    with pytest.raises(ValueError, match="1 aux_outputs, but loss weights for 0"):
        _criterion(matcher)({**outputs, "aux_outputs": [outputs]}, targets)
    targets[1]["labels"] = torch.tensor([4])  # == K: out of range
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\].*\[4\]"):
        _criterion(matcher)(outputs, targets)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _num_masks_worker(rank: int, port: int, counts, results) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    try:
        out = []
        for per_rank in counts:
            targets = [{"labels": torch.zeros(per_rank[rank], dtype=torch.int64)}]
            out.append(average_num_masks(targets, torch.device("cpu")))
        results.put((rank, out))
    finally:
        torch.distributed.destroy_process_group()


def test_num_masks_is_averaged_over_workers():
    # (rank 0, rank 1) segment counts -> averages 2.0, 0.5 clamped to 1, 0 clamped to 1.
    counts = [(3, 1), (1, 0), (0, 0)]
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(
        _num_masks_worker, args=(_free_port(), counts, results), nprocs=2, start_method="spawn"
    )
    got = dict(results.get() for _ in range(2))
    assert got == {0: [2.0, 1.0, 1.0], 1: [2.0, 1.0, 1.0]}
    # Without a process group, the local count is used.
    assert average_num_masks([{"labels": torch.zeros(3)}], torch.device("cpu")) == 3.0


def test_losses_match_reference_fixture():
    """The fixture's training losses, from its head outputs (dropout is 0, so the inference
    outputs equal the training ones) and its targets padded to the 96 x 128 batch."""
    data = np.load(FIXTURE / "io.npz")
    cfg = yaml.safe_load((FIXTURE / "config.yaml").read_text())["MODEL"]
    mf = cfg["MASK_FORMER"]
    assert mf["DROPOUT"] == 0

    def head(prefix):
        return {
            "pred_logits": torch.from_numpy(data[f"{prefix}pred_logits"]),
            "pred_masks": torch.from_numpy(data[f"{prefix}pred_masks"]),
        }

    outputs = head("")
    outputs["aux_outputs"] = [head(f"aux{i}_") for i in range(mf["DEC_LAYERS"] - 1)]
    height, width = (4 * s for s in outputs["pred_masks"].shape[-2:])
    targets = []
    for i in range(2):
        masks = torch.from_numpy(data[f"gt_masks{i}"])
        padded = torch.zeros(len(masks), height, width, dtype=torch.bool)
        padded[:, : masks.shape[1], : masks.shape[2]] = masks
        targets.append({"labels": torch.from_numpy(data[f"gt_classes{i}"]).long(), "masks": padded})
    # The original has no CLASS_WEIGHT key: its class weight is 1.
    weights = {
        "class_weight": 1.0,
        "mask_weight": mf["MASK_WEIGHT"],
        "dice_weight": mf["DICE_WEIGHT"],
    }
    matcher = _matcher(*weights.values())
    crit = _criterion(
        matcher,
        num_classes=cfg["SEM_SEG_HEAD"]["NUM_CLASSES"],
        no_object_weight=mf["NO_OBJECT_WEIGHT"],
        num_aux_layers=mf["DEC_LAYERS"] - 1,
        **weights,
    )
    losses = crit(outputs, targets)
    reference = dict(zip(data["loss_names"].tolist(), data["loss_values"].tolist()))
    assert set(losses) == set(reference)
    for name, value in reference.items():
        assert losses[name].item() == pytest.approx(value, rel=1e-4), name


def _plain_mask_losses(pred_masks, targets, indices, num_masks):
    """Full-resolution mask losses from the reference formulas through autograd: matched
    predictions upsampled to the largest target size, targets zero-padded to it."""
    height = max(t["masks"].shape[-2] for t in targets)
    width = max(t["masks"].shape[-1] for t in targets)
    logits, labels = [], []
    for b, (pred_idx, tgt_idx) in enumerate(indices):
        for q, n in zip(pred_idx.tolist(), tgt_idx.tolist()):
            up = F.interpolate(pred_masks[b, q][None, None], (height, width), mode="bilinear")
            mask = targets[b]["masks"][n].float()
            logits.append(up.flatten())
            labels.append(F.pad(mask, (0, width - mask.shape[1], 0, height - mask.shape[0])))
    logits, labels = torch.stack(logits), torch.stack(labels).flatten(1)
    return sigmoid_focal_loss(logits, labels, num_masks), dice_loss(logits, labels, num_masks)


def test_full_resolution_gradients_equal_plain_autograd():
    # Three images of different sizes (targets padded to 16 x 20) and one without segments;
    # gradients w.r.t. pred_masks of the weighted losses must be those of the plain formulas.
    gen = torch.Generator().manual_seed(7)
    sizes, counts = [(12, 16), (16, 20), (16, 12), (12, 16)], [3, 2, 1, 0]
    targets = [
        {"labels": torch.arange(n) % 4, "masks": torch.rand(n, *hw, generator=gen) > 0.5}
        for hw, n in zip(sizes, counts)
    ]
    pred_masks = (torch.randn(4, 5, 4, 5, generator=gen) * 3).requires_grad_()
    outputs = {"pred_logits": torch.randn(4, 5, 5, generator=gen), "pred_masks": pred_masks}
    indices = [([4, 0, 2], [1, 0, 2]), ([3, 1], [0, 1]), ([2], [0]), ([], [])]
    crit = _criterion(FixedMatcher(indices), losses=("masks",))
    losses = crit(outputs, targets)
    (grad,) = torch.autograd.grad(20 * losses["loss_mask"] + losses["loss_dice"], pred_masks)
    focal, dice = _plain_mask_losses(pred_masks, targets, crit.matcher.indices, 6.0)
    (expected,) = torch.autograd.grad(20 * focal + dice, pred_masks)
    assert losses["loss_mask"].item() == pytest.approx(focal.item(), rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(dice.item(), rel=1e-5)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-9)
    assert grad[3].abs().sum() == 0 and grad[0].abs().sum() > 0


def test_stack_target_masks_pads_and_indexes():
    small = torch.tensor([[[True, False], [False, True]]])
    large = torch.zeros(2, 3, 2, dtype=torch.bool)
    large[1, 2, 1] = True
    empty = torch.zeros(0, 2, 2, dtype=torch.bool)
    masks, first = stack_target_masks(
        [{"masks": small}, {"masks": empty}, {"masks": large}], binary=True
    )
    assert masks.dtype == torch.bool and masks.shape == (3, 3, 2)
    assert first.tolist() == [0, 1, 1]
    assert masks[0, :2].equal(small[0]) and not masks[0, 2].any()
    assert masks[1:].equal(large)
    # Float 0/1 masks become bool for the full-resolution losses, and stay float otherwise.
    masks, _ = stack_target_masks([{"masks": small.float()}], binary=True)
    assert masks.dtype == torch.bool and masks.equal(small)
    soft = torch.full((1, 2, 2), 0.5)
    masks, _ = stack_target_masks([{"masks": soft}, {"masks": large}], binary=False)
    assert masks.dtype == torch.float32 and masks[0, 0, 0] == 0.5
    with pytest.raises(ValueError, match="binary target masks"):
        stack_target_masks([{"masks": soft}], binary=True)
