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
worker it lands on. :class:`SetCriterion` returns the losses multiplied by their weights
(MODEL.MASK_FORMER.CLASS_WEIGHT, MASK_WEIGHT and DICE_WEIGHT, the same for every decoder layer).

:func:`sigmoid_focal_loss` and :func:`dice_loss` are the plain formulas; the full-resolution
training path gets the same values and gradients from
:func:`~mask_former.modeling.mask_losses.sigmoid_focal_dice_loss`, which does not keep (M, H, W)
float tensors for backward, from the batch's targets stacked once by
:func:`~mask_former.modeling.mask_losses.stack_target_masks`.
"""

from typing import Dict, Iterable, List, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from torch import nn

from .mask_losses import sigmoid_focal_dice_loss, stack_target_masks
from .matcher import HungarianMatcher
from .precision import float_outputs

__all__ = [
    "SetCriterion",
    "loss_weights",
    "sigmoid_focal_loss",
    "sigmoid_bce_loss",
    "dice_loss",
    "point_uncertainty",
    "average_num_masks",
    "average_over_workers",
    "check_target_labels",
    "class_loss",
    "matched_pairs",
    "mask_losses",
    "point_mask_losses",
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


def loss_weights(
    class_weight: float, mask_weight: float, dice_weight: float, num_aux_layers: int
) -> Dict[str, float]:
    """Weights of loss_ce/mask/dice and of their ``_i`` versions for i < num_aux_layers."""
    base = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    weights = dict(base)
    for i in range(num_aux_layers):
        weights.update({f"{k}_{i}": v for k, v in base.items()})
    return weights


def _check_criterion_arguments(
    losses: Tuple[str, ...], num_points: int, oversample_ratio: float, importance_ratio: float
) -> None:
    """ValueError on unknown loss names or, with point sampling, impossible sampling ratios."""
    unknown = [name for name in losses if name not in _KNOWN_LOSSES]
    if unknown:
        raise ValueError(f"SetCriterion: unknown losses {unknown}; known: {_KNOWN_LOSSES}")
    if num_points > 0 and not (oversample_ratio >= 1 and 0 <= importance_ratio <= 1):
        raise ValueError(
            "SetCriterion: need oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1, "
            f"got {oversample_ratio} and {importance_ratio}"
        )


def check_target_labels(targets: Sequence[Dict[str, torch.Tensor]], num_classes: int) -> None:
    """Fail early, with the image at fault, on labels outside [0, K)."""
    for i, target in enumerate(targets):
        labels = target["labels"]
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"SetCriterion: targets[{i}]['labels'] holds values outside "
                f"[0, {num_classes}): {labels.tolist()}"
            )


def class_loss(
    logits: torch.Tensor,
    targets: Sequence[Dict[str, torch.Tensor]],
    indices: Indices,
    class_weight: torch.Tensor,
) -> torch.Tensor:
    """
    Cross-entropy of every query against its matched target's label, or "no object" (K) if it
    is unmatched, as a mean weighted by ``class_weight[class]``.

    Args:
        logits (Tensor): class logits of shape (B, Q, K+1).
        targets, indices: as given to / returned by the matcher.
        class_weight (Tensor): weight of each of the K+1 classes.

    Returns:
        Tensor: scalar loss.
    """
    no_object = len(class_weight) - 1
    classes = torch.full(logits.shape[:2], no_object, dtype=torch.int64, device=logits.device)
    for b, (target, (pred_idx, tgt_idx)) in enumerate(zip(targets, indices)):
        classes[b, pred_idx.to(logits.device)] = target["labels"][tgt_idx].to(logits.device)
    logits = logits.transpose(1, 2)
    if not _is_distributed():
        return F.cross_entropy(logits, classes, weight=class_weight)
    # The weighted mean over the queries of ALL workers (not the mean of the workers' means,
    # which weighs a worker's queries by its own weight sum): the same loss and gradients as
    # one process with the whole batch, whatever each worker's share of matches.
    total = F.cross_entropy(logits, classes, weight=class_weight, reduction="sum")
    return total / average_over_workers(class_weight[classes].sum())


def matched_pairs(
    pred_masks: torch.Tensor, indices: Indices, first: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    The matched predictions and the index of their targets in the batch's target stack.

    Args:
        pred_masks (Tensor): mask logits of shape (B, Q, h, w).
        indices: as returned by the matcher.
        first (Tensor): int64 (B,) index of each image's first target mask in the stack, from
            :func:`stack_target_masks`.

    Returns:
        (Tensor, Tensor): mask logits of shape (M, h, w); int64 target indices of shape (M,).
    """
    batch_idx = torch.cat([torch.full_like(p, b) for b, (p, _) in enumerate(indices)])
    pred_idx = torch.cat([p for p, _ in indices])
    src = pred_masks[batch_idx.to(pred_masks.device), pred_idx.to(pred_masks.device)]
    tgt_idx = torch.cat([t.to(first.device) + first[b] for b, (_, t) in enumerate(indices)])
    return src, tgt_idx


