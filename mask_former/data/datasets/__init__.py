# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Dataset registrations. Importing this package registers every dataset of the model zoo under
its original name, rooted at ``$DETECTRON2_DATASETS`` (default ``datasets``), plus the built-in
synthetic "shapes" datasets. Registration is idempotent: importing again, or calling
:func:`register_all` again, leaves registered names alone (see
:func:`.common.register_dataset`).
"""

from typing import List, Optional

from .ade20k_full import register_ade20k_full
from .ade20k_panoptic import register_ade20k_panoptic
from .builtin import register_ade20k_150, register_cityscapes_sem_seg, register_coco_panoptic
from .coco_stuff_10k import register_coco_stuff_10k
from .common import datasets_root
from .mapillary_vistas import register_mapillary_vistas
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
