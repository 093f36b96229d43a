# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Train-time dataset mappers, registered in :data:`DATASET_MAPPER_REGISTRY` under the names
used by ``INPUT.DATASET_MAPPER_NAME``; :func:`build_train_mapper` builds the configured one.
:class:`MaskFormerTestDatasetMapper` maps evaluation inputs. Bad input raises the errors of
:mod:`mask_former.data.errors` (an unreadable file:
:class:`~mask_former.data.io.UnreadableImageError`, a DataError), whose messages name the file.
"""

from ..errors import DataError, DataFileNotFoundError, ImageSizeMismatchError, MapperError
from ..io import UnreadableImageError
from .build import DATASET_MAPPER_REGISTRY, build_train_mapper, register_mapper
from .detr_panoptic import DETRPanopticDatasetMapper
from .evaluation import MaskFormerTestDatasetMapper
from .panoptic import MaskFormerPanopticDatasetMapper
from .semantic import MaskFormerSemanticDatasetMapper, build_mask_former_train_augmentations

__all__ = [
    "DATASET_MAPPER_REGISTRY",
    "build_train_mapper",
    "register_mapper",
    "build_mask_former_train_augmentations",
    "MaskFormerSemanticDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "DETRPanopticDatasetMapper",
    "MaskFormerTestDatasetMapper",
    "DataError",
    "DataFileNotFoundError",
    "ImageSizeMismatchError",
    "MapperError",
    "UnreadableImageError",
]
