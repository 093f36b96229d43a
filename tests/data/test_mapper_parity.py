# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Parity of the three train mappers with the original MaskFormer mappers, pixel for pixel.

Each ``original_*`` function below redoes the steps that the original mapper takes
(reference-facts section 7), calling detectron2's transform classes directly and none of the
project's mapper helpers:

* semantic: read the image (INPUT.FORMAT; ``check_image_size`` fills in height/width) and the
  label PNG as float64; apply, in this order, ResizeShortestEdge,
  RandomCrop_CategoryAreaConstraint, the SSD colour transform and RandomFlip to both (the image
  bilinear, the float labels with torch's nearest rule); pad right/bottom by
  SIZE_DIVISIBILITY - size (image 128, labels the ignore label); one target per sorted class id
  other than the ignore label; the label file name is popped.
* panoptic: the same augmentations on the image and the semantic PNG when the record has one;
  the RGB panoptic PNG gets ``transforms.apply_segmentation`` (uint8: PIL nearest) and only
  then ``rgb2id``; padded with 0; one target per non-crowd segment of ``segments_info``, in its
  order, all-zero when the crop removed it; both file names are popped.
* detr_panoptic: ``rand() > 0.5`` picks flip -> resize, otherwise flip -> resize to
  (400, 500, 600) -> RandomCrop -> resize; the image only; the RGB panoptic PNG then as above;
  no padding.

Before each call of a mapper and of its reference, ``random``, ``numpy`` and ``torch`` get the
same seed; the generators must also end in the same state (the same draws, in the same order).
"""

import copy
import random
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from data_testutils import ids_to_rgb, save_image, unique_prefix
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.projects.point_rend import ColorAugSSDTransform
from panopticapi.utils import rgb2id

from mask_former import get_mask_former_cfg
from mask_former.data import (
    DETRPanopticDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)

# Records are 20 x 28: the short side of 20 is resized to one of MIN_SIZES, each of which
# samples different source pixels under PIL's and torch's nearest rules.
H, W = 20, 28
MIN_SIZES = (13, 27, 30)
CROP = 18  # also SIZE_DIVISIBILITY, as in the model-zoo configs
NUM_CLASSES = 6
IGNORE = 255
SEEDS = range(12)
ROW_EDGES = [0, 3, 7, 8, 12, 15, 20]
COL_EDGES = [0, 2, 6, 7, 11, 13, 19, 24, 28]

# Segment ids use all three channels; (id, category, iscrowd).
SEGMENTS = [
    (5, 0, 0),
    (300, 1, 0),
    (70000, 2, 0),
    (2 * 65536 + 3 * 256 + 7, 3, 0),
    (1234, 4, 1),
    (999, 5, 0),
    (42, 1, 1),
    (4242, 2, 0),
]
CORNER_SEGMENTS = [(77, 3, 0), (88, 4, 0)]  # 2x2 corners that most crops remove

Record = Dict[str, Any]
# The original's output dict, gt_classes, (N, H, W) bool gt_masks, and its transforms.
Targets = Tuple[Record, List[int], np.ndarray, T.TransformList]


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> tuple:
    np_state = np.random.get_state()
    return random.getstate(), np_state[1].tolist(), np_state[2:], torch.get_rng_state().tolist()


# --- generated records --------------------------------------------------------------------------


def cell_map(values: List[int], seed: int) -> np.ndarray:
    """(H, W) int64 map of rectangular cells of uneven sizes, each one of ``values``; every
    value occurs at least once."""
    rng = np.random.RandomState(seed)
    n_cells = (len(ROW_EDGES) - 1) * (len(COL_EDGES) - 1)
    picks = np.concatenate([values, rng.choice(values, n_cells - len(values))])
    rng.shuffle(picks)
    out = np.zeros((H, W), np.int64)
    cells = iter(picks)
    for y0, y1 in zip(ROW_EDGES[:-1], ROW_EDGES[1:]):
        for x0, x1 in zip(COL_EDGES[:-1], COL_EDGES[1:]):
            out[y0:y1, x0:x1] = next(cells)
    return out


def write_image(path: str) -> str:
    image = np.random.RandomState(1).randint(0, 256, (H, W, 3)).astype(np.uint8)
    return save_image(path, image)


@pytest.fixture(scope="module")
def semantic_record(tmp_path_factory) -> Record:
    root = tmp_path_factory.mktemp("parity_sem")
    labels = cell_map(list(range(NUM_CLASSES)) + [IGNORE], seed=2).astype(np.uint8)
    return {
        "file_name": write_image(str(root / "img.png")),
        "sem_seg_file_name": save_image(str(root / "label.png"), labels),
        "height": H,
        "width": W,
    }


@pytest.fixture(scope="module")
def panoptic_record(tmp_path_factory) -> Record:
    """An ADE20K-panoptic-like record: image, RGB panoptic PNG, semantic PNG, segments."""
    root = tmp_path_factory.mktemp("parity_pan")
    ids = cell_map([s[0] for s in SEGMENTS] + [0], seed=3)
    ids[:2, :2] = CORNER_SEGMENTS[0][0]
    ids[-2:, -2:] = CORNER_SEGMENTS[1][0]
    segments = SEGMENTS + CORNER_SEGMENTS
    semantic = np.full((H, W), IGNORE, np.uint8)
    for segment_id, category, _ in segments:
        semantic[ids == segment_id] = category
    return {
        "file_name": write_image(str(root / "img.png")),
        "image_id": 7,
        "pan_seg_file_name": save_image(str(root / "pan.png"), ids_to_rgb(ids)),
        "sem_seg_file_name": save_image(str(root / "sem.png"), semantic),
        "segments_info": [
            {"id": i, "category_id": c, "iscrowd": crowd, "isthing": True}
            for i, c, crowd in segments
        ],
    }


def parity_cfg(image_format: str, max_area: float) -> CfgNode:
    name = unique_prefix() + "parity_train"
    MetadataCatalog.get(name).set(ignore_label=IGNORE)
    cfg = get_mask_former_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = ()
    cfg.INPUT.FORMAT = image_format
    cfg.INPUT.MIN_SIZE_TRAIN = MIN_SIZES
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (CROP, CROP)
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = max_area
    cfg.INPUT.COLOR_AUG_SSD = True
    cfg.INPUT.SIZE_DIVISIBILITY = CROP
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = IGNORE
    return cfg


# --- the original's steps -----------------------------------------------------------------------


def original_augmentations(cfg: CfgNode) -> list:
    return [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        ),
        T.RandomCrop_CategoryAreaConstraint(
            cfg.INPUT.CROP.TYPE,
            cfg.INPUT.CROP.SIZE,
            cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
            cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        ),
        ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT),
        T.RandomFlip(),
    ]


def pad_to(tensor: torch.Tensor, size: int, value: int) -> torch.Tensor:
    """The original's padding: by (size - h, size - w) at the bottom/right."""
    h, w = tensor.shape[-2:]
    return F.pad(tensor, [0, size - w, 0, size - h], value=value).contiguous()


def chw(image: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


def segment_targets(pan_ids: np.ndarray, segments_info: list) -> Tuple[List[int], np.ndarray]:
    kept = [s for s in segments_info if not s["iscrowd"]]
    masks = [pan_ids == s["id"] for s in kept]
    masks = np.stack(masks) if masks else np.zeros((0, *pan_ids.shape), bool)
    return [s["category_id"] for s in kept], masks


def original_semantic(record: Record, cfg: CfgNode) -> Targets:
    out = copy.deepcopy(record)
    image = utils.read_image(out["file_name"], format=cfg.INPUT.FORMAT)
    utils.check_image_size(out, image)  # also fills in a missing height/width
    labels = utils.read_image(out.pop("sem_seg_file_name")).astype("double")
    aug_input, transforms = T.apply_transform_gens(
        original_augmentations(cfg), T.AugInput(image, sem_seg=labels)
    )
    size = cfg.INPUT.SIZE_DIVISIBILITY
    out["image"] = pad_to(chw(aug_input.image), size, 128)
    out["sem_seg"] = pad_to(torch.as_tensor(aug_input.sem_seg.astype("long")), size, IGNORE)
    sem = out["sem_seg"].numpy()
    classes = np.unique(sem)
    classes = classes[classes != IGNORE]
    masks = np.stack([sem == c for c in classes]) if len(classes) else np.zeros((0, *sem.shape))
    return out, classes.tolist(), masks.astype(bool), transforms


def original_panoptic(record: Record, cfg: CfgNode) -> Targets:
    out = copy.deepcopy(record)
    image = utils.read_image(out["file_name"], format=cfg.INPUT.FORMAT)
    utils.check_image_size(out, image)  # also fills in a missing height/width
    labels = None
    if "sem_seg_file_name" in out:
        labels = utils.read_image(out.pop("sem_seg_file_name")).astype("double")
    pan_rgb = utils.read_image(out.pop("pan_seg_file_name"), "RGB")
    aug_input, transforms = T.apply_transform_gens(
        original_augmentations(cfg), T.AugInput(image, sem_seg=labels)
    )
    pan_ids = rgb2id(transforms.apply_segmentation(pan_rgb))
    size = cfg.INPUT.SIZE_DIVISIBILITY
    out["image"] = pad_to(chw(aug_input.image), size, 128)
    if labels is not None:
        out["sem_seg"] = pad_to(torch.as_tensor(aug_input.sem_seg.astype("long")), size, IGNORE)
    pan_ids = pad_to(torch.as_tensor(pan_ids.astype("long")), size, 0).numpy()
    return (out, *segment_targets(pan_ids, out["segments_info"]), transforms)


def original_detr(record: Record, cfg: CfgNode) -> Targets:
    out = copy.deepcopy(record)
    image = utils.read_image(out["file_name"], format=cfg.INPUT.FORMAT)
    utils.check_image_size(out, image)  # also fills in a missing height/width
    augs = [
        T.RandomFlip(),
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        ),
    ]
    if cfg.INPUT.CROP.ENABLED and not np.random.rand() > 0.5:
        crop = [
            T.ResizeShortestEdge([400, 500, 600], sample_style="choice"),
            T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE),
        ]
        augs = augs[:-1] + crop + augs[-1:]
    image, transforms = T.apply_transform_gens(augs, image)
    out["image"] = chw(image)
    pan_rgb = utils.read_image(out.pop("pan_seg_file_name"), "RGB")
    pan_ids = rgb2id(transforms.apply_segmentation(pan_rgb)).astype("long")
    return (out, *segment_targets(pan_ids, out["segments_info"]), transforms)