def point_mask_losses(
    src: torch.Tensor,
    tgt: torch.Tensor,
    num_masks: float,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> Dict[str, torch.Tensor]:
    """
    BCE and dice losses of matched predictions (M, h, w) and targets (M, H, W) on
    ``num_points`` points per mask, chosen by PointRend's importance sampling on the
    predictions (``oversample_ratio`` candidates per point, ``importance_sample_ratio`` of
    them where the prediction is most uncertain, the rest uniformly at random).

    Returns:
        dict[str, Tensor]: scalar ``loss_mask`` and ``loss_dice``.
    """
    with torch.no_grad():
        coords = get_uncertain_point_coords_with_randomness(
            src[:, None], point_uncertainty, num_points, oversample_ratio, importance_sample_ratio
        )
        labels = point_sample(tgt[:, None], coords, align_corners=False)[:, 0]
    logits = point_sample(src[:, None], coords, align_corners=False)[:, 0]
    return {
        "loss_mask": sigmoid_bce_loss(logits, labels, num_masks),
        "loss_dice": dice_loss(logits, labels, num_masks),
    }


def mask_losses(
    pred_masks: torch.Tensor,
    masks: Tuple[torch.Tensor, torch.Tensor],
    indices: Indices,
    num_masks: float,
    num_points: int = 0,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
) -> Dict[str, torch.Tensor]:
    """
    Unweighted mask and dice losses of the matched queries: at full resolution (sigmoid focal
    loss) if ``num_points == 0``, else on importance-sampled points (sigmoid BCE, see
    :func:`point_mask_losses`).

    Args:
        pred_masks (Tensor): mask logits of shape (B, Q, h, w).
        masks (Tensor, Tensor): the batch's target masks and the index of each image's
            first one, from :func:`stack_target_masks`.
        indices: as returned by the matcher.
        num_masks (float): normaliser, see :func:`average_num_masks`.
        num_points, oversample_ratio, importance_sample_ratio: point sampling, as in
            :class:`SetCriterion`.

    Returns:
        dict[str, Tensor]: scalar ``loss_mask`` and ``loss_dice``.
    """
    target_masks, first = masks
    src, tgt_idx = matched_pairs(pred_masks, indices, first)
    if src.shape[0] == 0:
        # No segment in the whole batch: zero losses that still belong to the graph.
        zero = pred_masks.sum() * 0.0
        return {"loss_mask": zero, "loss_dice": zero.clone()}
    if num_points > 0:
        tgt = target_masks[tgt_idx.to(target_masks.device)].to(src)
        return point_mask_losses(
            src, tgt, num_masks, num_points, oversample_ratio, importance_sample_ratio
        )
    focal, dice = sigmoid_focal_dice_loss(src, target_masks, tgt_idx)
    return {"loss_mask": focal.sum() / num_masks, "loss_dice": dice.sum() / num_masks}


class SetCriterion(nn.Module):
    """
    MaskFormer's set-prediction loss (:paper:`MaskFormer`, section 3.2): match predictions to
    targets, then

    * ``loss_ce``: cross-entropy over K+1 classes of every query; unmatched queries must predict
      "no object", whose class weight is ``no_object_weight`` (weighted mean over queries);
    * ``loss_mask`` / ``loss_dice``: mask losses of the matched queries. With ``num_points == 0``
      (MaskFormer) predicted masks are bilinearly upsampled to the target resolution and the mask
      loss is a sigmoid focal loss; with ``num_points > 0`` (Mask2Former) both are compared on
      points chosen by uncertainty-based importance sampling and the mask loss is a sigmoid BCE.

    Losses of ``outputs["aux_outputs"][i]`` (deep supervision; matched anew) get the suffix
    ``_i``. Every loss is returned multiplied by its weight in ``loss_weight``.
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        matcher: nn.Module,
        no_object_weight: float,
        class_weight: float = 1.0,
        mask_weight: float = 1.0,
        dice_weight: float = 1.0,
        num_aux_layers: int = 0,
        losses: Iterable[str] = ("labels", "masks"),
        num_points: int = 0,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ):
        """
        Args:
            num_classes (int): K, the number of classes without "no object".
            matcher (nn.Module): returns per-image (prediction, target) index pairs.
            no_object_weight (float): cross-entropy class weight of "no object".
            class_weight, mask_weight, dice_weight (float): weights of ``loss_ce``,
                ``loss_mask`` and ``loss_dice``, also of their ``_i`` versions.
            num_aux_layers (int): number of deep-supervision outputs that get losses (L - 1
                with deep supervision, else 0); more aux outputs are an error.
            losses (iterable[str]): which losses to compute: "labels" and/or "masks".
            num_points (int): 0 for full-resolution mask losses, > 0 for point-sampled ones.
            oversample_ratio (float): candidate points per sampled point (>= 1).
            importance_sample_ratio (float): share of points taken where the prediction is most
                uncertain (the rest uniformly at random), in [0, 1].
        """
        super().__init__()
        losses = tuple(losses)
        _check_criterion_arguments(losses, num_points, oversample_ratio, importance_sample_ratio)
        self.num_classes = num_classes
        self.matcher = matcher
        self.no_object_weight = no_object_weight
        self.num_aux_layers = num_aux_layers
        self.loss_weight = loss_weights(class_weight, mask_weight, dice_weight, num_aux_layers)
        self.losses = losses
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        self.register_buffer("empty_weight", empty_weight)

    @classmethod
    def from_config(cls, cfg) -> Dict[str, object]:
        mf = cfg.MODEL.MASK_FORMER
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "matcher": HungarianMatcher(cfg),
            "no_object_weight": mf.NO_OBJECT_WEIGHT,
            "class_weight": mf.CLASS_WEIGHT,
            "mask_weight": mf.MASK_WEIGHT,
            "dice_weight": mf.DICE_WEIGHT,
            # The predictor returns the outputs of its L - 1 earlier layers with deep supervision.
            "num_aux_layers": mf.DEC_LAYERS - 1 if mf.DEEP_SUPERVISION else 0,
            "num_points": mf.TRAIN_NUM_POINTS,
            "oversample_ratio": mf.OVERSAMPLE_RATIO,
            "importance_sample_ratio": mf.IMPORTANCE_SAMPLE_RATIO,
        }

    def forward(
        self, outputs: Dict[str, object], targets: List[Dict[str, torch.Tensor]]
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs (dict): ``"pred_logits"`` (B, Q, K+1), ``"pred_masks"`` (B, Q, h, w) and
                optionally ``"aux_outputs"``, a list of at most ``num_aux_layers`` dicts with
                the same two keys.
            targets (list[dict]): B dicts with ``"labels"`` int64 (N,) and ``"masks"``
                (N, H, W), bool or float.

        Returns:
            dict[str, Tensor]: weighted scalar losses ``loss_ce``, ``loss_mask``, ``loss_dice``
            and their ``_i`` versions for every auxiliary output i.
        """
        num_aux = len(outputs.get("aux_outputs", []))
        if num_aux > self.num_aux_layers:
            raise ValueError(
                f"SetCriterion: {num_aux} aux_outputs, but loss weights for {self.num_aux_layers}"
                " (MODEL.MASK_FORMER.DEC_LAYERS - 1 with DEEP_SUPERVISION)"
            )
        check_target_labels(targets, self.num_classes)
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
        return {name: value * self.loss_weight[name] for name, value in losses.items()}

    def _layer_losses(
        self,
        outputs: Dict[str, torch.Tensor],
        targets: List[Dict[str, torch.Tensor]],
        masks: Tuple[torch.Tensor, torch.Tensor],
        num_masks: float,
    ) -> Dict[str, torch.Tensor]:
        """Unweighted losses of one decoder layer's outputs (matching included)."""
        indices = self.matcher(outputs, targets)
        losses = {}
        if "labels" in self.losses:
            logits = outputs["pred_logits"]
            losses["loss_ce"] = class_loss(logits, targets, indices, self.empty_weight)
        if "masks" in self.losses:
            sampling = (self.num_points, self.oversample_ratio, self.importance_sample_ratio)
            losses.update(mask_losses(outputs["pred_masks"], masks, indices, num_masks, *sampling))
        return losses

    def extra_repr(self) -> str:
        weights = ", ".join(
            f"{k}={self.loss_weight[k]}" for k in ("loss_ce", "loss_mask", "loss_dice")
        )
        return (
            f"num_classes={self.num_classes}, no_object_weight={self.no_object_weight}, "
            f"losses={self.losses}, weights=({weights}), num_aux_layers={self.num_aux_layers}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}"
        )
