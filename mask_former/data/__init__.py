# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Data: train-time dataset mappers (chosen by ``INPUT.DATASET_MAPPER_NAME``), the evaluation
mapper, the check of MODEL.SEM_SEG_HEAD.NUM_CLASSES against the datasets, the dataset
registrations of the model zoo, and the built-in synthetic "shapes" dataset. Importing this
package registers the mappers and the datasets.
"""

from . import datasets  # noqa: F401  (registers the datasets)
from .checks import check_num_classes
from .mappers import (
    DATASET_MAPPER_REGISTRY,
    DataError,
    DETRPanopticDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    MaskFormerTestDatasetMapper,
    build_train_mapper,
)

__all__ = [
    "DATASET_MAPPER_REGISTRY",
    "build_train_mapper",
    "MaskFormerSemanticDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "DETRPanopticDatasetMapper",
    "MaskFormerTestDatasetMapper",
    "DataError",
    "check_num_classes",
]
