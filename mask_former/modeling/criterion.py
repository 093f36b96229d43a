# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Training losses of MaskFormer: classification of every query and binary mask losses of the
queries matched to ground-truth segments by :class:`~mask_former.modeling.matcher.HungarianMatcher`.

Shape shorthand in this module:

    B: batch size (number of images)
    Q: number of queries per image
    K: number of classes; the classifier has K + 1 outputs, the last one being "no object"
    M: number of matched (prediction, target) pairs over the whole batch
    H, W: height and width of the ground-truth masks (padded input resolution)
    h, w: height and width of the predicted masks (about H/4, W/4)
    P: number of pixels or sampled points a mask is compared on

The mask losses are summed over masks and divided by ``num_masks``, the number of ground-truth
segments per worker averaged over all workers, so that every segment weighs the same whatever
worker it lands on.

:func:`sigmoid_focal_loss` and :func:`dice_loss` are the plain formulas; the full-resolution
training path gets the same values and gradients from
:func:`~mask_former.modeling.mask_losses.sigmoid_focal_dice_loss`, which does not keep (M, H, W)
float tensors for backward.
"""

from typing import Dict, Iterable, List, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from torch import nn

from .mask_losses import sigmoid_focal_dice_loss
from .matcher import float_outputs

__all__ = [
    "SetCriterion",
    "sigmoid_focal_loss",
    "sigmoid_bce_loss",
    "dice_loss",
    "point_uncertainty",
    "average_num_masks",
    "average_over_workers",
    "stack_target_masks",
]

Indices = List[Tuple[torch.Tensor, torch.Tensor]]

_KNOWN_LOSSES = ("labels", "masks")


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    num_masks: float,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """
    Sigmoid focal loss (:paper:`RetinaNet`): per pixel
    ``alpha_t * (1 - p_t) ** gamma * BCE(logit, t)``, averaged over the pixels of each mask,
    summed over masks and divided by ``num_masks``.

    Args:
        logits (Tensor): mask logits of shape (M, P).
        targets (Tensor): binary targets of shape (M, P), float.
        num_masks (float): normaliser (number of ground-truth masks).
        alpha (float): weight of positive pixels (negatives get 1 - alpha); < 0 disables it.
        gamma (float): focusing exponent.

    Returns:
        Tensor: scalar loss.
    """
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = bce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.mean(1).sum() / num_masks


def sigmoid_bce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """
    Binary cross-entropy with logits, averaged over the points of each mask, summed over masks
    and divided by ``num_masks``.

    Args:
        logits (Tensor): mask logits of shape (M, P).
        targets (Tensor): targets in [0, 1] of shape (M, P).
        num_masks (float): normaliser (number of ground-truth masks).

    Returns:
        Tensor: scalar loss.
    """
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """
    Dice loss ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` with ``p = sigmoid(logits)``,
    summed over masks and divided by ``num_masks`` (the +1 keeps empty masks finite).

    Args:
        logits (Tensor): mask logits of shape (M, P).
        targets (Tensor): targets of shape (M, P).
        num_masks (float): normaliser (number of ground-truth masks).

    Returns:
        Tensor: scalar loss.
    """
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


def point_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """
    Uncertainty of class-agnostic mask logits for importance sampling: ``-|logit|``, highest
    where the prediction is closest to the 0.5 decision boundary.

    Args:
        logits (Tensor): shape (M, 1, P).

    Returns:
        Tensor: shape (M, 1, P).
    """
    return -logits.abs()


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def average_over_workers(value: torch.Tensor) -> torch.Tensor:
    """
    The mean of a scalar over all workers (detached; the value itself without distribution),
    clamped away from 0: a normaliser shared by every worker.
    """
    value = value.detach().clone().reshape(1)
    if _is_distributed():
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value.clamp(min=torch.finfo(value.dtype).tiny)[0]


def average_num_masks(targets: Sequence[Dict[str, torch.Tensor]], device: torch.device) -> float:
    """
    Number of ground-truth segments of this worker's batch, averaged over all workers when
    ``torch.distributed`` is initialised (all_reduce SUM / world size), clamped to >= 1.

    Args:
        targets (list[dict]): per-image targets with ``"labels"`` of shape (N,).
        device (torch.device): device of the reduced tensor (must suit the process group).

    Returns:
        float: the normaliser of the mask losses.
    """
    num_masks = torch.tensor(
        [float(sum(len(t["labels"]) for t in targets))], dtype=torch.float, device=device
    )
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num_masks)
        world_size = dist.get_world_size()
    return torch.clamp(num_masks / world_size, min=1).item()


class SetCriterion(nn.Module):
    """
    MaskFormer's set-prediction loss (:paper:`MaskFormer`, section 3.2): match predictions to
    targets, then

    * ``loss_ce``: cross-entropy over K+1 classes of every query; unmatched queries must predict
      "no object", whose class weight is ``eos_coef`` (weighted mean over queries);
    * ``loss_mask`` / ``loss_dice``: mask losses of the matched queries. With ``num_points == 0``
      (MaskFormer) predicted masks are bilinearly upsampled to the target resolution and the mask
      loss is a sigmoid focal loss; with ``num_points > 0`` (Mask2Former) both are compared on
      points chosen by uncertainty-based importance sampling and the mask loss is a sigmoid BCE.

    Losses of ``outputs["aux_outputs"][i]`` (deep supervision; matched anew) get the suffix
    ``_i``. The returned losses are NOT weighted; ``weight_dict`` is kept for the caller.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        eos_coef: float,
        losses: Iterable[str] = ("labels", "masks"),
        num_points: int = 0,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ):
        """
        Args:
            num_classes (int): K, the number of classes without "no object".
            matcher (nn.Module): returns per-image (prediction, target) index pairs.
            weight_dict (dict[str, float]): weight of every loss name (used by the caller).
            eos_coef (float): cross-entropy class weight of "no object".
            losses (iterable[str]): which losses to compute: "labels" and/or "masks".
            num_points (int): 0 for full-resolution mask losses, > 0 for point-sampled ones.
            oversample_ratio (float): candidate points per sampled point (>= 1).
            importance_sample_ratio (float): share of points taken where the prediction is most
                uncertain (the rest uniformly at random), in [0, 1].
        """
        super().__init__()
        losses = tuple(losses)
        unknown = [name for name in losses if name not in _KNOWN_LOSSES]
        if unknown:
            raise ValueError(f"SetCriterion: unknown losses {unknown}; known: {_KNOWN_LOSSES}")
        if num_points > 0 and not (oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1):
            raise ValueError(
                "SetCriterion: need oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1, "
                f"got {oversample_ratio} and {importance_sample_ratio}"
            )
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = losses
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def forward(
        self, outputs: Dict[str, object], targets: List[Dict[str, torch.Tensor]]
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs (dict): ``"pred_logits"`` (B, Q, K+1), ``"pred_masks"`` (B, Q, h, w) and
                optionally ``"aux_outputs"``, a list of dicts with the same two keys.
            targets (list[dict]): B dicts with ``"labels"`` int64 (N,) and ``"masks"``
                (N, H, W), bool or float.

        Returns:
            dict[str, Tensor]: scalar losses ``loss_ce``, ``loss_mask``, ``loss_dice`` and their
            ``_i`` versions for every auxiliary output i.
        """
        self._check_labels(targets)
        device = outputs["pred_logits"].device
        num_masks = average_num_masks(targets, device)
        # One stack of the batch's target masks, shared by all decoder layers.
        masks = stack_target_masks(targets, binary=self.num_points == 0)
        # Losses in float32, also when the model ran under autocast (see SOLVER.AMP.ENABLED).
        with torch.autocast(device_type=device.type, enabled=False):
            outputs = float_outputs(outputs)
            losses = self._layer_losses(outputs, targets, masks, num_masks)
            for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
                aux_losses = self._layer_losses(aux_outputs, targets, masks, num_masks)
                losses.update({f"{name}_{i}": value for name, value in aux_losses.items()})
        return losses

    def _check_labels(self, targets: List[Dict[str, torch.Tensor]]) -> None:
        """Fail early, with the image at fault, on labels outside [0, K)."""
        for i, target in enumerate(targets):
            labels = target["labels"]
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"SetCriterion: targets[{i}]['labels'] holds values outside "
                    f"[0, {self.num_classes}): {labels.tolist()}"
                )

    def _layer_losses(
        self,
        outputs: Dict[str, torch.Tensor],
        targets: List[Dict[str, torch.Tensor]],
        masks: Tuple[torch.Tensor, torch.Tensor],
        num_masks: float,
    ) -> Dict[str, torch.Tensor]:
        """Losses of one decoder layer's outputs (matching included)."""
        indices = self.matcher(outputs, targets)
        losses = {}
        if "labels" in self.losses:
            losses["loss_ce"] = self.loss_labels(outputs["pred_logits"], targets, indices)
        if "masks" in self.losses:
            losses.update(self.loss_masks(outputs["pred_masks"], masks, indices, num_masks))
        return losses

    def loss_labels(
        self, pred_logits: torch.Tensor, targets: List[Dict[str, torch.Tensor]], indices: Indices
    ) -> torch.Tensor:
        """
        Weighted cross-entropy of all queries.

        Args:
            pred_logits (Tensor): shape (B, Q, K+1).
            targets, indices: as given to / returned by the matcher.

        Returns:
            Tensor: scalar ``loss_ce``.
        """
        logits = pred_logits.float()
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        for b, (target, (pred_idx, tgt_idx)) in enumerate(zip(targets, indices)):
            target_classes[b, pred_idx.to(logits.device)] = target["labels"][tgt_idx].to(
                logits.device
            )
        logits = logits.transpose(1, 2)
        if not _is_distributed():
            return F.cross_entropy(logits, target_classes, weight=self.empty_weight)
        # The weighted mean over the queries of ALL workers (not the mean of the workers' means,
        # which weighs a worker's queries by its own weight sum): the same loss and gradients as
        # one process with the whole batch, whatever each worker's share of matches.
        total = F.cross_entropy(logits, target_classes, weight=self.empty_weight, reduction="sum")
        return total / average_over_workers(self.empty_weight[target_classes].sum())

    def loss_masks(
        self,
        pred_masks: torch.Tensor,
        masks: Tuple[torch.Tensor, torch.Tensor],
        indices: Indices,
        num_masks: float,
    ) -> Dict[str, torch.Tensor]:
        """
        Mask and dice losses of the matched queries.

        Args:
            pred_masks (Tensor): mask logits of shape (B, Q, h, w).
            masks (Tensor, Tensor): the batch's target masks and the index of each image's
                first one, from :func:`stack_target_masks`.
            indices: as returned by the matcher.
            num_masks (float): normaliser, see :func:`average_num_masks`.

        Returns:
            dict[str, Tensor]: scalar ``loss_mask`` and ``loss_dice``.
        """
        batch_idx = torch.cat([torch.full_like(p, b) for b, (p, _) in enumerate(indices)])
        pred_idx = torch.cat([p for p, _ in indices])
        src = pred_masks[batch_idx.to(pred_masks.device), pred_idx.to(pred_masks.device)]
        if src.shape[0] == 0:
            # No segment in the whole batch: zero losses that still belong to the graph.
            zero = pred_masks.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        target_masks, first = masks
        tgt_idx = torch.cat([t.to(first.device) + first[b] for b, (_, t) in enumerate(indices)])
        if self.num_points > 0:
            tgt = target_masks[tgt_idx.to(target_masks.device)].to(src)
            logits, labels = self._sample_points(src, tgt)
            return {
                "loss_mask": sigmoid_bce_loss(logits, labels, num_masks),
                "loss_dice": dice_loss(logits, labels, num_masks),
            }
        focal, dice = sigmoid_focal_dice_loss(src, target_masks, tgt_idx)
        return {"loss_mask": focal.sum() / num_masks, "loss_dice": dice.sum() / num_masks}

    def _sample_points(
        self, src: torch.Tensor, tgt: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Sample matched predictions (M, h, w) and targets (M, H, W) at ``num_points`` points per
        mask, chosen by PointRend's importance sampling on the predictions.

        Returns:
            (Tensor, Tensor): prediction logits and target values, both of shape (M, P).
        """
        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(
                src[:, None],
                point_uncertainty,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
            labels = point_sample(tgt[:, None], coords, align_corners=False)[:, 0]
        logits = point_sample(src[:, None], coords, align_corners=False)[:, 0]
        return logits, labels

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
            f"weight_dict={self.weight_dict}, num_points={self.num_points}, "
            f"oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}"
        )


def stack_target_masks(
    targets: Sequence[Dict[str, torch.Tensor]], binary: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    All target masks of the batch in one tensor, zero-padded at the bottom/right to the largest
    target size (padding is background), built once per batch and indexed by every layer.

    Args:
        targets (list[dict]): per-image ``"masks"`` of shape (N_i, H_i, W_i), bool or float.
        binary (bool): return bool masks (for the full-resolution losses); float masks must
            then hold only 0 and 1. Otherwise bool masks stay bool and others become float.

    Returns:
        (Tensor, Tensor): masks of shape (sum N_i, H, W), H and W being the largest H_i, W_i;
        int64 (B,) index of each image's first mask in them.
    """
    height = max(t["masks"].shape[-2] for t in targets)
    width = max(t["masks"].shape[-1] for t in targets)
    masks = [_mask_dtype(t["masks"], binary) for t in targets]
    if any(m.dtype != torch.bool for m in masks):
        masks = [m.float() for m in masks]
    sizes = torch.tensor([len(m) for m in masks])
    first = torch.cumsum(sizes, 0) - sizes
    if all(m.shape[-2:] == (height, width) for m in masks):
        return (masks[0] if len(masks) == 1 else torch.cat(masks)), first
    stacked = masks[0].new_zeros((int(sizes.sum()), height, width))
    for m, start in zip(masks, first.tolist()):
        stacked[start : start + len(m), : m.shape[-2], : m.shape[-1]] = m
    return stacked, first


def _mask_dtype(masks: torch.Tensor, binary: bool) -> torch.Tensor:
    """``masks`` as bool if ``binary`` (rejecting values other than 0 and 1), else unchanged."""
    if not binary or masks.dtype == torch.bool:
        return masks
    if masks.numel() and not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError(
            "SetCriterion: the full-resolution mask losses need binary target masks (0/1); "
            "use point sampling (MODEL.MASK_FORMER.TRAIN_NUM_POINTS > 0) for soft targets"
        )
    return masks != 0
