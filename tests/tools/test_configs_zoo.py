# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The config tree: the original model zoo's paths, safe YAML, and the published recipes
(docs: reference-facts sections 10 and 12), checked key by key from tables written here.
"""

from pathlib import Path

import pytest

from mask_former import load_config
from tests.paths import CONFIGS

ADE, FULL, STUFF = "ade20k-150", "ade20k-full-847", "coco-stuff-10k-171"
CITY, MAPI, COCO_PAN, ADE_PAN = (
    "cityscapes-19", "mapillary-vistas-65", "coco-panoptic", "ade20k-150-panoptic",
)  # fmt: skip
MODEL_ZOO = [
    f"{ADE}/maskformer_R50_bs16_160k.yaml",
    f"{ADE}/maskformer_R101_bs16_160k.yaml",
    f"{ADE}/maskformer_R101c_bs16_160k.yaml",
    f"{ADE}/per_pixel_baseline_R50_bs16_160k.yaml",
    f"{ADE}/per_pixel_baseline_plus_R50_bs16_160k.yaml",
    f"{ADE}/swin/maskformer_swin_tiny_bs16_160k.yaml",
    f"{ADE}/swin/maskformer_swin_small_bs16_160k.yaml",
    f"{ADE}/swin/maskformer_swin_base_IN21k_384_bs16_160k_res640.yaml",
    f"{ADE}/swin/maskformer_swin_large_IN21k_384_bs16_160k_res640.yaml",
    f"{FULL}/maskformer_R50_bs16_200k.yaml",
    f"{FULL}/maskformer_R101_bs16_200k.yaml",
    f"{FULL}/maskformer_R101c_bs16_200k.yaml",
    f"{FULL}/per_pixel_baseline_R50_bs16_200k.yaml",
    f"{FULL}/per_pixel_baseline_plus_R50_bs16_200k.yaml",
    f"{STUFF}/maskformer_R50_bs32_60k.yaml",
    f"{STUFF}/maskformer_R101_bs32_60k.yaml",
    f"{STUFF}/maskformer_R101c_bs32_60k.yaml",
    f"{STUFF}/per_pixel_baseline_R50_bs32_60k.yaml",
    f"{STUFF}/per_pixel_baseline_plus_R50_bs32_60k.yaml",
    f"{CITY}/maskformer_R101_bs16_90k.yaml",
    f"{CITY}/maskformer_R101c_bs16_90k.yaml",
    f"{MAPI}/maskformer_R50_bs16_300k.yaml",
    f"{COCO_PAN}/maskformer_panoptic_R50_bs64_554k.yaml",
    f"{COCO_PAN}/maskformer_panoptic_R101_bs64_554k.yaml",
    f"{COCO_PAN}/swin/maskformer_panoptic_swin_tiny_bs64_554k.yaml",
    f"{COCO_PAN}/swin/maskformer_panoptic_swin_small_bs64_554k.yaml",
    f"{COCO_PAN}/swin/maskformer_panoptic_swin_base_IN21k_384_bs64_554k.yaml",
    f"{COCO_PAN}/swin/maskformer_panoptic_swin_large_IN21k_384_bs64_554k.yaml",
    f"{ADE_PAN}/maskformer_panoptic_R50_bs16_720k.yaml",
    f"{ADE_PAN}/maskformer_panoptic_R101_bs16_720k.yaml",
]
BASES = [
    f"{ADE}/Base-ADE20K-150.yaml",
    f"{FULL}/Base-ADE20KFull-847.yaml",
    f"{STUFF}/Base-COCOStuff10K-171.yaml",
    f"{CITY}/Base-Cityscapes-19.yaml",
    f"{MAPI}/Base-MapillaryVistas-65.yaml",
    f"{COCO_PAN}/Base-COCO-PanopticSegmentation.yaml",
]
ALL_YAML = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml"))


def load(relative_path: str):
    return load_config(CONFIGS / relative_path, cpu_fallback=False, freeze=False)


def scaled_sizes(base: int, last_tenth: int = 20):
    """The original's resize choices: int(x * 0.1 * base) for x = 5 .. last_tenth."""
    return tuple(int(x * 0.1 * base) for x in range(5, last_tenth + 1))


