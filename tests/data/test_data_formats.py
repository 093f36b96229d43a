# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Every dataset format of the model zoo, end to end on a miniature copy written by the test:
registration (under a fresh name prefix) -> DatasetCatalog records -> the configured train
mapper -> targets compared with the hand-drawn layout of ``data_testutils``.
"""

import numpy as np
import pytest
import torch
from data_formats import FORMATS, register_format
from data_testutils import (
    COLORS,
    REGIONS,
    H,
    W,
    expected_panoptic_targets,
    expected_semantic_targets,
    semantic_labels,
)
from detectron2.data import DatasetCatalog, MetadataCatalog

from mask_former.data import build_train_mapper


def detect_flip(unpadded_sem: np.ndarray, labels: np.ndarray) -> bool:
    """Whether the mapper flipped this sample (the only random augmentation left on)."""
    if np.array_equal(unpadded_sem, labels):
        return False
    assert np.array_equal(unpadded_sem, labels[:, ::-1]), "labels neither kept nor flipped"
    return True


def check_image_follows_layout(image: torch.Tensor, flipped: bool):
    """Each region of the image keeps its flat colour (JPEG: within a small tolerance)."""
    image = image[:, :H, :W].permute(1, 2, 0).numpy().astype(np.float64)
    for name, mask in REGIONS.items():
        mask = mask[:, ::-1] if flipped else mask
        mean = image[mask].mean(axis=0)
        assert np.abs(mean - COLORS[name]).max() < 12, (name, mean)


def pad_mask(mask: np.ndarray, shape) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[: mask.shape[0], : mask.shape[1]] = mask
    return out


@pytest.mark.parametrize(
    "fmt", ["ade20k_150", "ade20k_full", "coco_stuff_10k", "mapillary", "cityscapes"]
)
def test_semantic_format_registration_and_targets(tmp_path, fmt):
    name, classes, cfg = register_format(tmp_path, fmt)
    _, _, _, _, k, ignore, evaluator = FORMATS[fmt]
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == evaluator
    assert meta.ignore_label == ignore
    assert len(meta.stuff_classes) == k
    assert len(meta.get("stuff_colors", [])) == k
    records = DatasetCatalog.get(name)
    assert len(records) == 1 and "sem_seg_file_name" in records[0]

    # Run several times: both flip outcomes must give consistent targets.
    mapper = build_train_mapper(cfg)
    flips = set()
    for _ in range(6):
        out = mapper(records[0])
        assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.uint8
        sem = out["sem_seg"]
        assert sem.dtype == torch.long and sem.shape == (32, 32)
        assert (sem[H:] == ignore).all()  # bottom padding carries the ignore label
        labels = semantic_labels(classes, dtype=np.int64)
        flipped = detect_flip(sem[:H, :W].numpy(), labels)
        flips.add(flipped)
        check_image_follows_layout(out["image"], flipped)
        assert (out["image"][:, H:] == 128).all()  # image padding value

        exp_classes, exp_masks = expected_semantic_targets(classes, ignore)
        inst = out["instances"]
        assert inst.image_size == (32, 32)
        assert inst.gt_classes.dtype == torch.int64
        assert inst.gt_classes.tolist() == exp_classes
        assert inst.gt_masks.dtype == torch.bool
        for got, mask in zip(inst.gt_masks, exp_masks):
            mask = mask[:, ::-1] if flipped else mask
            assert np.array_equal(got.numpy(), pad_mask(mask, (32, 32)))
    assert flips == {False, True}


@pytest.mark.parametrize("fmt", ["ade20k_panoptic", "coco_panoptic"])
def test_panoptic_format_registration_and_targets(tmp_path, fmt):
    name, classes, cfg = register_format(tmp_path, fmt)
    _, _, _, mapper_name, k, ignore, evaluator = FORMATS[fmt]
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == evaluator
    for key in (
        "panoptic_root",
        "panoptic_json",
        "thing_dataset_id_to_contiguous_id",
        "stuff_dataset_id_to_contiguous_id",
        "thing_classes",
        "stuff_classes",
    ):
        assert key in meta.as_dict(), key
    assert len(meta.stuff_classes) == k
    records = DatasetCatalog.get(name)
    assert len(records) == 1
    seg_classes = sorted(s["category_id"] for s in records[0]["segments_info"])
    assert seg_classes == sorted(classes[n] for n in ("left", "right", "a", "b"))

    mapper = build_train_mapper(cfg)
    padded = mapper_name == "mask_former_panoptic"
    shape = (32, 32) if padded else (H, W)
    flips = set()
    for _ in range(6):
        out = mapper(records[0])
        assert out["image"].shape == (3, *shape)
        inst = out["instances"]
        exp_classes, exp_masks = expected_panoptic_targets(classes)
        assert inst.gt_classes.tolist() == exp_classes
        # Which way the sample went: the "a" square sits left of centre unless flipped.
        flipped = bool(inst.gt_masks[2][:, W // 2 : W].any())
        flips.add(flipped)
        check_image_follows_layout(out["image"], flipped)
        for got, mask in zip(inst.gt_masks, exp_masks):
            mask = mask[:, ::-1] if flipped else mask
            assert np.array_equal(got.numpy(), pad_mask(mask, shape))
        if padded:  # ADE panoptic also carries its semantic label map
            labels = semantic_labels(classes, dtype=np.int64)
            assert detect_flip(out["sem_seg"][:H, :W].numpy(), labels) == flipped
            assert (out["sem_seg"][H:] == ignore).all()
    assert flips == {False, True}
