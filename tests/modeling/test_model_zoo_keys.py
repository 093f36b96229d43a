# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
State-dict names, shapes and parameter counts of full-size model-zoo models. Models are built
on the meta device (no memory, no initialisation cost): only names and shapes matter here.
"""

import pytest
import torch
from detectron2.modeling import build_model
from model_testing import REFERENCE_DIR, REPO_ROOT, base_cfg, set_keys

ADE_R50 = "ade20k-150/maskformer_R50_bs16_160k"
COCO_SWIN_T = "coco-panoptic/swin/maskformer_panoptic_swin_tiny_bs64_554k"


def _build_meta(cfg):
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        return build_model(cfg)


def _config_file_cfg(rel: str):
    cfg = base_cfg()
    cfg.merge_from_file(str(REPO_ROOT / "configs" / f"{rel}.yaml"))
    return cfg


def _names_and_shapes(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def _reference_list(rel: str):
    rows = []
    for line in (REFERENCE_DIR / "model_zoo_keys" / f"{rel}.txt").read_text().splitlines():
        name, shape = line.split(" ", 1)
        rows.append((name, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


def _without_criterion(rows):
    return [r for r in rows if not r[0].startswith("criterion.")]


@pytest.mark.parametrize("rel", [ADE_R50, COCO_SWIN_T])
def test_config_builds_reference_state_dict(rel):
    model = _build_meta(_config_file_cfg(rel))
    expected = _without_criterion(_reference_list(rel))
    assert len(expected) > 300
    assert _without_criterion(_names_and_shapes(model)) == expected


def test_panoptic_config_takes_thing_classes_from_training_metadata():
    model = _build_meta(_config_file_cfg(COCO_SWIN_T))
    assert model.panoptic_on and model.size_divisibility == 0
    assert model.thing_ids == set(range(80))  # COCO panoptic: 80 things, then 53 stuff
    assert _build_meta(_config_file_cfg(ADE_R50)).thing_ids == set()


# (overrides of the ADE20K R50 config, #state_dict keys, #parameters) from the reference.
ADE_VARIANTS = {
    "per_pixel_baseline_R50": (
        {
            "MODEL.META_ARCHITECTURE": "SemanticSegmentor",
            "MODEL.SEM_SEG_HEAD.NAME": "PerPixelBaselineHead",
        },
        290,
        31_033_942,
    ),
    "per_pixel_baseline_plus_R50": (
        {
            "MODEL.META_ARCHITECTURE": "SemanticSegmentor",
            "MODEL.SEM_SEG_HEAD.NAME": "PerPixelBaselinePlusHead",
            "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 150,
        },
        407,
        41_228_736,
    ),
    "maskformer_R101c": (
        {
            "MODEL.BACKBONE.NAME": "build_resnet_deeplab_backbone",
            "MODEL.RESNETS.DEPTH": 101,
            "MODEL.RESNETS.STEM_TYPE": "deeplab",
            "MODEL.RESNETS.STEM_OUT_CHANNELS": 128,
            "MODEL.RESNETS.RES5_MULTI_GRID": [1, 2, 4],
        },
        675,
        60_318_039,
    ),
    "maskformer_swin_tiny": (
        {
            "MODEL.BACKBONE.NAME": "D2SwinTransformer",
            "MODEL.SWIN.EMBED_DIM": 96,
            "MODEL.SWIN.DEPTHS": [2, 2, 6, 2],
            "MODEL.SWIN.NUM_HEADS": [3, 6, 12, 24],
            "MODEL.SWIN.WINDOW_SIZE": 7,
        },
        334,
        41_757_009,
    ),
    "maskformer_swin_large": (
        {
            "MODEL.BACKBONE.NAME": "D2SwinTransformer",
            "MODEL.SWIN.EMBED_DIM": 192,
            "MODEL.SWIN.DEPTHS": [2, 2, 18, 2],
            "MODEL.SWIN.NUM_HEADS": [6, 12, 24, 48],
            "MODEL.SWIN.WINDOW_SIZE": 12,
            "MODEL.SWIN.PRETRAIN_IMG_SIZE": 384,
        },
        None,
        211_575_627,
    ),
    "maskformer_panoptic_R50_coco": (
        {
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 133,
            "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "TransformerEncoderPixelDecoder",
            "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 6,
            "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "transformer_encoder",
        },
        482,
        45_012_038,
    ),
}


@pytest.mark.parametrize("variant", sorted(ADE_VARIANTS))
def test_variant_key_and_parameter_counts(variant):
    overrides, num_keys, num_params = ADE_VARIANTS[variant]
    model = _build_meta(set_keys(_config_file_cfg(ADE_R50), overrides))
    if num_keys is not None:
        assert len(model.state_dict()) == num_keys
    assert sum(p.numel() for p in model.parameters()) == num_params


def test_panoptic_r50_pixel_decoder_layout():
    overrides = ADE_VARIANTS["maskformer_panoptic_R50_coco"][0]
    model = _build_meta(set_keys(_config_file_cfg(ADE_R50), overrides))
    shapes = dict(_names_and_shapes(model))
    assert shapes["sem_seg_head.pixel_decoder.layer_4.weight"] == (256, 256, 3, 3)
    assert shapes["sem_seg_head.pixel_decoder.input_proj.weight"] == (256, 2048, 1, 1)
    assert "sem_seg_head.pixel_decoder.transformer.encoder.layers.5.linear2.weight" in shapes
    assert "sem_seg_head.pixel_decoder.transformer.encoder.norm.weight" not in shapes  # post-norm
    assert not any(k.startswith("sem_seg_head.predictor.input_proj") for k in shapes)