# --- comparison ---------------------------------------------------------------------------------


def assert_same(out: Record, expected: Targets) -> None:
    ref, classes, masks, _ = expected
    assert sorted(out) == sorted([*ref, "instances"])
    for key in ref:
        if key in ("image", "sem_seg"):
            assert out[key].dtype == ref[key].dtype, key
            assert torch.equal(out[key], ref[key]), key
        else:
            assert out[key] == ref[key], key
    inst = out["instances"]
    assert inst.image_size == tuple(ref["image"].shape[-2:])
    assert inst.gt_classes.dtype == torch.int64
    assert inst.gt_classes.tolist() == classes
    assert inst.gt_masks.dtype == torch.bool
    assert tuple(inst.gt_masks.shape) == masks.shape
    assert np.array_equal(inst.gt_masks.numpy(), masks)


def draws(transforms: T.TransformList) -> Tuple[Tuple[int, ...], bool, bool]:
    """What the random augmentations did: the resized heights, whether it cropped, flipped."""
    tfms = transforms.transforms
    heights = tuple(t.new_h for t in tfms if isinstance(t, T.ResizeTransform))
    cropped = any(isinstance(t, T.CropTransform) for t in tfms)
    return heights, cropped, any(isinstance(t, T.HFlipTransform) for t in tfms)


