# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
``detr_panoptic``: the DETR-style mapper used for COCO panoptic.

Shape shorthand in this module: H, W height and width after augmentation; N number of target
masks (one per non-crowd segment).
"""

import copy
import logging
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import transforms as T

from ..checks import check_num_classes
from ..errors import DataError, naming_the_record
from ..io import rgb_to_ids
from .build import register_mapper
from .reading import check_segments, read_image, read_panoptic_rgb
from .targets import image_to_tensor, panoptic_instances

__all__ = ["DETRPanopticDatasetMapper"]

logger = logging.getLogger(__name__)

# The crop branch resizes the short side to 400, 500 or 600 with no limit in the original, which
# turns a 3x2000 image into 400x266667 to 600x400000 before cropping (1.7 GB peak at 400). A
# long side of at most 16 x 600 keeps the original's transforms for every image up to a 16:1
# aspect ratio.
CROP_RESIZE_MAX_SIZE = 16 * 600


@register_mapper("detr_panoptic")
class DETRPanopticDatasetMapper:
    """
    DETR's COCO panoptic recipe. Training: horizontal flip, then with probability 0.5 a
    resize of the shortest edge to one of (400, 500, 600) (long side at most
    ``CROP_RESIZE_MAX_SIZE``) followed by a random crop (when INPUT.CROP.ENABLED), then the
    multi-scale resize of the shortest edge. No padding (the model pads the batch).
    Evaluation: resize only, and annotations are dropped.

    As in the original, the panoptic PNG goes through the transforms as RGB (resized with
    PIL's nearest rule) and becomes segment ids afterwards.

    Output dict: the record plus "image" (3, H, W) uint8 tensor. In training, also
    "instances" with ``gt_classes`` (N,) int64 and ``gt_masks`` (N, H, W) bool, one per
    non-crowd segment of ``segments_info`` in its order (all-zero for a segment that the crop
    removed), and without ``pan_seg_file_name``; in evaluation, without "annotations".
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        crop_augmentations: Optional[List[T.Augmentation]],
        image_format: str,
        num_classes: Optional[int] = None,
    ):
        """
        Args:
            is_train: whether to build training targets.
            augmentations: always applied; the last one is the final resize.
            crop_augmentations: inserted before the final resize with probability 0.5
                (None: never).
            image_format: an image format accepted by ``detection_utils.read_image``.
            num_classes: when given, a segment category outside [0, num_classes) raises.
        """
        self.is_train = is_train
        self.augmentations = augmentations
        self.crop_augmentations = crop_augmentations
        self.image_format = image_format
        self.num_classes = num_classes
        logger.info(
            "DETRPanopticDatasetMapper augmentations: %s, crop: %s",
            augmentations,
            crop_augmentations,
        )

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict[str, Any]:
        if is_train:
            augs = [
                T.RandomFlip(),
                T.ResizeShortestEdge(
                    cfg.INPUT.MIN_SIZE_TRAIN,
                    cfg.INPUT.MAX_SIZE_TRAIN,
                    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
                ),
            ]
        else:
            augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)]
        crop = None
        if is_train and cfg.INPUT.CROP.ENABLED:
            crop = [
                T.ResizeShortestEdge(
                    [400, 500, 600], max_size=CROP_RESIZE_MAX_SIZE, sample_style="choice"
                ),
                T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE),
            ]
        datasets = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
        check_num_classes(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, datasets)
        return {
            "is_train": is_train,
            "augmentations": augs,
            "crop_augmentations": crop,
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        }

    def _pick_augmentations(self) -> T.AugmentationList:
        # The original's draw: crop unless rand() > 0.5, and no draw without a crop.
        if self.crop_augmentations is None or np.random.rand() > 0.5:
            return T.AugmentationList(self.augmentations)
        return T.AugmentationList(
            self.augmentations[:-1] + self.crop_augmentations + self.augmentations[-1:]
        )

    def _read_panoptic(self, dataset_dict: Dict[str, Any], image: np.ndarray) -> np.ndarray:
        """The checked (H, W, 3) uint8 panoptic PNG of a training record."""
        name = dataset_dict.get("file_name")
        for key in ("pan_seg_file_name", "segments_info"):
            if key not in dataset_dict:
                raise DataError(f"Panoptic record of {name!r} has no {key!r}.")
        pan_rgb = read_panoptic_rgb(dataset_dict, image.shape[:2])
        check_segments(
            rgb_to_ids(pan_rgb),
            dataset_dict["segments_info"],
            self.num_classes,
            dataset_dict["pan_seg_file_name"],
        )
        return pan_rgb

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        """Map one record (left unchanged); a bad file or record raises an error naming it."""
        with naming_the_record(dataset_dict):
            return self._map(copy.deepcopy(dataset_dict))

    def _map(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        image = read_image(dataset_dict, self.image_format)
        pan_rgb = self._read_panoptic(dataset_dict, image) if self.is_train else None
        aug_input = T.AugInput(image)
        transforms = self._pick_augmentations()(aug_input)
        dataset_dict["image"] = image_to_tensor(aug_input.image)
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        # Like the original, training keeps the record's other keys ("segments_info" too).
        dataset_dict.pop("pan_seg_file_name")
        pan_seg = torch.as_tensor(rgb_to_ids(transforms.apply_segmentation(pan_rgb)))
        dataset_dict["instances"] = panoptic_instances(pan_seg, dataset_dict["segments_info"])
        return dataset_dict