def test_model_zoo_tree_is_complete():
    zoo_and_bases = set(MODEL_ZOO) | set(BASES)
    assert zoo_and_bases <= set(ALL_YAML), sorted(zoo_and_bases - set(ALL_YAML))
    extra = [p for p in ALL_YAML if p not in zoo_and_bases and not p.startswith("shapes/")]
    assert extra == []


@pytest.mark.parametrize("relative_path", ALL_YAML)
def test_yaml_loads_safely_and_has_no_dead_keys(relative_path):
    text = (CONFIGS / relative_path).read_text()
    assert "!!python" not in text and "not used" not in text
    cfg = load(relative_path)  # allow_unsafe=False: yaml.safe_load only
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.280, 103.530]
    assert list(cfg.MODEL.PIXEL_STD) == [58.395, 57.120, 57.375]
    assert all(isinstance(s, int) for s in cfg.INPUT.MIN_SIZE_TRAIN)


# group -> (train, test, K, ignore, iters, batch, crop, MIN_SIZE_TRAIN, max train,
#           min test, max test, INPUT.SIZE_DIVISIBILITY)
SEMANTIC_RECIPES = {
    ADE: ("ade20k_sem_seg_train", "ade20k_sem_seg_val", 150, 255, 160000, 16, (512, 512),
          scaled_sizes(512), 2048, 512, 2048, 512),
    FULL: ("ade20k_full_sem_seg_train", "ade20k_full_sem_seg_val", 847, 65535, 200000, 16,
           (512, 512), scaled_sizes(512), 2048, 512, 2048, 512),
    STUFF: ("coco_2017_train_stuff_10k_sem_seg", "coco_2017_test_stuff_10k_sem_seg", 171, 255,
            60000, 32, (640, 640), scaled_sizes(640, 15), 2560, 640, 2560, 640),
    CITY: ("cityscapes_fine_sem_seg_train", "cityscapes_fine_sem_seg_val", 19, 255, 90000, 16,
           (512, 1024), scaled_sizes(1024), 4096, 1024, 2048, -1),
    MAPI: ("mapillary_vistas_sem_seg_train", "mapillary_vistas_sem_seg_val", 65, 65, 300000, 16,
           (1280, 1280), scaled_sizes(2048), 8192, 2048, 2048, 1280),
}  # fmt: skip
TTA = {
    ADE: ((256, 384, 512, 640, 768, 896), 3584),
    STUFF: ((320, 480, 640, 800, 960, 1120), 4480),
    CITY: ((512, 768, 1024, 1280, 1536, 1792), 4096),
}
WEIGHTS = {
    "R50": "detectron2://ImageNetPretrained/torchvision/R-50.pkl",
    "R101": "R-101.pkl",
    "R101c": "detectron2://DeepLab/R-103.pkl",
    "swin_tiny": "swin_tiny_patch4_window7_224.pkl",
    "swin_small": "swin_small_patch4_window7_224.pkl",
    "swin_base": "swin_base_patch4_window12_384_22k.pkl",
    "swin_large": "swin_large_patch4_window12_384_22k.pkl",
}


def _backbone_of(relative_path):
    name = Path(relative_path).stem
    for key in ("swin_tiny", "swin_small", "swin_base", "swin_large", "R101c", "R101", "R50"):
        if f"_{key}_" in name or name.endswith(f"_{key}"):
            return key
    raise AssertionError(f"no backbone in {name}")


