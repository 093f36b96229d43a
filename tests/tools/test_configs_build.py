# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Every config builds its model, and model-zoo configs build exactly the original models:
the same state-dict names and shapes (two full lists in shared/reference/model_zoo_keys) and
the same numbers of keys and parameters (reference-facts section 3.6).

Models are built on the meta device: names and shapes are all that matter here, and a
full-size build then takes a fraction of a second instead of several on a small CPU.
"""

import functools
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

from mask_former import get_mask_former_cfg

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs"
MODEL_ZOO_KEYS = REPO_ROOT / ".." / "shared" / "reference" / "model_zoo_keys"
ALL_YAML = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml"))

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


@functools.lru_cache(maxsize=None)
def build_on_meta(relative_path: str):
    cfg = get_mask_former_cfg()
    cfg.merge_from_file(str(CONFIGS / relative_path), allow_unsafe=False)
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        return cfg, build_model(cfg)


def _reference_rows(name: str):
    rows = []
    for line in (MODEL_ZOO_KEYS / f"{name}.txt").read_text().splitlines():
        key, shape = line.split(" ", 1)
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


def _without_criterion(rows):
    return [row for row in rows if not row[0].startswith("criterion.")]


@pytest.mark.parametrize("relative_path", ALL_YAML)
def test_every_config_builds_its_model(relative_path):
    cfg, model = build_on_meta(relative_path)
    if not Path(relative_path).name.startswith("Base-"):
        assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
        assert cfg.MODEL.META_ARCHITECTURE in ("MaskFormer", "SemanticSegmentor")
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES > 0


@pytest.mark.parametrize(
    "name",
    [
        "ade20k-150/maskformer_R50_bs16_160k",
        "coco-panoptic/swin/maskformer_panoptic_swin_tiny_bs64_554k",
    ],
)
def test_state_dict_names_and_shapes_match_the_original(name):
    _, model = build_on_meta(f"{name}.yaml")
    expected = _without_criterion(_reference_rows(name))
    got = _without_criterion([(k, tuple(v.shape)) for k, v in model.state_dict().items()])
    assert len(expected) > 300
    assert got == expected


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_key_and_parameter_counts_match_the_original(name):
    num_keys, num_params = REFERENCE_COUNTS[name]
    _, model = build_on_meta(f"{name}.yaml")
    if num_keys is not None:
        assert len(model.state_dict()) == num_keys
    assert sum(p.numel() for p in model.parameters()) == num_params


def test_shapes_baselines_have_the_size_of_the_mask_former():
    """The comparison run pits models of about the same size against each other."""
    sizes = {}
    for name in ("maskformer_R18_bs8_1200", "per_pixel_baseline_R18_bs8_1200",
                 "per_pixel_baseline_plus_R18_bs8_1200"):  # fmt: skip
        _, model = build_on_meta(f"shapes/{name}.yaml")
        sizes[name] = sum(p.numel() for p in model.parameters())
    mask_former = sizes["maskformer_R18_bs8_1200"]
    assert abs(sizes["per_pixel_baseline_plus_R18_bs8_1200"] - mask_former) < 0.01 * mask_former
    assert abs(sizes["per_pixel_baseline_R18_bs8_1200"] - mask_former) < 0.1 * mask_former
