# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Segmentation heads (registered in detectron2's SEM_SEG_HEADS_REGISTRY): the MaskFormer head
(pixel decoder + transformer predictor) and the two per-pixel baselines of the paper, which run
under detectron2's ``SemanticSegmentor``.

Shape shorthand in this module:

    B: batch size
    Q: number of queries
    K: number of classes
    H, W: height and width of the padded input image
"""

from typing import Dict, List, Optional, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from .checkpoint_layout import PIXEL_DECODER_LAYOUT_VERSION, register_pixel_decoder_upgrade
from .pixel_decoder import build_pixel_decoder
from .transformer import TransformerPredictor

__all__ = ["MaskFormerHead", "PerPixelBaselineHead", "PerPixelBaselinePlusHead"]

# Values of TRANSFORMER_IN_FEATURE that feed the predictor with the pixel decoder's encoder
# output, or (as Mask2Former allows) with the per-pixel embeddings the masks are made from.
TRANSFORMER_ENCODER = "transformer_encoder"
PIXEL_EMBEDDING = "pixel_embedding"


def _predictor_in_channels(cfg, input_shape: Dict[str, ShapeSpec]) -> int:
    in_feature = cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
    if in_feature == TRANSFORMER_ENCODER:
        return cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM
    if in_feature == PIXEL_EMBEDDING:
        return cfg.MODEL.SEM_SEG_HEAD.MASK_DIM
    if in_feature not in input_shape:
        raise ValueError(
            f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = {in_feature!r} is neither "
            f"{TRANSFORMER_ENCODER!r}, {PIXEL_EMBEDDING!r} nor a backbone output "
            f"({sorted(input_shape)})"
        )
    return input_shape[in_feature].channels


class _PixelDecoderAndPredictor(nn.Module):
    """
    Shared part of the heads: run the pixel decoder, then the transformer predictor on either
    the encoder output of the pixel decoder or a backbone feature. State dicts in the old
    (model-zoo) key layout are upgraded on load (see :mod:`mask_former.modeling.checkpoint_layout`).
    """

    # Saved in state-dict metadata; an earlier or missing version means the old key layout.
    _version = PIXEL_DECODER_LAYOUT_VERSION

    def __init__(self, pixel_decoder: nn.Module, predictor: nn.Module, transformer_in_feature):
        super().__init__()
        register_pixel_decoder_upgrade(self)
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor
        self.transformer_in_feature = transformer_in_feature

    def _predict(self, features: Dict[str, torch.Tensor]) -> Dict:
        mask_features, encoder_features = self.pixel_decoder.forward_features(features)
        if self.transformer_in_feature == TRANSFORMER_ENCODER:
            if encoder_features is None:
                raise ValueError(
                    f"TRANSFORMER_IN_FEATURE is {TRANSFORMER_ENCODER!r} but pixel decoder "
                    f"{type(self.pixel_decoder).__name__} has no transformer encoder"
                )
            return self.predictor(encoder_features, mask_features)
        if self.transformer_in_feature == PIXEL_EMBEDDING:
            return self.predictor(mask_features, mask_features)
        return self.predictor(features[self.transformer_in_feature], mask_features)


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(_PixelDecoderAndPredictor):
    """
    The MaskFormer head: pixel decoder for per-pixel embeddings, transformer predictor for Q
    (class, mask embedding) pairs. Returns the predictor's dict ("pred_logits",
    "pred_masks", "aux_outputs").
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        transformer_predictor: nn.Module,
        transformer_in_feature: str,
    ):
        """
        Args:
            num_classes: K.
            pixel_decoder: module with ``forward_features(features)``.
            transformer_predictor: :class:`TransformerPredictor`.
            transformer_in_feature: backbone feature name, "transformer_encoder" to feed
                the pixel decoder's encoder output to the predictor, or "pixel_embedding" to
                feed it the per-pixel embeddings (mask features, stride 4).
        """
        super().__init__(pixel_decoder, transformer_predictor, transformer_in_feature)
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "transformer_predictor": TransformerPredictor(
                cfg, _predictor_in_channels(cfg, input_shape), mask_classification=True
            ),
            "transformer_in_feature": cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE,
        }

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict:
        """
        Args:
            features: backbone outputs by name.
        Returns:
            "pred_logits" (B, Q, K + 1), "pred_masks" (B, Q, H/4, W/4), and "aux_outputs"
            (list of such dicts, one per earlier decoder layer) with deep supervision.
        """
        return self._predict(features)


def _per_pixel_loss(
    logits: torch.Tensor, targets: torch.Tensor, ignore_value: int, loss_weight: float
) -> torch.Tensor:
    """Cross-entropy of stride-4 logits (B, K, H/4, W/4) upsampled x4 against (B, H, W)."""
    logits = F.interpolate(logits.float(), scale_factor=4, mode="bilinear", align_corners=False)
    return (
        F.cross_entropy(logits, targets, reduction="mean", ignore_index=ignore_value) * loss_weight
    )


