# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Dataset registrations. Importing this package registers every dataset of the model zoo under
its original name, rooted at ``$DETECTRON2_DATASETS`` (default ``datasets``), plus the built-in
synthetic "shapes" datasets. Registration is idempotent: importing again, or calling
:func:`register_all` again, leaves registered names alone (see :func:`register_dataset`).

The helpers that register a dataset of one's own (see ``datasets/README.md``) are exported
here too: :func:`register_dataset`, :func:`register_sem_seg_splits`,
:func:`load_panoptic_json` and :func:`datasets_root`.
"""

from typing import List, Optional

from .ade20k_full import register_ade20k_full
from .ade20k_panoptic import register_ade20k_panoptic
from .builtin import register_ade20k_150, register_cityscapes_sem_seg, register_coco_panoptic
from .coco_stuff_10k import register_coco_stuff_10k
from .mapillary_vistas import register_mapillary_vistas
from .panoptic_json import load_panoptic_json
from .registration import datasets_root, register_dataset, register_sem_seg_splits
from .shapes import register_shapes

__all__ = [
    "register_all",
    "register_ade20k_150",
    "register_ade20k_full",
    "register_ade20k_panoptic",
    "register_cityscapes_sem_seg",
    "register_coco_panoptic",
    "register_coco_stuff_10k",
    "register_mapillary_vistas",
    "register_shapes",
    "datasets_root",
    "register_dataset",
    "register_sem_seg_splits",
    "load_panoptic_json",
]

_REGISTER_FUNCTIONS = (
    register_ade20k_150,
    register_ade20k_full,
    register_ade20k_panoptic,
    register_cityscapes_sem_seg,
    register_coco_panoptic,
    register_coco_stuff_10k,
    register_mapillary_vistas,
    register_shapes,
)


def register_all(root: Optional[str] = None, name_prefix: str = "") -> List[str]:
    """
    Register all datasets rooted at ``root`` (default: ``$DETECTRON2_DATASETS`` read now).

    Returns:
        list[str]: the names (re-)registered by this call.
    """
    root = datasets_root() if root is None else root
    registered: List[str] = []
    for register in _REGISTER_FUNCTIONS:
        registered += register(root, name_prefix)
    return registered


register_all()
