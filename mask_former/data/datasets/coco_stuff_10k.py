# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
COCO-Stuff-10k (171 classes): ``coco_2017_{train,test}_stuff_10k_sem_seg``.

Layout under the datasets root (made by ``datasets/prepare_coco_stuff_10k_v1.0_sem_seg.py``)::

    coco/coco_stuff_10k/images_detectron2/{train,test}/*.jpg
    coco/coco_stuff_10k/annotations_detectron2/{train,test}/*.png   (contiguous ids, 255 ignore)
"""

import os
from typing import List

from .categories import coco_stuff_171_categories
from .registration import register_sem_seg_splits, stuff_class_metadata

__all__ = ["register_coco_stuff_10k"]


def register_coco_stuff_10k(root: str, name_prefix: str = "") -> List[str]:
    """
    Register ``{name_prefix}coco_2017_{train,test}_stuff_10k_sem_seg`` rooted at ``root``.

    Returns:
        list[str]: the names (re-)registered by this call.
    """
    base = os.path.join(root, "coco", "coco_stuff_10k")
    splits = {
        f"{name_prefix}coco_2017_{split}_stuff_10k_sem_seg": (
            os.path.join(base, "images_detectron2", split),
            os.path.join(base, "annotations_detectron2", split),
        )
        for split in ("train", "test")
    }
    categories = coco_stuff_171_categories()
    meta = {
        **stuff_class_metadata(categories),
        # SemSegEvaluator writes predictions with the original COCO ids through this map.
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
        "ignore_label": 255,
    }
    return register_sem_seg_splits(splits, meta, gt_ext="png", image_ext="jpg")