def _upsample_x4(logits: torch.Tensor) -> torch.Tensor:
    return F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)


@SEM_SEG_HEADS_REGISTRY.register()
class PerPixelBaselineHead(nn.Module):
    """
    Per-pixel classification baseline: pixel decoder followed by a 1x1 conv (``predictor``)
    to K class logits, trained with per-pixel cross-entropy (``loss_sem_seg``). State dicts in
    the old (model-zoo) key layout are upgraded on load
    (see :mod:`mask_former.modeling.checkpoint_layout`).
    """

    # Saved in state-dict metadata; an earlier or missing version means the old key layout.
    _version = PIXEL_DECODER_LAYOUT_VERSION

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        mask_dim: int,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
    ):
        """
        Args:
            num_classes: K.
            pixel_decoder: module with ``forward_features(features)``.
            mask_dim: channels of the pixel decoder's mask features.
            loss_weight: factor of ``loss_sem_seg``.
            ignore_value: target label excluded from the loss.
        """
        super().__init__()
        register_pixel_decoder_upgrade(self)
        self.pixel_decoder = pixel_decoder
        self.predictor = Conv2d(mask_dim, num_classes, kernel_size=1)
        weight_init.c2_msra_fill(self.predictor)
        self.loss_weight = loss_weight
        self.ignore_value = ignore_value

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "num_classes": head.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "mask_dim": head.MASK_DIM,
            "loss_weight": head.LOSS_WEIGHT,
            "ignore_value": head.IGNORE_VALUE,
        }

    def forward(
        self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None
    ) -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """
        Args:
            features: backbone outputs by name.
            targets: (B, H, W) int64 labels, required in training.
        Returns:
            in training (None, {"loss_sem_seg": loss}); in inference ((B, K, H, W) logits, {}).
        """
        logits = self.predictor(self.pixel_decoder.forward_features(features)[0])
        if self.training:
            loss = _per_pixel_loss(logits, targets, self.ignore_value, self.loss_weight)
            return None, {"loss_sem_seg": loss}
        return _upsample_x4(logits), {}


@SEM_SEG_HEADS_REGISTRY.register()
class PerPixelBaselinePlusHead(_PixelDecoderAndPredictor):
    """
    Per-pixel baseline with the transformer predictor: the predictor (without class head)
    runs with Q = K queries and its Q mask logits are read as per-class logits, trained with
    per-pixel cross-entropy on the last layer (``loss_sem_seg``) and, with deep supervision,
    on every earlier layer (``loss_sem_seg_{i}``).
    """

    @configurable
    def __init__(
        self,
        *,
        pixel_decoder: nn.Module,
        transformer_predictor: nn.Module,
        transformer_in_feature: str,
        deep_supervision: bool,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
    ):
        """
        Args:
            pixel_decoder, transformer_predictor, transformer_in_feature: as in
                :class:`MaskFormerHead`; the predictor has no class head, and its number of
                queries is K.
            deep_supervision: add a loss for every earlier decoder layer.
            loss_weight, ignore_value: as in :class:`PerPixelBaselineHead`.
        """
        super().__init__(pixel_decoder, transformer_predictor, transformer_in_feature)
        self.deep_supervision = deep_supervision
        self.loss_weight = loss_weight
        self.ignore_value = ignore_value

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        queries = cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES
        if queries != head.NUM_CLASSES:
            raise ValueError(
                "PerPixelBaselinePlusHead reads one query per class: "
                f"MODEL.MASK_FORMER.NUM_OBJECT_QUERIES ({queries}) must equal "
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES ({head.NUM_CLASSES})"
            )
        return {
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "transformer_predictor": TransformerPredictor(
                cfg, _predictor_in_channels(cfg, input_shape), mask_classification=False
            ),
            "transformer_in_feature": cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE,
            "deep_supervision": cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION,
            "loss_weight": head.LOSS_WEIGHT,
            "ignore_value": head.IGNORE_VALUE,
        }

    def forward(
        self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None
    ) -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """Same contract as :meth:`PerPixelBaselineHead.forward`."""
        outputs = self._predict(features)
        if not self.training:
            return _upsample_x4(outputs["pred_masks"]), {}
        layers: List[torch.Tensor] = [outputs["pred_masks"]]
        if self.deep_supervision:
            layers += [aux["pred_masks"] for aux in outputs["aux_outputs"]]
        names = ["loss_sem_seg"] + [f"loss_sem_seg_{i}" for i in range(len(layers) - 1)]
        return None, {
            name: _per_pixel_loss(logits, targets, self.ignore_value, self.loss_weight)
            for name, logits in zip(names, layers)
        }
