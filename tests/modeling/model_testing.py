# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Shared helpers of the model tests: configs, fixture locations, tiny models."""

from pathlib import Path
from typing import Dict, List

import torch

from mask_former import get_mask_former_cfg

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_DIR = REPO_ROOT / ".." / "shared" / "reference"


def fixture_dirs() -> List[Path]:
    """Every reference fixture folder (one holding an io.npz)."""
    return sorted(p.parent for p in REFERENCE_DIR.glob("*/io.npz"))


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
        setattr(node, last, value)
    return cfg


def tiny_swin_cfg(**overrides):
    """A small MaskFormer (Swin, BasePixelDecoder, 2 decoder layers) that runs in ~0.1 s."""
    cfg = base_cfg()
    set_keys(
        cfg,
        {
            "MODEL.META_ARCHITECTURE": "MaskFormer",
            "MODEL.BACKBONE.NAME": "D2SwinTransformer",
            "MODEL.SWIN.EMBED_DIM": 16,
            "MODEL.SWIN.DEPTHS": [1, 1, 2, 1],
            "MODEL.SWIN.NUM_HEADS": [1, 1, 2, 2],
            "MODEL.SWIN.DROP_PATH_RATE": 0.1,
            "MODEL.SEM_SEG_HEAD.NAME": "MaskFormerHead",
            "MODEL.SEM_SEG_HEAD.IN_FEATURES": ["res2", "res3", "res4", "res5"],
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 4,
            "MODEL.SEM_SEG_HEAD.CONVS_DIM": 32,
            "MODEL.SEM_SEG_HEAD.MASK_DIM": 32,
            "MODEL.SEM_SEG_HEAD.NORM": "GN",
            "MODEL.MASK_FORMER.HIDDEN_DIM": 32,
            "MODEL.MASK_FORMER.NHEADS": 2,
            "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 64,
            "MODEL.MASK_FORMER.DEC_LAYERS": 2,
            "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 5,
            "MODEL.MASK_FORMER.DROPOUT": 0.0,
            "DATASETS.TRAIN": (),
        },
    )
    return set_keys(cfg, overrides)


def tiny_resnet_cfg(**overrides):
    """A small MaskFormer on a ResNet-18 with the transformer-encoder pixel decoder."""
    cfg = tiny_swin_cfg()
    set_keys(
        cfg,
        {
            "MODEL.BACKBONE.NAME": "build_resnet_backbone",
            "MODEL.BACKBONE.FREEZE_AT": 0,
            "MODEL.RESNETS.DEPTH": 18,
            "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
            "MODEL.RESNETS.STEM_TYPE": "basic",
            "MODEL.RESNETS.STRIDE_IN_1X1": False,
            "MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
            "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "TransformerEncoderPixelDecoder",
            "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 1,
            "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "transformer_encoder",
            "MODEL.MASK_FORMER.PRE_NORM": True,
        },
    )
    return set_keys(cfg, overrides)


def random_images(sizes, seed: int = 0) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand((3, h, w), generator=g) * 255 for h, w in sizes]