def run_both(mapper, original, record: Record, cfg: CfgNode, seed: int) -> Targets:
    """Map ``record`` with the mapper and the reference under one seed; check they agree."""
    seed_all(seed)
    out = mapper(record)
    after_mapper = rng_states()
    seed_all(seed)
    expected = original(record, cfg)
    assert rng_states() == after_mapper, "the mapper drew other random numbers"
    assert_same(out, expected)
    return expected


# --- tests --------------------------------------------------------------------------------------


def assert_all_draws_seen(seen: set) -> None:
    """The seeds drew every resize choice, and both flipped and unflipped samples."""
    assert {heights[0] for heights, _, _ in seen} == set(MIN_SIZES)
    assert {flipped for _, _, flipped in seen} == {True, False}


@pytest.mark.parametrize("image_format", ["RGB", "BGR"])
def test_semantic_mapper_matches_original(semantic_record, image_format):
    cfg = parity_cfg(image_format, max_area=0.5)
    mapper = MaskFormerSemanticDatasetMapper(cfg, True)
    seen = set()
    for seed in SEEDS:
        ref, classes, _, transforms = run_both(
            mapper, original_semantic, semantic_record, cfg, seed
        )
        seen.add(draws(transforms))
        assert classes and ref["image"].shape == (3, CROP, CROP)
    assert_all_draws_seen(seen)


