# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Hungarian matching between predicted (class, mask) pairs and ground-truth segments.

Shape shorthand in this module:

    B: batch size (number of images)
    Q: number of queries (predicted segments) of one image
    K: number of classes; the classifier has K + 1 outputs, the last one being "no object"
    N: number of ground-truth segments of one image
    H, W: height and width of the ground-truth masks (padded input resolution)
    h, w: height and width of the predicted masks (about H/4, W/4)
    P: number of pixels or sampled points a mask is compared on

Einsum subscripts use ``q`` for predictions, ``n`` for targets and ``p`` for pixels/points.
"""

import logging
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.projects.point_rend.point_features import point_sample
from detectron2.utils.events import get_event_storage
from scipy.optimize import linear_sum_assignment
from torch import nn

from .precision import float_outputs

__all__ = [
    "HungarianMatcher",
    "pairwise_sigmoid_focal_cost",
    "pairwise_sigmoid_bce_cost",
    "pairwise_dice_cost",
    "sanitize_cost_matrix",
    "weighted_cost",
    "grid_cost_matrices",
    "point_cost_matrices",
]

logger = logging.getLogger(__name__)

# Cost given to non-finite entries of a cost matrix: large enough to lose against any real cost
# (real costs are bounded by a few times the weights), small enough to keep the solver exact.
NON_FINITE_COST = 1e8

# Set once the non-finite warning was logged, so that a diverging run does not flood the log.
_warned_non_finite = False

# (class, mask, dice) weights of the matching cost terms.
CostWeights = Tuple[float, float, float]


def pairwise_sigmoid_focal_cost(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    prob: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """
    Sigmoid focal loss of every prediction against every target, averaged over pixels.

    Because a target pixel is either 1 or 0, the per-pixel focal loss is the "negative" term
    plus the target times ("positive" minus "negative"): one matrix product and one row sum
    give all Q x N pairs without materialising a (Q, N, P) tensor.

    Args:
        logits (Tensor): predicted mask logits of shape (..., Q, P).
        targets (Tensor): binary target masks of shape (..., N, P), float.
        alpha (float): weight of the positive pixels (negatives get 1 - alpha); < 0 disables it.
        gamma (float): focusing exponent.
        prob (Tensor): ``logits.sigmoid()`` if the caller has it already.

    Returns:
        Tensor: cost matrices of shape (..., Q, N).
    """
    num_pixels = logits.shape[-1]
    prob = logits.sigmoid() if prob is None else prob
    # In place where possible: every (..., Q, P) temporary is a fresh allocation (page faults).
    loss_pos, loss_neg = _binary_cross_entropies(logits)
    modulator = torch.sub(1, prob).pow_(gamma)
    loss_pos.mul_(modulator)
    loss_neg.mul_(torch.pow(prob, gamma, out=modulator))
    if alpha >= 0:
        loss_pos.mul_(alpha)
        loss_neg.mul_(1 - alpha)
    cost = torch.einsum("...qp,...np->...qn", loss_pos.sub_(loss_neg), targets)
    return cost.add_(loss_neg.sum(-1, keepdim=True)).div_(num_pixels)


def _binary_cross_entropies(logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    ``(softplus(-x), softplus(x))``, the BCE of logits x against targets 1 and 0, as
    ``relu(-+x) - log(sigmoid(|x|))``: as stable as ``F.softplus`` (the log's argument is in
    [0.5, 1]) but made of vectorised CPU kernels, where softplus is a scalar loop ~10x slower.
    """
    shared = logits.abs().sigmoid_().log_().neg_()
    return shared + logits.clamp(max=0).neg_(), shared.add_(logits.clamp(min=0))


def pairwise_sigmoid_bce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """
    Binary cross-entropy (with logits) of every prediction against every target, averaged
    over points. Same positive/negative split as :func:`pairwise_sigmoid_focal_cost`.

    Args:
        logits (Tensor): predicted mask logits of shape (..., Q, P).
        targets (Tensor): target mask values in [0, 1] of shape (..., N, P).

    Returns:
        Tensor: cost matrices of shape (..., Q, N).
    """
    num_points = logits.shape[-1]
    bce_pos, bce_neg = _binary_cross_entropies(logits)
    cost = torch.einsum("...qp,...np->...qn", bce_pos, targets)
    cost = cost + torch.einsum("...qp,...np->...qn", bce_neg, 1 - targets)
    return cost / num_points


