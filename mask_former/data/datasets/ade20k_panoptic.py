# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
ADE20K panoptic (150 classes: 100 things, 50 stuff): ``ade20k_panoptic_{train,val}``.

Layout under the datasets root (panoptic files made by ``datasets/prepare_ade20k_pan_seg.py``,
semantic files by ``datasets/prepare_ade20k_sem_seg.py``)::

    ADEChallengeData2016/images/{training,validation}/*.jpg
    ADEChallengeData2016/ade20k_panoptic_{train,val}/*.png
    ADEChallengeData2016/ade20k_panoptic_{train,val}.json
    ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png

Every record carries both the panoptic PNG and the semantic label map, so one evaluation gives
PQ (COCOPanopticEvaluator) and mIoU (SemSegEvaluator): ``evaluator_type`` is
"ade20k_panoptic_seg".
"""

import functools
import os
from typing import Any, Dict, List

from .categories import ade20k_150_categories
from .panoptic_json import load_panoptic_json
from .registration import panoptic_class_metadata, register_dataset

__all__ = ["register_ade20k_panoptic", "ade20k_panoptic_metadata"]


def ade20k_panoptic_metadata() -> Dict[str, Any]:
    """
    Class names, colours and id maps of ADE20K panoptic. Category ids are already contiguous
    (0..149). ``thing_classes`` lists all 150 names (the visualizer indexes it by contiguous
    id); ``stuff_dataset_id_to_contiguous_id`` covers all 150 classes because SemSegEvaluator
    maps every predicted label through it.
    """
    return panoptic_class_metadata(ade20k_150_categories())


def register_ade20k_panoptic(root: str, name_prefix: str = "") -> List[str]:
    """
    Register ``{name_prefix}ade20k_panoptic_{train,val}`` rooted at ``root``.

    Returns:
        list[str]: the names (re-)registered by this call.
    """
    base = os.path.join(root, "ADEChallengeData2016")
    meta = ade20k_panoptic_metadata()
    registered = []
    for split, folder in [("train", "training"), ("val", "validation")]:
        name = f"{name_prefix}ade20k_panoptic_{split}"
        image_dir = os.path.join(base, "images", folder)
        panoptic_dir = os.path.join(base, f"ade20k_panoptic_{split}")
        panoptic_json = os.path.join(base, f"ade20k_panoptic_{split}.json")
        semantic_dir = os.path.join(base, "annotations_detectron2", folder)
        loader = functools.partial(
            load_panoptic_json,
            panoptic_json,
            image_dir,
            panoptic_dir,
            semantic_dir,
            meta["thing_dataset_id_to_contiguous_id"],
            meta["stuff_dataset_id_to_contiguous_id"],
        )
        split_meta = {
            **meta,
            "image_root": image_dir,
            "panoptic_root": panoptic_dir,
            "panoptic_json": panoptic_json,
            "sem_seg_root": semantic_dir,
            "json_file": os.path.join(base, f"ade20k_instance_{split}.json"),
            "evaluator_type": "ade20k_panoptic_seg",
            "ignore_label": 255,
            "label_divisor": 1000,
        }
        if register_dataset(name, loader, split_meta):
            registered.append(name)
    return registered
