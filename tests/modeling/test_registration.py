# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Importing mask_former registers every model component under its config name."""

from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY

import mask_former  # noqa: F401
from mask_former.modeling import PIXEL_DECODER_REGISTRY


def _names(registry):
    return {name for name, _ in registry}


def test_components_are_registered():
    assert "MaskFormer" in _names(META_ARCH_REGISTRY)
    assert {"MaskFormerHead", "PerPixelBaselineHead", "PerPixelBaselinePlusHead"} <= _names(
        SEM_SEG_HEADS_REGISTRY
    )
    assert {"BasePixelDecoder", "TransformerEncoderPixelDecoder"} <= _names(PIXEL_DECODER_REGISTRY)
    assert "D2SwinTransformer" in _names(BACKBONE_REGISTRY)


def test_pixel_decoders_are_not_heads():
    # Pixel decoders have their own registry; they are not semantic-segmentation heads.
    assert not {"BasePixelDecoder", "TransformerEncoderPixelDecoder"} & _names(
        SEM_SEG_HEADS_REGISTRY
    )
