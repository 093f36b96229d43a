# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Mapillary Vistas v1.2 (65 classes): ``mapillary_vistas_sem_seg_{train,val}``.

Layout under the datasets root (the official release, no preprocessing)::

    mapillary_vistas/{training,validation}/images/*.jpg
    mapillary_vistas/{training,validation}/labels/*.png   (label = class index, 65 = unlabeled)
"""

import os
from typing import List

from .categories import mapillary_vistas_categories
from .registration import register_sem_seg_splits, stuff_class_metadata

__all__ = ["register_mapillary_vistas", "MAPILLARY_VISTAS_IGNORE_LABEL"]

# Label 65 is the "unlabeled" class of the release, which is not evaluated.
MAPILLARY_VISTAS_IGNORE_LABEL = 65


def register_mapillary_vistas(root: str, name_prefix: str = "") -> List[str]:
    """
    Register ``{name_prefix}mapillary_vistas_sem_seg_{train,val}`` rooted at ``root``.

    Returns:
        list[str]: the names (re-)registered by this call.
    """
    base = os.path.join(root, "mapillary_vistas")
    splits = {
        f"{name_prefix}mapillary_vistas_sem_seg_{split}": (
            os.path.join(base, folder, "images"),
            os.path.join(base, folder, "labels"),
        )
        for split, folder in [("train", "training"), ("val", "validation")]
    }
    categories = mapillary_vistas_categories()
    meta = {
        **stuff_class_metadata(categories, name_key="readable"),
        "ignore_label": MAPILLARY_VISTAS_IGNORE_LABEL,
    }
    return register_sem_seg_splits(splits, meta, gt_ext="png", image_ext="jpg")