@pytest.mark.parametrize("relative_path", [p for p in MODEL_ZOO if not p.startswith("coco-pan")])
def test_semantic_and_ade_panoptic_recipes(relative_path):
    cfg = load(relative_path)
    group = relative_path.split("/")[0]
    res640 = "res640" in relative_path or group == ADE_PAN
    recipe = SEMANTIC_RECIPES[ADE if group == ADE_PAN else group]
    train, test, k, ignore, iters, batch, crop, sizes, max_train, min_test, max_test, div = recipe
    if res640:  # Swin-B/L 640 and ADE panoptic: everything scaled to a 640 base size
        crop, sizes, max_train, min_test, max_test, div = (
            (640, 640), scaled_sizes(640), 2560, 640, 2560, 640,
        )  # fmt: skip
    if group == ADE_PAN:
        train, test, iters = "ade20k_panoptic_train", "ade20k_panoptic_val", 720000
    assert cfg.DATASETS.TRAIN == (train,) and cfg.DATASETS.TEST == (test,)
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == k
    assert cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE == ignore
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH) == (iters, batch)
    assert cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.TYPE == "absolute"
    assert tuple(cfg.INPUT.CROP.SIZE) == crop
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == sizes
    assert cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice"
    assert (cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST) == (max_train, min_test)
    assert (cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.SIZE_DIVISIBILITY) == (max_test, div)
    assert cfg.INPUT.COLOR_AUG_SSD and cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 1.0
    if group in TTA and not res640:
        assert (tuple(cfg.TEST.AUG.MIN_SIZES), cfg.TEST.AUG.MAX_SIZE) == TTA[group]
    if res640 and group == ADE:
        assert (tuple(cfg.TEST.AUG.MIN_SIZES), cfg.TEST.AUG.MAX_SIZE) == TTA[STUFF]
    assert not cfg.TEST.AUG.ENABLED and not cfg.SOLVER.AMP.ENABLED
    assert cfg.TEST.EVAL_PERIOD == (0 if group == ADE_PAN else 5000)
    assert cfg.DATALOADER.NUM_WORKERS == (10 if group == MAPI else 4)
    mapper = "mask_former_panoptic" if group == ADE_PAN else "mask_former_semantic"
    assert cfg.INPUT.DATASET_MAPPER_NAME == mapper
    _check_solver(cfg, _backbone_of(relative_path), poly=True)
    _check_model(cfg, relative_path)


@pytest.mark.parametrize("relative_path", [p for p in MODEL_ZOO if p.startswith("coco-pan")])
def test_coco_panoptic_recipes(relative_path):
    cfg = load(relative_path)
    assert cfg.DATASETS.TRAIN == ("coco_2017_train_panoptic",)
    assert cfg.DATASETS.TEST == ("coco_2017_val_panoptic",)
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 133
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH) == (554400, 64)
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupMultiStepLR"
    assert tuple(cfg.SOLVER.STEPS) == (369600,) and cfg.SOLVER.GAMMA == 0.1
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(range(480, 801, 32))
    large = "swin_large" in relative_path
    assert cfg.INPUT.MAX_SIZE_TRAIN == (1000 if large else 1333)
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (800, 1333)
    assert cfg.INPUT.CROP.TYPE == "absolute_range" and tuple(cfg.INPUT.CROP.SIZE) == (384, 600)
    assert cfg.INPUT.DATASET_MAPPER_NAME == "detr_panoptic"
    assert cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY == 0
    assert cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD == 0.8
    assert cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD == 0.8
    assert cfg.TEST.EVAL_PERIOD == 0
    backbone = _backbone_of(relative_path)
    if not backbone.startswith("swin"):
        assert (cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR) == (10, 1.0)
    _check_solver(cfg, backbone, poly=False)
    _check_model(cfg, relative_path)


def _check_solver(cfg, backbone, poly):
    assert cfg.SOLVER.OPTIMIZER == "ADAMW"
    assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED and cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 0.01
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
    if poly:
        assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR"
    if backbone.startswith("swin"):
        assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY) == (6e-5, 0.01)
        assert (cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR) == (1500, 1e-6)
        assert cfg.SOLVER.WARMUP_METHOD == "linear"
        assert cfg.SOLVER.WEIGHT_DECAY_NORM == 0.0 and cfg.SOLVER.WEIGHT_DECAY_EMBED == 0.0
        assert cfg.SOLVER.BACKBONE_MULTIPLIER == 1.0
    else:
        assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY) == (1e-4, 1e-4)
        assert cfg.SOLVER.BACKBONE_MULTIPLIER == 0.1
        if poly:
            assert (cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR) == (0, 1.0)


