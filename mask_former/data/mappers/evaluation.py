# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
``MaskFormerTestDatasetMapper``: the evaluation mapper, detectron2's test-time input with the
train mappers' reading and checking of files.

Shape shorthand in this module: H, W height and width after the test resize.
"""

import copy
import logging
from typing import Any, Dict, List, Optional

from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..checks import check_num_classes, dataset_num_classes
from ..errors import naming_the_record
from .reading import check_label_range, read_image, read_label_map
from .targets import image_to_tensor

__all__ = ["MaskFormerTestDatasetMapper"]

logger = logging.getLogger(__name__)


class MaskFormerTestDatasetMapper:
    """
    Maps a record to the model's evaluation input as detectron2's
    ``DatasetMapper(cfg, is_train=False)`` does: the record without "annotations" and
    "sem_seg_file_name", plus "image" (3, H, W) uint8 tensor resized by
    ``build_augmentation(cfg, is_train=False)`` (shortest edge INPUT.MIN_SIZE_TEST, longest at
    most INPUT.MAX_SIZE_TEST). Unlike it, there is no "sem_seg" (the evaluators read the ground
    truth from the files), and the files are read as the train mappers read them:

    * an unreadable image (missing, empty, truncated, not an image) is an error naming it,
      rather than a metric silently computed over fewer images;
    * 16-bit grey images are scaled to 8 bits (detectron2 clips them at 255);
    * a record's semantic label map, when its dataset's metadata gives the classes and the
      ignore label, is checked before the evaluator counts it: same size as the image, no
      label outside the classes but the ignore label.

    ``MaskFormerTestDatasetMapper(cfg, dataset_name=name)`` also checks that
    MODEL.SEM_SEG_HEAD.NUM_CLASSES is the number of classes of the dataset.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = False,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        num_classes: Optional[int] = None,
        ignore_label: Optional[int] = None,
    ):
        """
        Args:
            is_train: must be False (evaluation input only).
            augmentations: applied in order to the image.
            image_format: an image format accepted by ``detection_utils.read_image``.
            num_classes, ignore_label: when both are given, the label map of a record
                (``sem_seg_file_name``) is read and checked; otherwise it is not read.
        """
        if is_train:
            raise ValueError(f"{type(self).__name__} maps evaluation inputs only.")
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        logger.info("%s augmentations: %s", type(self).__name__, augmentations)

    @classmethod
    def from_config(
        cls, cfg: CfgNode, is_train: bool = False, dataset_name: Optional[str] = None
    ) -> Dict[str, Any]:
        """
        Args:
            dataset_name: the evaluated dataset. None: the class count is checked against
                every dataset of DATASETS.TEST, and label maps are not read.
        """
        names = [dataset_name] if dataset_name else list(cfg.DATASETS.TEST)
        check_num_classes(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, names)
        num_classes = ignore_label = None
        if dataset_name:
            found = dataset_num_classes(dataset_name)
            num_classes = None if found is None else found[0]
            ignore_label = MetadataCatalog.get(dataset_name).get("ignore_label", None)
        return {
            "is_train": is_train,
            "augmentations": utils.build_augmentation(cfg, is_train=False),
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": num_classes,
            "ignore_label": ignore_label,
        }

    def _check_label_map(self, dataset_dict: Dict[str, Any], image_shape) -> None:
        if self.num_classes is None or self.ignore_label is None:
            return
        labels = read_label_map(dataset_dict, "sem_seg_file_name", image_shape)
        path = dataset_dict["sem_seg_file_name"]
        check_label_range(labels, self.num_classes, self.ignore_label, path)

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        """Map one record (left unchanged); a bad file raises an error that names it."""
        with naming_the_record(dataset_dict):
            dataset_dict = copy.deepcopy(dataset_dict)
            image = read_image(dataset_dict, self.image_format)
            if "sem_seg_file_name" in dataset_dict:
                self._check_label_map(dataset_dict, image.shape[:2])
            aug_input = T.AugInput(image)
            self.augmentations(aug_input)
            dataset_dict["image"] = image_to_tensor(aug_input.image)
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict
