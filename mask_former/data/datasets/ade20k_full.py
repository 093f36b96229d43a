# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
ADE20K-full (847 classes): ``ade20k_full_sem_seg_{train,val}``.

Layout under the datasets root (made by ``datasets/prepare_ade20k_full_sem_seg.py``)::

    ADE20K_2021_17_01/images_detectron2/{training,validation}/*.jpg
    ADE20K_2021_17_01/annotations_detectron2/{training,validation}/*.tif   (uint16, 65535 ignore)
"""

import os
from typing import List

from .categories import ade20k_full_categories
from .registration import register_sem_seg_splits, stuff_class_metadata

__all__ = ["register_ade20k_full", "ADE20K_FULL_IGNORE_LABEL"]

# Label maps are uint16 because 847 classes do not fit in uint8; the top value marks ignore.
ADE20K_FULL_IGNORE_LABEL = 65535


def register_ade20k_full(root: str, name_prefix: str = "") -> List[str]:
    """
    Register ``{name_prefix}ade20k_full_sem_seg_{train,val}`` rooted at ``root``.

    Returns:
        list[str]: the names (re-)registered by this call.
    """
    base = os.path.join(root, "ADE20K_2021_17_01")
    splits = {
        f"{name_prefix}ade20k_full_sem_seg_{split}": (
            os.path.join(base, "images_detectron2", folder),
            os.path.join(base, "annotations_detectron2", folder),
        )
        for split, folder in [("train", "training"), ("val", "validation")]
    }
    categories = ade20k_full_categories()
    meta = {
        **stuff_class_metadata(categories),
        "ignore_label": ADE20K_FULL_IGNORE_LABEL,
    }
    return register_sem_seg_splits(splits, meta, gt_ext="tif", image_ext="jpg")
