# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Importing mask_former registers every model component under its config name; pixel decoders
registered the original way (as semantic-segmentation heads) are found too.
"""

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import (
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    SEM_SEG_HEADS_REGISTRY,
    build_model,
)
from model_testing import random_images, tiny_swin_cfg
from torch import nn

import mask_former  # noqa: F401
from mask_former.modeling import PIXEL_DECODER_REGISTRY, build_pixel_decoder


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


class UserPixelDecoderOfTest(nn.Module):
    """A pixel decoder written for the original MaskFormer: a semantic-segmentation head built
    with ``(cfg, input_shape)`` that provides ``forward_features``."""

    def __init__(self, cfg, input_shape):
        super().__init__()
        self.proj = nn.Conv2d(input_shape["res2"].channels, cfg.MODEL.SEM_SEG_HEAD.MASK_DIM, 1)

    def forward_features(self, features):
        return self.proj(features["res2"]), None

    def forward(self, features):
        return self.forward_features(features)


# The same name in both registries: the project's registry must win.
ProjectShadowOfTest = type("ShadowedPixelDecoderOfTest", (UserPixelDecoderOfTest,), {})
HeadShadowOfTest = type("ShadowedPixelDecoderOfTest", (UserPixelDecoderOfTest,), {})

for _registry, _cls in (
    (SEM_SEG_HEADS_REGISTRY, UserPixelDecoderOfTest),
    (PIXEL_DECODER_REGISTRY, ProjectShadowOfTest),
    (SEM_SEG_HEADS_REGISTRY, HeadShadowOfTest),
):
    if _cls.__name__ not in _names(_registry):
        _registry.register(_cls)


def _input_shape():
    return {f"res{i}": ShapeSpec(channels=8 * 2**i, stride=2**i) for i in range(2, 6)}


def test_pixel_decoder_registered_as_a_head_the_original_way_is_found():
    cfg = tiny_swin_cfg(**{"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "UserPixelDecoderOfTest"})
    model = build_model(cfg).eval()
    assert isinstance(model.sem_seg_head.pixel_decoder, UserPixelDecoderOfTest)
    with torch.no_grad():
        (out,) = model([{"image": random_images([(64, 96)])[0]}])
    assert out["sem_seg"].shape == (4, 64, 96)


def test_project_pixel_decoder_registry_is_looked_up_first():
    cfg = tiny_swin_cfg(**{"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "ShadowedPixelDecoderOfTest"})
    assert type(build_pixel_decoder(cfg, _input_shape())) is ProjectShadowOfTest


def test_head_without_forward_features_is_not_a_pixel_decoder():
    # SemSegFPNHead is a detectron2 head, not a pixel decoder.
    cfg = tiny_swin_cfg(**{"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "SemSegFPNHead"})
    with pytest.raises(TypeError, match="SemSegFPNHead.*forward_features"):
        build_pixel_decoder(cfg, _input_shape())


def test_unknown_pixel_decoder_names_both_registries():
    cfg = tiny_swin_cfg(**{"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "NoSuchDecoder"})
    with pytest.raises(KeyError, match="NoSuchDecoder.*SEM_SEG_HEADS_REGISTRY"):
        build_pixel_decoder(cfg, _input_shape())
