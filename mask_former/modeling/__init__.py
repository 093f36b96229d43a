# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
MaskFormer model components. Importing this package registers the meta-architecture
(META_ARCH_REGISTRY), the heads (SEM_SEG_HEADS_REGISTRY), the pixel decoders
(PIXEL_DECODER_REGISTRY) and the Swin backbone (BACKBONE_REGISTRY).
"""

from .backbone import D2SwinTransformer
from .criterion import SetCriterion
from .heads import MaskFormerHead, PerPixelBaselineHead, PerPixelBaselinePlusHead
from .inference import (
    ResizedMaskLogits,
    instance_inference,
    panoptic_inference,
    resize_mask_logits,
    semantic_inference,
)
from .matcher import HungarianMatcher
from .meta_arch import MaskFormer
from .pixel_decoder import (
    PIXEL_DECODER_REGISTRY,
    BasePixelDecoder,
    TransformerEncoderPixelDecoder,
    build_pixel_decoder,
)
from .transformer import TransformerPredictor

__all__ = [
    "D2SwinTransformer",
    "SetCriterion",
    "HungarianMatcher",
    "MaskFormer",
    "MaskFormerHead",
    "PerPixelBaselineHead",
    "PerPixelBaselinePlusHead",
    "PIXEL_DECODER_REGISTRY",
    "BasePixelDecoder",
    "TransformerEncoderPixelDecoder",
    "build_pixel_decoder",
    "TransformerPredictor",
    "semantic_inference",
    "panoptic_inference",
    "instance_inference",
    "ResizedMaskLogits",
    "resize_mask_logits",
]