# Swin variants: (EMBED_DIM, DEPTHS, NUM_HEADS, WINDOW_SIZE, PRETRAIN_IMG_SIZE)
SWIN = {
    "swin_tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 224),
    "swin_small": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7, 224),
    "swin_base": (128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 384),
    "swin_large": (192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 384),
}


def _check_model(cfg, relative_path):
    backbone = _backbone_of(relative_path)
    assert cfg.MODEL.WEIGHTS == WEIGHTS[backbone]
    head = cfg.MODEL.SEM_SEG_HEAD
    assert (head.CONVS_DIM, head.MASK_DIM, head.NORM) == (256, 256, "GN")
    assert tuple(head.IN_FEATURES) == ("res2", "res3", "res4", "res5")
    if backbone.startswith("swin"):
        swin = cfg.MODEL.SWIN
        assert cfg.MODEL.BACKBONE.NAME == "D2SwinTransformer"
        got = (swin.EMBED_DIM, tuple(swin.DEPTHS), tuple(swin.NUM_HEADS))
        assert got + (swin.WINDOW_SIZE, swin.PRETRAIN_IMG_SIZE) == SWIN[backbone]
        assert swin.DROP_PATH_RATE == 0.3 and not swin.APE and swin.PATCH_NORM
    else:
        resnet = cfg.MODEL.RESNETS
        assert resnet.DEPTH == (50 if backbone == "R50" else 101)
        assert not resnet.STRIDE_IN_1X1 and resnet.NORM == "FrozenBN"
        deeplab = backbone == "R101c"
        name = "build_resnet_deeplab_backbone" if deeplab else "build_resnet_backbone"
        assert cfg.MODEL.BACKBONE.NAME == name
        assert resnet.STEM_OUT_CHANNELS == (128 if deeplab else 64)
        if deeplab:
            assert resnet.STEM_TYPE == "deeplab" and tuple(resnet.RES5_MULTI_GRID) == (1, 2, 4)
    per_pixel = "per_pixel" in relative_path
    meta = "SemanticSegmentor" if per_pixel else "MaskFormer"
    assert cfg.MODEL.META_ARCHITECTURE == meta
    if "baseline_plus" in relative_path:
        assert head.NAME == "PerPixelBaselinePlusHead"
        assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == head.NUM_CLASSES
    elif per_pixel:
        assert head.NAME == "PerPixelBaselineHead"
    else:
        _check_mask_former(cfg, relative_path, backbone)


def _check_mask_former(cfg, relative_path, backbone):
    mf, head = cfg.MODEL.MASK_FORMER, cfg.MODEL.SEM_SEG_HEAD
    assert cfg.MODEL.SEM_SEG_HEAD.NAME == "MaskFormerHead"
    assert (mf.NUM_OBJECT_QUERIES, mf.DEC_LAYERS, mf.ENC_LAYERS, mf.HIDDEN_DIM) == (100, 6, 0, 256)
    assert (mf.NHEADS, mf.DIM_FEEDFORWARD, mf.DROPOUT, mf.PRE_NORM) == (8, 2048, 0.1, False)
    assert (mf.NO_OBJECT_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT) == (0.1, 20.0, 1.0)
    assert mf.DEEP_SUPERVISION
    panoptic = "panoptic" in relative_path
    assert mf.TEST.PANOPTIC_ON == panoptic
    encoder = panoptic and not backbone.startswith("swin")
    decoder = "TransformerEncoderPixelDecoder" if encoder else "BasePixelDecoder"
    assert head.PIXEL_DECODER_NAME == decoder
    assert head.TRANSFORMER_ENC_LAYERS == (6 if encoder else 0)
    assert mf.TRANSFORMER_IN_FEATURE == ("transformer_encoder" if encoder else "res5")
    assert mf.ENFORCE_INPUT_PROJ == (panoptic and backbone.startswith("swin"))
    if relative_path.startswith(ADE_PAN):
        assert (mf.TEST.OVERLAP_THRESHOLD, mf.TEST.OBJECT_MASK_THRESHOLD) == (0.8, 0.7)
    elif not panoptic:
        assert mf.SIZE_DIVISIBILITY == 32
