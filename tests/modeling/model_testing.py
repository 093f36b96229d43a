# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Shared helpers of the model tests: configs, fixture locations, tiny models.

The tiny MaskFormer of the tests is defined here once: :data:`TINY_HEAD` (a 32-wide head with
2 decoder layers) on :data:`TINY_SWIN` or :data:`TINY_RESNET18`, built by :func:`tiny_cfg`.
Tests that need other sizes override keys of it rather than writing a config of their own.
"""

from typing import Dict, List

import torch

from mask_former import get_mask_former_cfg
from tests.paths import REFERENCE, REPO_ROOT  # noqa: F401  (REPO_ROOT: for the model tests)

FEATURES = ["res2", "res3", "res4", "res5"]

# The head of every tiny MaskFormer: BasePixelDecoder on res5, 32 channels, GroupNorm, a
# 2-layer post-norm transformer decoder, no dropout (so training steps are deterministic).
TINY_HEAD: Dict[str, object] = {
    "MODEL.META_ARCHITECTURE": "MaskFormer",
    "MODEL.SEM_SEG_HEAD.NAME": "MaskFormerHead",
    "MODEL.SEM_SEG_HEAD.IN_FEATURES": FEATURES,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": 32,
    "MODEL.SEM_SEG_HEAD.MASK_DIM": 32,
    "MODEL.SEM_SEG_HEAD.NORM": "GN",
    "MODEL.MASK_FORMER.HIDDEN_DIM": 32,
    "MODEL.MASK_FORMER.NHEADS": 2,
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 64,
    "MODEL.MASK_FORMER.DEC_LAYERS": 2,
    "MODEL.MASK_FORMER.DROPOUT": 0.0,
}

# A Swin of 16 channels and 5 blocks (with drop path, so training draws random numbers).
TINY_SWIN: Dict[str, object] = {
    "MODEL.BACKBONE.NAME": "D2SwinTransformer",
    "MODEL.SWIN.EMBED_DIM": 16,
    "MODEL.SWIN.DEPTHS": [1, 1, 2, 1],
    "MODEL.SWIN.NUM_HEADS": [1, 1, 2, 2],
    "MODEL.SWIN.DROP_PATH_RATE": 0.1,
}

# detectron2's ResNet-18, trained from the stem on (FrozenBN, detectron2's default norm).
TINY_RESNET18: Dict[str, object] = {
    "MODEL.BACKBONE.NAME": "build_resnet_backbone",
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.RESNETS.DEPTH": 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
    "MODEL.RESNETS.STEM_TYPE": "basic",
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.RESNETS.OUT_FEATURES": FEATURES,
}

BACKBONES = {"swin": TINY_SWIN, "resnet18": TINY_RESNET18}


def fixture_dirs() -> List:
    """Every reference fixture folder (one holding an io.npz)."""
    return sorted(p.parent for p in REFERENCE.glob("*/io.npz"))


def base_cfg():
    cfg = get_mask_former_cfg()
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def set_keys(cfg, overrides: Dict[str, object]):
    """Set dotted config keys, e.g. {"MODEL.SWIN.EMBED_DIM": 32}."""
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = getattr(node, part)
        # A copy of a list: configs built from the same overrides must not share one.
        setattr(node, last, list(value) if isinstance(value, list) else value)
    return cfg


def tiny_cfg(backbone: str = "swin", **overrides):
    """
    The tiny MaskFormer (:data:`TINY_HEAD`) on the ``backbone`` "swin" or "resnet18", on the
    CPU, with 4 classes and 5 queries and no training set; then ``overrides`` (dotted keys).
    """
    cfg = base_cfg()
    set_keys(cfg, {**TINY_HEAD, **BACKBONES[backbone]})
    set_keys(
        cfg,
        {
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 4,
            "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 5,
            "DATASETS.TRAIN": (),
        },
    )
    return set_keys(cfg, overrides)


def tiny_swin_cfg(**overrides):
    """A small MaskFormer (Swin, BasePixelDecoder, 2 decoder layers) that runs in ~0.1 s."""
    return tiny_cfg("swin", **overrides)


def tiny_resnet_cfg(**overrides):
    """A small MaskFormer on a ResNet-18 with the transformer-encoder pixel decoder."""
    encoder = {
        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "TransformerEncoderPixelDecoder",
        "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 1,
        "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "transformer_encoder",
        "MODEL.MASK_FORMER.PRE_NORM": True,
    }
    return tiny_cfg("resnet18", **{**encoder, **overrides})


def random_images(sizes, seed: int = 0) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand((3, h, w), generator=g) * 255 for h, w in sizes]