def pairwise_dice_cost(
    logits: torch.Tensor, targets: torch.Tensor, prob: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """
    Dice loss ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` of every prediction against
    every target, with ``p = sigmoid(logits)`` (the +1 smooths empty masks).

    Args:
        logits (Tensor): predicted mask logits of shape (..., Q, P).
        targets (Tensor): target masks of shape (..., N, P), float.
        prob (Tensor): ``logits.sigmoid()`` if the caller has it already.

    Returns:
        Tensor: cost matrices of shape (..., Q, N).
    """
    prob = logits.sigmoid() if prob is None else prob
    numerator = 2 * torch.einsum("...qp,...np->...qn", prob, targets)
    denominator = prob.sum(-1)[..., :, None] + targets.sum(-1)[..., None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def _count_non_finite(count: int) -> None:
    """Add ``count`` to the scalar "matcher/non_finite_costs" of the open event storage."""
    try:
        storage = get_event_storage()
    except AssertionError:  # not inside a trainer: nothing to count into
        return
    # Summed over the decoder layers and images of the iteration; 0 is never written, so the
    # scalar appears in metrics.json exactly from the iteration where predictions went bad.
    history = storage.latest().get("matcher/non_finite_costs")
    previous = history[0] if history is not None and history[1] == storage.iter else 0
    storage.put_scalar("matcher/non_finite_costs", previous + count, smoothing_hint=False)


def sanitize_cost_matrix(cost: torch.Tensor) -> torch.Tensor:
    """
    Replace non-finite entries (NaN, +-inf, e.g. from a diverging prediction) by
    ``NON_FINITE_COST`` so that the assignment solver never fails; logs a warning the first
    time it happens in the process and counts the entries in the event storage
    ("matcher/non_finite_costs") of every iteration where it happens.

    Args:
        cost (Tensor): cost matrix of shape (Q, N).

    Returns:
        Tensor: the same matrix with every non-finite entry replaced (a pair with a non-finite
        cost is treated as the worst possible match).
    """
    global _warned_non_finite
    finite = torch.isfinite(cost)
    if bool(finite.all()):
        return cost
    _count_non_finite(int((~finite).sum()))
    if not _warned_non_finite:
        _warned_non_finite = True
        logger.warning(
            "Hungarian matcher: %d non-finite entries in a %s cost matrix (NaN/inf in the "
            "predictions?); they are treated as cost %g. This warning is logged once.",
            int((~finite).sum()),
            tuple(cost.shape),
            NON_FINITE_COST,
        )
    return torch.where(finite, cost, torch.full_like(cost, NON_FINITE_COST))


def _downsample(masks: torch.Tensor, size: Tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """
    Nearest-downsample masks (N, H, W) to ``size`` (h, w); returns (N, h * w) in the dtype and
    on the device of ``like``. Bool masks are resampled as uint8 (the same pixels are kept as
    for float), so that no full-resolution float copy is made.
    """
    if masks.dtype == torch.bool:
        masks = masks.view(torch.uint8)
    small = F.interpolate(masks[:, None], size=tuple(size), mode="nearest").flatten(1)
    return small.to(like)


def _assign(cost: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment of a (Q, N) cost matrix: (prediction, target) indices."""
    if cost.shape[1] == 0:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty.clone()
    pred_idx, tgt_idx = linear_sum_assignment(sanitize_cost_matrix(cost).numpy())
    return torch.as_tensor(pred_idx, dtype=torch.int64), torch.as_tensor(tgt_idx, dtype=torch.int64)


def weighted_cost(
    logits: torch.Tensor,
    pred_flat: torch.Tensor,
    labels: torch.Tensor,
    tgt_flat: torch.Tensor,
    weights: CostWeights,
    focal: bool,
) -> torch.Tensor:
    """
    The matching cost ``w_class * (-p(class)) + w_mask * mask_cost + w_dice * dice`` of every
    prediction against every target. The mask cost is the sigmoid focal loss if ``focal``
    (masks compared on the prediction grid), else the sigmoid BCE (masks compared on points).

    Args:
        logits (Tensor): class logits of shape (..., Q, K+1).
        pred_flat (Tensor): mask logits of shape (..., Q, P).
        labels (Tensor): target classes, int64 of shape (..., N).
        tgt_flat (Tensor): target mask values of shape (..., N, P), in the dtype of pred_flat.
        weights (float, float, float): the class, mask and dice weights.
        focal (bool): focal (True) or BCE (False) mask cost.

    Returns:
        Tensor: cost matrices of shape (..., Q, N), in the dtype of pred_flat (may hold
        non-finite values).
    """
    class_weight, mask_weight, dice_weight = weights
    # The "1 -" of 1 - p(class) is a constant per target and does not change the matching.
    prob = logits.softmax(-1)
    index = labels.unsqueeze(-2).expand(*prob.shape[:-1], labels.shape[-1])
    cost_class = -torch.gather(prob, -1, index)
    mask_prob = pred_flat.sigmoid()
    if focal:
        mask_cost = pairwise_sigmoid_focal_cost(pred_flat, tgt_flat, prob=mask_prob)
    else:
        mask_cost = pairwise_sigmoid_bce_cost(pred_flat, tgt_flat)
    return (
        mask_weight * mask_cost
        + class_weight * cost_class.to(pred_flat)
        + dice_weight * pairwise_dice_cost(pred_flat, tgt_flat, prob=mask_prob)
    )


def _padded_grid_targets(
    targets: List[Dict[str, torch.Tensor]], like: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
    """
    The targets of a batch on the prediction grid, zero-padded to the largest N of the batch.

    Args:
        targets (list[dict]): B dicts with ``"labels"`` (N_b,) and ``"masks"`` (N_b, H, W).
        like (Tensor): the mask logits (B, Q, h, w), whose grid, dtype and device are used.

    Returns:
        (Tensor, Tensor, list[int]): labels, int64 of shape (B, max N) (0 where padded);
        nearest-downsampled masks of shape (B, max N, h * w) (0 where padded); the N_b.
    """
    sizes = [len(t["labels"]) for t in targets]
    batch, _, h, w = like.shape
    labels = torch.zeros((batch, max(sizes)), dtype=torch.int64, device=like.device)
    masks = like.new_zeros((batch, max(sizes), h * w))
    for b, (target, n) in enumerate(zip(targets, sizes)):
        if n:
            labels[b, :n] = target["labels"].to(like.device)
            masks[b, :n] = _downsample(target["masks"], (h, w), like)
    return labels, masks, sizes


def grid_cost_matrices(
    logits: torch.Tensor,
    masks: torch.Tensor,
    targets: List[Dict[str, torch.Tensor]],
    weights: CostWeights,
) -> List[torch.Tensor]:
    """
    Matching costs with masks compared on the prediction grid (MaskFormer): targets are
    nearest-downsampled to (h, w) and the mask cost is a sigmoid focal loss. The costs of all
    images are computed at once, on targets padded to the largest N of the batch (a
    (B, Q, max N) tensor; never the (B*Q, sum N) cross product); each image keeps its own N
    columns.

    Args:
        logits (Tensor): class logits of shape (B, Q, K+1).
        masks (Tensor): mask logits of shape (B, Q, h, w).
        targets (list[dict]): B dicts with ``"labels"`` (N_b,) and ``"masks"`` (N_b, H, W).
        weights (float, float, float): the class, mask and dice weights.

    Returns:
        list[Tensor]: B cost matrices of shape (Q, N_b), on the CPU.
    """
    labels, tgt_flat, sizes = _padded_grid_targets(targets, masks)
    cost = weighted_cost(logits, masks.flatten(2), labels, tgt_flat, weights, focal=True).cpu()
    return [cost[b, :, :n] for b, n in enumerate(sizes)]


def _sample_shared_points(
    masks: torch.Tensor, tgt_masks: torch.Tensor, num_points: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Sample predictions (Q, h, w) and targets (N, H, W) at the same ``num_points`` uniform
    random points (normalised coordinates, so the two resolutions need not agree).

    Returns:
        (Tensor, Tensor): values of shape (Q, P) and (N, P).
    """
    coords = torch.rand(1, num_points, 2, device=masks.device)
    pred = point_sample(
        masks[:, None], coords.expand(masks.shape[0], -1, -1).to(masks), align_corners=False
    )
    tgt = point_sample(
        tgt_masks[:, None],
        coords.expand(tgt_masks.shape[0], -1, -1).to(tgt_masks),
        align_corners=False,
    )
    return pred[:, 0], tgt[:, 0]


def point_cost_matrices(
    logits: torch.Tensor,
    masks: torch.Tensor,
    targets: List[Dict[str, torch.Tensor]],
    weights: CostWeights,
    num_points: int,
) -> List[torch.Tensor]:
    """
    Matching costs with masks compared on ``num_points`` uniformly random points (Mask2Former),
    drawn anew for each image and shared by its predictions and targets; the mask cost is a
    sigmoid BCE. Same arguments and result as :func:`grid_cost_matrices`.
    """
    costs = []
    for b, target in enumerate(targets):
        pred_flat, tgt_flat = _sample_shared_points(masks[b], target["masks"].to(masks), num_points)
        cost = weighted_cost(logits[b], pred_flat, target["labels"], tgt_flat, weights, focal=False)
        costs.append(cost.cpu())
    return costs


class HungarianMatcher(nn.Module):
    """
    One-to-one assignment of predictions to ground-truth segments that minimises
    ``cost_class * (-p(class)) + cost_mask * mask_loss + cost_dice * dice_loss``
    (MaskFormer, :paper:`MaskFormer`, section 3.2).

    With ``num_points == 0`` (MaskFormer) masks are compared on the prediction grid
    (:func:`grid_cost_matrices`, all images at once); with ``num_points > 0`` (Mask2Former) on
    random points (:func:`point_cost_matrices`). Each image is then solved on its own matrix.
    """

    @configurable
    def __init__(
        self,
        *,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        num_points: int = 0,
    ):
        """
        Args:
            cost_class (float): weight of the negative class probability.
            cost_mask (float): weight of the focal (or, with points, BCE) mask cost.
            cost_dice (float): weight of the dice cost.
            num_points (int): 0 to compare masks on the prediction grid, > 0 to compare them
                on that many random points.
        """
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_mask and cost_dice are all 0")
        if num_points < 0:
            raise ValueError(f"HungarianMatcher: num_points must be >= 0, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @classmethod
    def from_config(cls, cfg) -> Dict[str, object]:
        # The matching cost weighs its terms as the training loss does.
        mf = cfg.MODEL.MASK_FORMER
        return {
            "cost_class": mf.CLASS_WEIGHT,
            "cost_mask": mf.MASK_WEIGHT,
            "cost_dice": mf.DICE_WEIGHT,
            "num_points": mf.TRAIN_NUM_POINTS,
        }

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            outputs (dict): ``"pred_logits"`` of shape (B, Q, K+1) and ``"pred_masks"`` of
                shape (B, Q, h, w) (mask logits).
            targets (list[dict]): B dicts with ``"labels"`` int64 (N,) and ``"masks"``
                (N, H, W), bool or float.

        Returns:
            list[(Tensor, Tensor)]: for each image, (prediction indices, target indices), both
            int64 of the same length min(Q, N), such that prediction ``i[j]`` is matched to
            target ``t[j]``.
        """
        return [_assign(cost) for cost in self.cost_matrices(outputs, targets)]

    @torch.no_grad()
    def cost_matrices(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> List[torch.Tensor]:
        """
        The weighted cost matrices that :meth:`forward` solves: for each image, (Q, N) float32
        on the CPU (may hold non-finite values). Same arguments as :meth:`forward`.
        """
        batch = outputs["pred_logits"].shape[0]
        if len(targets) != batch:
            raise ValueError(f"HungarianMatcher: {len(targets)} targets for a batch of {batch}")
        weights = (self.cost_class, self.cost_mask, self.cost_dice)
        # Costs in float32, also under autocast (bfloat16 cannot even reach the solver).
        with torch.autocast(device_type=outputs["pred_logits"].device.type, enabled=False):
            outputs = float_outputs({k: outputs[k] for k in ("pred_logits", "pred_masks")})
            logits, masks = outputs["pred_logits"], outputs["pred_masks"]
            if self.num_points > 0:
                return point_cost_matrices(logits, masks, targets, weights, self.num_points)
            return grid_cost_matrices(logits, masks, targets, weights)

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
            f"cost_dice={self.cost_dice}, num_points={self.num_points}"
        )
