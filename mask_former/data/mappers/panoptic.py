# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
``mask_former_panoptic``: the train-time mapper for panoptic datasets (e.g. ADE20K panoptic).

Shape shorthand in this module: H, W height and width after augmentation and padding;
N number of target masks (one per non-crowd segment).
"""

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import transforms as T

from ..errors import DataError
from ..io import rgb_to_ids
from .build import register_mapper
from .reading import (
    check_label_range,
    check_segments,
    read_image,
    read_label_map,
    read_panoptic_rgb,
)
from .semantic import IMAGE_PAD_VALUE, MaskFormerSemanticDatasetMapper
from .targets import image_to_tensor, pad_to_divisibility, panoptic_instances

__all__ = ["MaskFormerPanopticDatasetMapper"]

# Segment id 0 is VOID in COCO panoptic PNGs: padding belongs to no segment.
PANOPTIC_PAD_VALUE = 0


def semantic_from_panoptic(
    pan_ids: np.ndarray, segments_info: Sequence[Dict[str, Any]], ignore_label: int
) -> np.ndarray:
    """
    Category of each pixel, ``ignore_label`` where no segment is listed.

    Args:
        pan_ids: (H, W) segment ids.

    Returns:
        np.ndarray: (H, W) float64 categories.
    """
    sem_seg = np.full(pan_ids.shape, ignore_label, dtype=np.float64)
    for segment in segments_info:
        sem_seg[pan_ids == segment["id"]] = segment["category_id"]
    return sem_seg


@register_mapper("mask_former_panoptic")
class MaskFormerPanopticDatasetMapper(MaskFormerSemanticDatasetMapper):
    """
    Maps a panoptic record (``file_name``, ``pan_seg_file_name``, ``segments_info`` with
    contiguous ``category_id``; optionally ``sem_seg_file_name``) to the MaskFormer training
    input, with the same augmentations and constructor as
    :class:`MaskFormerSemanticDatasetMapper`. Train only.

    The crop's single-category constraint looks at the semantic label map; when the record
    has none and the constraint is on, it is derived from the panoptic segments.

    The panoptic PNG goes through the transforms as RGB and becomes segment ids afterwards, as
    in the original, so that resizes use PIL's nearest rule and the masks cover the same pixels
    as the original's.

    Output dict: the record without ``pan_seg_file_name`` and ``sem_seg_file_name``, plus
    "image" (3, H, W) uint8 tensor; "sem_seg" (H, W) long tensor (only when the record has
    ``sem_seg_file_name``); "instances": Instances with ``gt_classes`` (N,) int64 and
    ``gt_masks`` (N, H, W) bool, one per non-crowd segment of ``segments_info`` in its order
    (all-zero for a segment that the crop removed).
    """

    def _crop_needs_sem_seg(self) -> bool:
        return any(
            isinstance(aug, T.RandomCrop_CategoryAreaConstraint)
            and aug.single_category_max_area < 1.0
            for aug in self.augmentations.augs
        )

    def _check_record(self, dataset_dict: Dict[str, Any]) -> None:
        name = dataset_dict.get("file_name")
        if "annotations" in dataset_dict:
            raise DataError(
                f"Record of {name!r} has 'annotations': the panoptic mapper reads only "
                "'pan_seg_file_name' and 'segments_info'."
            )
        for key in ("pan_seg_file_name", "segments_info"):
            if key not in dataset_dict:
                raise DataError(f"Panoptic record of {name!r} has no {key!r}.")

    def _read_semantic(
        self, dataset_dict: Dict[str, Any], pan_ids: np.ndarray, image_shape: Tuple[int, int]
    ) -> Optional[np.ndarray]:
        """The (H, W) float64 label map that goes through the transforms, or None."""
        if "sem_seg_file_name" in dataset_dict:
            sem_seg = read_label_map(dataset_dict, "sem_seg_file_name", image_shape)
            check_label_range(
                sem_seg, self.num_classes, self.ignore_label, dataset_dict["sem_seg_file_name"]
            )
            return sem_seg
        if self._crop_needs_sem_seg():
            return semantic_from_panoptic(pan_ids, dataset_dict["segments_info"], self.ignore_label)
        return None

    def _map(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        self._check_record(dataset_dict)
        image = read_image(dataset_dict, self.image_format)
        pan_rgb = read_panoptic_rgb(dataset_dict, image.shape[:2])
        pan_ids = rgb_to_ids(pan_rgb)
        segments_info = dataset_dict["segments_info"]
        check_segments(pan_ids, segments_info, self.num_classes, dataset_dict["pan_seg_file_name"])
        has_sem_seg = "sem_seg_file_name" in dataset_dict
        sem_seg = self._read_semantic(dataset_dict, pan_ids, image.shape[:2])

        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        pan_ids = rgb_to_ids(transforms.apply_segmentation(pan_rgb))

        dataset_dict.pop("pan_seg_file_name")
        dataset_dict.pop("sem_seg_file_name", None)
        dataset_dict["image"] = pad_to_divisibility(
            image_to_tensor(aug_input.image), self.size_divisibility, IMAGE_PAD_VALUE
        )
        if has_sem_seg:
            dataset_dict["sem_seg"] = pad_to_divisibility(
                torch.as_tensor(aug_input.sem_seg.astype("long")),
                self.size_divisibility,
                self.ignore_label,
            )
        pan_seg = pad_to_divisibility(
            torch.as_tensor(pan_ids), self.size_divisibility, PANOPTIC_PAD_VALUE
        )
        dataset_dict["instances"] = panoptic_instances(pan_seg, segments_info)
        return dataset_dict
