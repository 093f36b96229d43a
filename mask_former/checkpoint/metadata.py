# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The class names a model was trained with, saved inside its checkpoints.

Every checkpoint the Trainer writes has a "metadata" entry: plain containers (so that the
restricted unpickler and ``torch.load(weights_only=True)`` read it) with the train dataset's

* "stuff_classes": [str, ...] (every class of a MaskFormer model, things included),
* "thing_classes": [str, ...], "stuff_colors" / "thing_colors": [[r, g, b], ...],
* "thing_dataset_id_to_contiguous_id": {int: int},

where the dataset's metadata has them, and "dataset": its name. Files converted from Hugging
Face (``tools/convert-hf-maskformer-to-d2.py``) hold a "metadata" entry of the same format.
A top-level "class_names": [str, ...] (the converter's earlier files) reads as "stuff_classes".
"""

import logging
from typing import Any, Dict, Optional

from detectron2.data import MetadataCatalog

__all__ = ["METADATA_KEY", "METADATA_FIELDS", "dataset_metadata", "checkpoint_metadata"]

logger = logging.getLogger(__name__)

METADATA_KEY = "metadata"
# The fields of a dataset's metadata that a checkpoint keeps.
METADATA_FIELDS = (
    "stuff_classes",
    "thing_classes",
    "stuff_colors",
    "thing_colors",
    "thing_dataset_id_to_contiguous_id",
)


def _plain(field: str, value: Any) -> Any:
    """A metadata value as plain containers of str and int."""
    if field.endswith("_classes"):
        return [str(name) for name in value]
    if field.endswith("_colors"):
        return [[int(c) for c in color] for color in value]
    return {int(k): int(v) for k, v in dict(value).items()}


def dataset_metadata(dataset_name: Optional[str]) -> Dict[str, Any]:
    """
    The metadata of the registered dataset ``dataset_name`` that a checkpoint keeps (see the
    module docstring); empty when it names no classes or the name is empty.
    """
    if not dataset_name:
        return {}
    metadata = MetadataCatalog.get(dataset_name)
    saved: Dict[str, Any] = {}
    for field in METADATA_FIELDS:
        value = metadata.get(field)
        if value is not None:
            saved[field] = _plain(field, value)
    if "stuff_classes" not in saved:
        return {}
    saved["dataset"] = str(dataset_name)
    return saved


def checkpoint_metadata(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """
    The class metadata of a loaded checkpoint dict (see the module docstring): its "metadata"
    entry, or its "class_names" as "stuff_classes"; empty if it has neither or they are not
    lists of names.
    """
    saved = checkpoint.get(METADATA_KEY)
    if not isinstance(saved, dict):
        names = checkpoint.get("class_names")
        saved = {"stuff_classes": names} if isinstance(names, (list, tuple)) else {}
    names = saved.get("stuff_classes")
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        if saved:
            logger.warning("The checkpoint's metadata names no classes: it is ignored")
        return {}
    return {k: v for k, v in saved.items() if k in METADATA_FIELDS or k == "dataset"}