@pytest.mark.parametrize(
    "image_format, with_semantic", [("RGB", True), ("BGR", True), ("RGB", False)]
)
def test_panoptic_mapper_matches_original(panoptic_record, image_format, with_semantic):
    record = dict(panoptic_record)
    if not with_semantic:
        # Without a semantic map the original can only crop without the area constraint.
        del record["sem_seg_file_name"]
    cfg = parity_cfg(image_format, max_area=0.5 if with_semantic else 1.0)
    mapper = MaskFormerPanopticDatasetMapper(cfg, True)
    n_targets = sum(1 for s in record["segments_info"] if not s["iscrowd"])
    seen, n_empty = set(), 0
    for seed in SEEDS:
        ref, classes, masks, transforms = run_both(mapper, original_panoptic, record, cfg, seed)
        seen.add(draws(transforms))
        assert ("sem_seg" in ref) == with_semantic
        assert len(classes) == n_targets
        n_empty += int((~masks.any(axis=(1, 2))).sum())
    assert_all_draws_seen(seen)
    assert n_empty > 0  # some crops removed segments, whose targets stay with empty masks


@pytest.mark.parametrize("crop_enabled", [True, False])
def test_detr_panoptic_mapper_matches_original(panoptic_record, crop_enabled):
    # A COCO-panoptic-like record: no semantic PNG.
    record = {k: v for k, v in panoptic_record.items() if k != "sem_seg_file_name"}
    cfg = parity_cfg("RGB", max_area=1.0)
    cfg.INPUT.CROP.ENABLED = crop_enabled
    cfg.INPUT.CROP.SIZE = (150, 200)
    mapper = DETRPanopticDatasetMapper(cfg, True)
    seen, n_empty = set(), 0
    for seed in SEEDS:
        _, _, masks, transforms = run_both(mapper, original_detr, record, cfg, seed)
        heights, cropped, flipped = draws(transforms)
        seen.add((heights[-1:], cropped, flipped))
        n_empty += int((~masks.any(axis=(1, 2))).sum())
    assert_all_draws_seen(seen)
    assert {cropped for _, cropped, _ in seen} == ({True, False} if crop_enabled else {False})
    assert (n_empty > 0) == crop_enabled
