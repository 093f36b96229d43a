# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
``mask_former_semantic``: the train-time mapper for semantic segmentation datasets.

Shape shorthand in this module: H, W height and width after augmentation and padding;
N number of target masks (one per class present).
"""

import copy
import logging
from typing import Any, Dict, List, Optional

import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

from ..checks import check_num_classes
from ..errors import DataError, naming_the_record
from .build import register_mapper
from .reading import check_label_range, read_image, read_label_map
from .targets import image_to_tensor, pad_to_divisibility, semantic_instances

__all__ = ["MaskFormerSemanticDatasetMapper", "build_mask_former_train_augmentations"]

logger = logging.getLogger(__name__)

# Padding value of images: mid-grey, as in the original recipe.
IMAGE_PAD_VALUE = 128


def build_mask_former_train_augmentations(cfg: CfgNode) -> List[T.Augmentation]:
    """
    The MaskFormer train augmentations: resize the shortest edge; crop (retrying until no
    single category covers more than INPUT.CROP.SINGLE_CATEGORY_MAX_AREA of it) if
    INPUT.CROP.ENABLED; SSD colour augmentation if INPUT.COLOR_AUG_SSD; horizontal flip.
    """
    augs: List[T.Augmentation] = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        )
    if cfg.INPUT.COLOR_AUG_SSD:
        from detectron2.projects.point_rend import ColorAugSSDTransform

        augs.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
    augs.append(T.RandomFlip())
    return augs


def ignore_label_of(dataset_name: str) -> int:
    """The ``ignore_label`` of a registered dataset, with a clear error if it has none."""
    meta = MetadataCatalog.get(dataset_name)
    ignore_label = meta.get("ignore_label", None)
    if ignore_label is None:
        raise ValueError(
            f"Dataset {dataset_name!r} has no 'ignore_label' in its metadata; the MaskFormer "
            "mappers need it to pad the targets."
        )
    return int(ignore_label)


@register_mapper("mask_former_semantic")
class MaskFormerSemanticDatasetMapper:
    """
    Maps a semantic segmentation record (``file_name``, ``sem_seg_file_name``) to the
    MaskFormer training input: augmented image, padded label map, and one binary target mask
    per class present. Train only; evaluation uses detectron2's ``DatasetMapper``.

    Output dict: the record without ``sem_seg_file_name`` (as in the original), plus "image"
    (3, H, W) uint8 tensor; "sem_seg" (H, W) long tensor; "instances": Instances with
    ``gt_classes`` (N,) int64 and ``gt_masks`` (N, H, W) bool.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        ignore_label: int,
        size_divisibility: int,
        num_classes: Optional[int] = None,
    ):
        """
        Args:
            is_train: must be True (the mapper builds training targets).
            augmentations: applied in order to the image and the label maps.
            image_format: an image format accepted by ``detection_utils.read_image``.
            ignore_label: label of ignored pixels; also the padding value of "sem_seg".
            size_divisibility: pad image and targets (bottom/right) to a multiple of this;
                <= 0 disables padding.
            num_classes: when given, any label outside [0, num_classes) other than
                ``ignore_label`` raises an error naming the file.
        """
        if not is_train:
            raise ValueError(
                f"{type(self).__name__} builds training targets only; use detectron2's "
                "DatasetMapper for evaluation."
            )
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        self.num_classes = num_classes
        logger.info("%s augmentations: %s", type(self).__name__, augmentations)

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict[str, Any]:
        check_num_classes(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, cfg.DATASETS.TRAIN)
        return {
            "is_train": is_train,
            "augmentations": build_mask_former_train_augmentations(cfg),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore_label_of(cfg.DATASETS.TRAIN[0]),
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        }

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        """
        Map one record (left unchanged). A bad file or record raises an error that names the
        file (see :mod:`mask_former.data.errors`). A label map with only the ignore
        label gives no targets: "instances" with N = 0, which the criterion trains on as
        "no object" for every query.
        """
        with naming_the_record(dataset_dict):
            return self._map(copy.deepcopy(dataset_dict))

    def _map(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        if "annotations" in dataset_dict:
            raise DataError(
                f"Record of {dataset_dict.get('file_name')!r} has 'annotations': the semantic "
                "mapper reads only 'sem_seg_file_name'."
            )
        if "sem_seg_file_name" not in dataset_dict:
            raise DataError(
                f"Record of {dataset_dict.get('file_name')!r} has no 'sem_seg_file_name'."
            )
        image = read_image(dataset_dict, self.image_format)
        sem_seg = read_label_map(dataset_dict, "sem_seg_file_name", image.shape[:2])
        # The original pops the label file from the record it returns.
        label_path = dataset_dict.pop("sem_seg_file_name")
        check_label_range(sem_seg, self.num_classes, self.ignore_label, label_path)
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)

        image_t = pad_to_divisibility(
            image_to_tensor(aug_input.image), self.size_divisibility, IMAGE_PAD_VALUE
        )
        sem_seg_t = pad_to_divisibility(
            torch.as_tensor(aug_input.sem_seg.astype("long")),
            self.size_divisibility,
            self.ignore_label,
        )
        dataset_dict["image"] = image_t
        dataset_dict["sem_seg"] = sem_seg_t
        dataset_dict["instances"] = semantic_instances(sem_seg_t, self.ignore_label)
        return dataset_dict
