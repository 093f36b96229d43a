# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Detectron2's built-in datasets that the MaskFormer configs use, completed with the metadata
the evaluators and the visualizer need:

- ``ade20k_sem_seg_{train,val}`` (ADE20K-150): ``stuff_colors`` added.
- ``cityscapes_fine_sem_seg_{train,val,test}``: ``stuff_colors`` (train-id order) added.
- ``coco_2017_{train,val}_panoptic`` ("standard" COCO panoptic, contiguous ids 0..132).

Detectron2 registers these names once, when ``detectron2.data`` is first imported, rooted at
the ``$DETECTRON2_DATASETS`` of that moment. The functions here register them again (same
loaders and metadata as detectron2) when their root differs, and under a name prefix for tests.
"""

import functools
import os
from typing import List

from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES, _get_builtin_metadata
from detectron2.data.datasets.cityscapes import load_cityscapes_semantic
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

from .categories import ade20k_150_categories
from .registration import register_dataset, register_sem_seg_splits, set_missing_metadata

__all__ = ["register_ade20k_150", "register_cityscapes_sem_seg", "register_coco_panoptic"]


def register_ade20k_150(root: str, name_prefix: str = "") -> List[str]:
    """
    Register ``{name_prefix}ade20k_sem_seg_{train,val}`` (ADEChallengeData2016/images and
    annotations_detectron2, 150 classes, ignore 255) and add ``stuff_colors``.

    Returns:
        list[str]: the names (re-)registered by this call.
    """
    from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

    base = os.path.join(root, "ADEChallengeData2016")
    splits = {
        f"{name_prefix}ade20k_sem_seg_{split}": (
            os.path.join(base, "images", folder),
            os.path.join(base, "annotations_detectron2", folder),
        )
        for split, folder in [("train", "training"), ("val", "validation")]
    }
    meta = {"stuff_classes": ADE20K_SEM_SEG_CATEGORIES[:], "ignore_label": 255}
    registered = register_sem_seg_splits(splits, meta, gt_ext="png", image_ext="jpg")
    colors = [c["color"] for c in ade20k_150_categories()]
    for name in splits:
        set_missing_metadata(name, stuff_colors=colors)
    return registered


def register_cityscapes_sem_seg(root: str, name_prefix: str = "") -> List[str]:
    """
    Register ``{name_prefix}cityscapes_fine_sem_seg_{train,val,test}`` (leftImg8bit and
    gtFine ``*_labelTrainIds.png``, 19 classes, ignore 255) and add ``stuff_colors``.

    Returns:
        list[str]: the names (re-)registered by this call.
    """
    train_categories = sorted(
        (c for c in CITYSCAPES_CATEGORIES if 0 <= c["trainId"] < 255), key=lambda c: c["trainId"]
    )
    colors = [list(c["color"]) for c in train_categories]
    registered = []
    for split in ("train", "val", "test"):
        name = f"{name_prefix}cityscapes_fine_sem_seg_{split}"
        # Trailing separators as in detectron2, so the idempotence check sees the same path.
        image_dir = os.path.join(root, "cityscapes/leftImg8bit", split, "")
        gt_dir = os.path.join(root, "cityscapes/gtFine", split, "")
        loader = functools.partial(load_cityscapes_semantic, image_dir, gt_dir)
        meta = {
            **_get_builtin_metadata("cityscapes"),
            "image_dir": image_dir,
            "gt_dir": gt_dir,
            "evaluator_type": "cityscapes_sem_seg",
            "ignore_label": 255,
        }
        if register_dataset(name, loader, meta, key="image_dir"):
            registered.append(name)
        set_missing_metadata(name, stuff_colors=colors)
    return registered


def register_coco_panoptic(root: str, name_prefix: str = "") -> List[str]:
    """
    Register ``{name_prefix}coco_2017_{train,val}_panoptic``: detectron2's "standard" COCO
    panoptic (coco/{train,val}2017, coco/panoptic_{train,val}2017 and
    coco/annotations/panoptic_{train,val}2017.json; 133 classes with contiguous ids).

    Returns:
        list[str]: the names (re-)registered by this call.
    """
    meta = _get_builtin_metadata("coco_panoptic_standard")
    registered = []
    for split in ("train", "val"):
        name = f"{name_prefix}coco_2017_{split}_panoptic"
        image_dir = os.path.join(root, f"coco/{split}2017")
        panoptic_dir = os.path.join(root, f"coco/panoptic_{split}2017")
        panoptic_json = os.path.join(root, f"coco/annotations/panoptic_{split}2017.json")
        loader = functools.partial(
            load_coco_panoptic_json, panoptic_json, image_dir, panoptic_dir, meta
        )
        split_meta = {
            **meta,
            "image_root": image_dir,
            "panoptic_root": panoptic_dir,
            "panoptic_json": panoptic_json,
            "json_file": os.path.join(root, f"coco/annotations/instances_{split}2017.json"),
            "evaluator_type": "coco_panoptic_seg",
            "ignore_label": 255,
            "label_divisor": 1000,
        }
        if register_dataset(name, loader, split_meta):
            registered.append(name)
    return registered
