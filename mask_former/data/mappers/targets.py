# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The tensors a dataset mapper outputs, shared by the mappers: the image tensor, the padding of
image and label maps to the size divisibility, and the training targets (one binary mask and
class per class present, or per panoptic segment) as ``Instances``.

Shape shorthand in this module: H, W image height and width; C image channels; N number of
target masks.
"""

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.structures import Instances

__all__ = [
    "image_to_tensor",
    "pad_to_divisibility",
    "semantic_instances",
    "panoptic_instances",
]


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 array -> (C, H, W) uint8 tensor."""
    array = np.ascontiguousarray(image.transpose(2, 0, 1))
    if not array.flags.writeable:
        # A decoded image that no transform copied (e.g. 1x1: its transpose is contiguous)
        # is PIL's read-only buffer, which torch warns about sharing.
        array = array.copy()
    return torch.as_tensor(array)


def pad_to_divisibility(tensor: torch.Tensor, size_divisibility: int, value: float) -> torch.Tensor:
    """
    Pad the last two dims (H, W) on the bottom and right up to the next multiple of
    ``size_divisibility`` with ``value``; a no-op when ``size_divisibility <= 0``.

    With the model-zoo configs (images never larger than SIZE_DIVISIBILITY = the crop size)
    this pads to exactly SIZE_DIVISIBILITY, as the original does; a larger image is padded up
    to the next multiple rather than cropped.
    """
    if size_divisibility <= 0:
        return tensor
    h, w = tensor.shape[-2:]
    pad_h = -h % size_divisibility
    pad_w = -w % size_divisibility
    if pad_h == 0 and pad_w == 0:
        return tensor
    return F.pad(tensor, [0, pad_w, 0, pad_h], value=value).contiguous()


def _instances(image_shape: Tuple[int, int], classes: List[int], masks: torch.Tensor) -> Instances:
    instances = Instances(image_shape)
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    instances.gt_masks = masks
    return instances


def semantic_instances(sem_seg: torch.Tensor, ignore_label: int) -> Instances:
    """
    One target per class present in ``sem_seg`` ((H, W) long), the ignore label excluded.

    Returns:
        Instances of image size (H, W) with ``gt_classes`` (N,) int64 (ascending) and
        ``gt_masks`` (N, H, W) bool.
    """
    classes = torch.unique(sem_seg)
    classes = classes[classes != ignore_label]
    masks = sem_seg[None] == classes[:, None, None]
    return _instances(tuple(sem_seg.shape), classes.tolist(), masks)


def panoptic_instances(pan_seg: torch.Tensor, segments_info: Sequence[Dict[str, Any]]) -> Instances:
    """
    One target per non-crowd segment of ``segments_info``, in its order, as the original
    MaskFormer does. A segment that the augmentation cropped away keeps its target with an
    all-zero mask: it still counts in the matching and in the number of masks that normalises
    the mask losses.

    Args:
        pan_seg: (H, W) segment ids.
        segments_info: the record's segments (``id``, ``category_id``, ``iscrowd``).

    Returns:
        Instances of image size (H, W) with ``gt_classes`` (N,) int64 and ``gt_masks``
        (N, H, W) bool.
    """
    kept = [s for s in segments_info if not s.get("iscrowd", 0)]
    ids = torch.tensor([s["id"] for s in kept], dtype=pan_seg.dtype)
    masks = pan_seg[None] == ids[:, None, None]
    return _instances(tuple(pan_seg.shape), [int(s["category_id"]) for s in kept], masks)
