# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Every config builds its model, and model-zoo configs build exactly the original models:
the same state-dict names and shapes (two full lists in shared/reference/model_zoo_keys) and
the same numbers of keys and parameters (reference-facts section 3.6), both from the config
files and from the ADE20K R50 config with the overrides that make the other variants.

Models are built on the meta device: names and shapes are all that matter here, and a
full-size build then takes a fraction of a second instead of several on a small CPU.
"""

import functools
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

from mask_former import load_config
from tests.modeling.model_testing import set_keys
from tests.paths import CONFIGS, MODEL_ZOO_KEYS

ALL_YAML = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml"))
ADE_R50 = "ade20k-150/maskformer_R50_bs16_160k"
COCO_SWIN_T = "coco-panoptic/swin/maskformer_panoptic_swin_tiny_bs64_554k"

# config -> (#state-dict keys including criterion buffers, #parameters), measured on the
# models built by the original implementation.
REFERENCE_COUNTS = {
    "ade20k-150/maskformer_R50_bs16_160k": (410, 41_254_743),
    "ade20k-150/maskformer_R101_bs16_160k": (None, 60_194_647),
    "ade20k-150/maskformer_R101c_bs16_160k": (675, 60_318_039),
    "ade20k-150/swin/maskformer_swin_tiny_bs16_160k": (334, 41_757_009),
    "ade20k-150/swin/maskformer_swin_large_IN21k_384_bs16_160k_res640": (None, 211_575_627),
    "ade20k-150/per_pixel_baseline_R50_bs16_160k": (290, 31_033_942),
    "ade20k-150/per_pixel_baseline_plus_R50_bs16_160k": (407, 41_228_736),
    "coco-panoptic/maskformer_panoptic_R50_bs64_554k": (482, 45_012_038),
}

_SWIN_TINY = {
    "MODEL.BACKBONE.NAME": "D2SwinTransformer",
    "MODEL.SWIN.EMBED_DIM": 96,
    "MODEL.SWIN.DEPTHS": [2, 2, 6, 2],
    "MODEL.SWIN.NUM_HEADS": [3, 6, 12, 24],
    "MODEL.SWIN.WINDOW_SIZE": 7,
}

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
    "maskformer_swin_tiny": (_SWIN_TINY, 334, 41_757_009),
    "maskformer_swin_large": (
        {
            **_SWIN_TINY,
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


def _config(relative_path: str):
    return load_config(CONFIGS / relative_path, cpu_fallback=False, freeze=False)


def _build_meta(cfg):
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        return build_model(cfg)


@functools.lru_cache(maxsize=None)
def build_on_meta(relative_path: str):
    cfg = _config(relative_path)
    return cfg, _build_meta(cfg)


def _names_and_shapes(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def _reference_rows(name: str):
    rows = []
    for line in (MODEL_ZOO_KEYS / f"{name}.txt").read_text().splitlines():
        key, shape = line.split(" ", 1)
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


def _without_criterion(rows):
    return [row for row in rows if not row[0].startswith("criterion.")]


def _num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("relative_path", ALL_YAML)
def test_every_config_builds_its_model(relative_path):
    cfg, model = build_on_meta(relative_path)
    if not Path(relative_path).name.startswith("Base-"):
        assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
        assert cfg.MODEL.META_ARCHITECTURE in ("MaskFormer", "SemanticSegmentor")
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES > 0


@pytest.mark.parametrize("name", [ADE_R50, COCO_SWIN_T])
def test_state_dict_names_and_shapes_match_the_original(name):
    _, model = build_on_meta(f"{name}.yaml")
    expected = _without_criterion(_reference_rows(name))
    assert len(expected) > 300
    assert _without_criterion(_names_and_shapes(model)) == expected


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_key_and_parameter_counts_match_the_original(name):
    num_keys, num_params = REFERENCE_COUNTS[name]
    _, model = build_on_meta(f"{name}.yaml")
    if num_keys is not None:
        assert len(model.state_dict()) == num_keys
    assert _num_params(model) == num_params


@pytest.mark.parametrize("variant", sorted(ADE_VARIANTS))
def test_variant_key_and_parameter_counts(variant):
    """The ADE20K R50 config with a variant's overrides builds the variant's original model."""
    overrides, num_keys, num_params = ADE_VARIANTS[variant]
    model = _build_meta(set_keys(_config(f"{ADE_R50}.yaml"), overrides))
    if num_keys is not None:
        assert len(model.state_dict()) == num_keys
    assert _num_params(model) == num_params


def test_panoptic_config_takes_thing_classes_from_training_metadata():
    _, model = build_on_meta(f"{COCO_SWIN_T}.yaml")
    assert model.panoptic_on and model.size_divisibility == 0
    assert model.thing_ids == set(range(80))  # COCO panoptic: 80 things, then 53 stuff
    assert build_on_meta(f"{ADE_R50}.yaml")[1].thing_ids == set()


def test_panoptic_r50_pixel_decoder_layout():
    overrides = ADE_VARIANTS["maskformer_panoptic_R50_coco"][0]
    model = _build_meta(set_keys(_config(f"{ADE_R50}.yaml"), overrides))
    shapes = dict(_names_and_shapes(model))
    assert shapes["sem_seg_head.pixel_decoder.layer_4.weight"] == (256, 256, 3, 3)
    assert shapes["sem_seg_head.pixel_decoder.input_proj.weight"] == (256, 2048, 1, 1)
    assert "sem_seg_head.pixel_decoder.transformer.encoder.layers.5.linear2.weight" in shapes
    assert "sem_seg_head.pixel_decoder.transformer.encoder.norm.weight" not in shapes  # post-norm
    assert not any(k.startswith("sem_seg_head.predictor.input_proj") for k in shapes)


def test_shapes_baselines_have_the_size_of_the_mask_former():
    """The comparison run pits models of about the same size against each other."""
    sizes = {}
    for name in ("maskformer_R18_bs8_1200", "per_pixel_baseline_R18_bs8_1200",
                 "per_pixel_baseline_plus_R18_bs8_1200"):  # fmt: skip
        _, model = build_on_meta(f"shapes/{name}.yaml")
        sizes[name] = _num_params(model)
    mask_former = sizes["maskformer_R18_bs8_1200"]
    assert abs(sizes["per_pixel_baseline_plus_R18_bs8_1200"] - mask_former) < 0.01 * mask_former
    assert abs(sizes["per_pixel_baseline_R18_bs8_1200"] - mask_former) < 0.1 * mask_former
