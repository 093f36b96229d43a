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
from detectron2.projects.point_rend.point_features import point_sample
from detectron2.utils.events import get_event_storage
from scipy.optimize import linear_sum_assignment
from torch import nn

__all__ = [
    "HungarianMatcher",
    "pairwise_sigmoid_focal_cost",
    "pairwise_sigmoid_bce_cost",
    "pairwise_dice_cost",
    "sanitize_cost_matrix",
    "float_outputs",
]

logger = logging.getLogger(__name__)

# Cost given to non-finite entries of a cost matrix: large enough to lose against any real cost
# (real costs are bounded by a few times the weights), small enough to keep the solver exact.
NON_FINITE_COST = 1e8

# Set once the non-finite warning was logged, so that a diverging run does not flood the log.
_warned_non_finite = False


def float_outputs(outputs: Dict[str, object]) -> Dict[str, object]:
    """
    ``outputs`` with every tensor, also those of ``outputs["aux_outputs"]``, in float32: costs
    and losses are computed in full precision even when the model ran under autocast.
    """
    converted = {}
    for key, value in outputs.items():
        if isinstance(value, torch.Tensor):
            value = value.float()
        elif key == "aux_outputs":
            value = [float_outputs(aux) for aux in value]
        converted[key] = value
    return converted


def pairwise_sigmoid_focal_cost(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    prob: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """
    Sigmoid focal loss of every prediction against every target, averaged over pixels.

    Because a target pixel is either 1 or 0, the per-pixel focal loss splits into a "positive"
    term weighted by the target and a "negative" term weighted by its complement; two matrix
    products then give all Q x N pairs without materialising a (Q, N, P) tensor.

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
    bce_pos, bce_neg = _binary_cross_entropies(logits)
    loss_pos = bce_pos.mul_((1 - prob).pow_(gamma))
    loss_neg = bce_neg.mul_(prob**gamma)
    if alpha >= 0:
        loss_pos.mul_(alpha)
        loss_neg.mul_(1 - alpha)
    cost = torch.einsum("...qp,...np->...qn", loss_pos, targets)
    cost = cost + torch.einsum("...qp,...np->...qn", loss_neg, 1 - targets)
    return cost / num_pixels


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


class HungarianMatcher(nn.Module):
    """
    One-to-one assignment of predictions to ground-truth segments that minimises
    ``cost_class * (-p(class)) + cost_mask * mask_loss + cost_dice * dice_loss``
    (MaskFormer, :paper:`MaskFormer`, section 3.2).

    With ``num_points == 0`` (MaskFormer) masks are compared on the prediction grid: targets are
    nearest-downsampled to (h, w) and the mask term is a sigmoid focal loss. With
    ``num_points > 0`` (Mask2Former) both are compared on ``num_points`` uniformly random points
    shared by all predictions and targets of an image, and the mask term is a sigmoid BCE.
    On the grid, the costs of all images are computed at once, on targets padded to the largest
    N of the batch (a (B, Q, max N) tensor; never the (B*Q, sum N) cross product); each image
    is then solved on its own block.
    """

    def __init__(
        self,
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
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(
                f"HungarianMatcher: {len(targets)} targets for a batch of {pred_logits.shape[0]}"
            )
        # Costs in float32, also under autocast (bfloat16 cannot even reach the solver).
        with torch.autocast(device_type=pred_logits.device.type, enabled=False):
            costs = self._image_costs(pred_logits.float(), pred_masks.float(), targets)
        return [_assign(cost) for cost in costs]

    def _image_costs(
        self, logits: torch.Tensor, masks: torch.Tensor, targets: List[Dict[str, torch.Tensor]]
    ) -> List[torch.Tensor]:
        """
        Cost matrices (Q, N_b) on the CPU, one per image b, from logits (B, Q, K+1) and mask
        logits (B, Q, h, w).
        """
        if self.num_points > 0:
            # Points are drawn per image: each image has its own set.
            return [
                self.cost_matrix(logits[b], masks[b], t["labels"], t["masks"]).cpu()
                for b, t in enumerate(targets)
            ]
        sizes = [len(t["labels"]) for t in targets]
        batch, _, h, w = masks.shape
        labels = torch.zeros((batch, max(sizes)), dtype=torch.int64, device=logits.device)
        tgt_flat = masks.new_zeros((batch, max(sizes), h * w))
        for b, (target, n) in enumerate(zip(targets, sizes)):
            if n:
                labels[b, :n] = target["labels"].to(logits.device)
                tgt_flat[b, :n] = _downsample(target["masks"], (h, w), masks)
        cost = self._weighted_cost(logits, masks.flatten(2), labels, tgt_flat, focal=True).cpu()
        return [cost[b, :, :n] for b, n in enumerate(sizes)]

    def cost_matrix(
        self,
        logits: torch.Tensor,
        masks: torch.Tensor,
        labels: torch.Tensor,
        tgt_masks: torch.Tensor,
    ) -> torch.Tensor:
        """
        Weighted matching cost of one image, in the dtype of ``masks``.

        Args:
            logits (Tensor): class logits of shape (Q, K+1).
            masks (Tensor): mask logits of shape (Q, h, w).
            labels (Tensor): target classes, int64 of shape (N,).
            tgt_masks (Tensor): target masks of shape (N, H, W).

        Returns:
            Tensor: cost matrix of shape (Q, N) (may hold non-finite values).
        """
        if self.num_points > 0:
            pred_flat, tgt_flat = self._sample_points(masks, tgt_masks.to(masks))
            return self._weighted_cost(logits, pred_flat, labels, tgt_flat, focal=False)
        tgt_flat = _downsample(tgt_masks, masks.shape[-2:], masks)
        return self._weighted_cost(logits, masks.flatten(1), labels, tgt_flat, focal=True)

    def _weighted_cost(
        self,
        logits: torch.Tensor,
        pred_flat: torch.Tensor,
        labels: torch.Tensor,
        tgt_flat: torch.Tensor,
        focal: bool,
    ) -> torch.Tensor:
        """
        ``cost_class * (-p(class)) + cost_mask * mask_cost + cost_dice * dice`` of logits
        (..., Q, K+1), mask logits (..., Q, P), labels (..., N) and targets (..., N, P); returns
        (..., Q, N). The mask cost is the sigmoid focal loss if ``focal``, else the sigmoid BCE.
        """
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
            self.cost_mask * mask_cost
            + self.cost_class * cost_class.to(pred_flat)
            + self.cost_dice * pairwise_dice_cost(pred_flat, tgt_flat, prob=mask_prob)
        )

    def _sample_points(
        self, masks: torch.Tensor, tgt_masks: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Sample predictions (Q, h, w) and targets (N, H, W) at the same ``num_points`` uniform
        random points (normalised coordinates, so the two resolutions need not agree).

        Returns:
            (Tensor, Tensor): values of shape (Q, P) and (N, P).
        """
        coords = torch.rand(1, self.num_points, 2, device=masks.device)
        pred = point_sample(
            masks[:, None], coords.expand(masks.shape[0], -1, -1).to(masks), align_corners=False
        )
        tgt = point_sample(
            tgt_masks[:, None],
            coords.expand(tgt_masks.shape[0], -1, -1).to(tgt_masks),
            align_corners=False,
        )
        return pred[:, 0], tgt[:, 0]

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
            f"cost_dice={self.cost_dice}, num_points={self.num_points}"
        )
