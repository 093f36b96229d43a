# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The built-in synthetic "shapes" dataset (see :mod:`mask_former.data.shapes_generator`):

- ``shapes_sem_seg_{train,val}``: semantic segmentation, ``evaluator_type`` "sem_seg".
- ``shapes_panoptic_{train,val}``: panoptic segmentation, ``evaluator_type``
  "coco_panoptic_seg". Its records also carry ``sem_seg_file_name`` and its metadata has
  ``sem_seg_root``, ``stuff_classes`` (all 6 classes) and ``ignore_label``, so SemSegEvaluator can
  evaluate the same val set: a panoptic-trained model gives both PQ and mIoU.

Both use the same 6 classes (contiguous ids 0..5: circle, square, triangle are things;
gradient, stripes, blotches are stuff). The files are generated on first use (when a loader
runs), under ``<root>/shapes``.
"""

import os
from typing import Any, Dict, List

from detectron2.data.datasets import load_sem_seg

from ..shapes_generator import SHAPES_CATEGORIES, ensure_shapes_dataset, shapes_dir
from .panoptic_json import load_panoptic_json
from .registration import panoptic_class_metadata, register_dataset

__all__ = ["register_shapes", "shapes_metadata"]


def shapes_metadata() -> Dict[str, Any]:
    """Class names, colours and id maps shared by both formats of shapes."""
    return {
        **panoptic_class_metadata(SHAPES_CATEGORIES),
        "ignore_label": 255,
        "label_divisor": 1000,
    }


def _load_sem_seg(root: str, split: str) -> List[Dict[str, Any]]:
    base = ensure_shapes_dataset(root)
    return load_sem_seg(
        os.path.join(base, "sem_seg", split),
        os.path.join(base, "images", split),
        gt_ext="png",
        image_ext="jpg",
    )


def _load_panoptic(root: str, split: str) -> List[Dict[str, Any]]:
    base = ensure_shapes_dataset(root)
    meta = shapes_metadata()
    return load_panoptic_json(
        os.path.join(base, f"panoptic_{split}.json"),
        os.path.join(base, "images", split),
        os.path.join(base, "panoptic", split),
        os.path.join(base, "sem_seg", split),
        meta["thing_dataset_id_to_contiguous_id"],
        meta["stuff_dataset_id_to_contiguous_id"],
    )


def register_shapes(root: str, name_prefix: str = "") -> List[str]:
    """
    Register ``{name_prefix}shapes_{sem_seg,panoptic}_{train,val}`` with files under
    ``<root>/shapes`` (generated when a loader first runs).

    Returns:
        list[str]: the names (re-)registered by this call.
    """
    base = shapes_dir(root)
    registered = []
    for split in ("train", "val"):
        image_dir = os.path.join(base, "images", split)
        common = {
            **shapes_metadata(),
            "image_root": image_dir,
            "sem_seg_root": os.path.join(base, "sem_seg", split),
        }
        sem_name = f"{name_prefix}shapes_sem_seg_{split}"
        sem_meta = {**common, "evaluator_type": "sem_seg"}
        if register_dataset(sem_name, lambda r=root, s=split: _load_sem_seg(r, s), sem_meta):
            registered.append(sem_name)
        pan_name = f"{name_prefix}shapes_panoptic_{split}"
        pan_meta = {
            **common,
            "panoptic_root": os.path.join(base, "panoptic", split),
            "panoptic_json": os.path.join(base, f"panoptic_{split}.json"),
            "evaluator_type": "coco_panoptic_seg",
        }
        if register_dataset(pan_name, lambda r=root, s=split: _load_panoptic(r, s), pan_meta):
            registered.append(pan_name)
    return registered
