# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Data: train-time dataset mappers (chosen by ``INPUT.DATASET_MAPPER_NAME``), the dataset
registrations of the model zoo, and the built-in synthetic "shapes" dataset. Importing this
package registers the mappers and the datasets.
"""

from . import datasets  # noqa: F401  (registers the datasets)
from .mappers import (
    DATASET_MAPPER_REGISTRY,
    DETRPanopticDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    build_train_mapper,
)

__all__ = [
    "DATASET_MAPPER_REGISTRY",
    "build_train_mapper",
    "MaskFormerSemanticDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "DETRPanopticDatasetMapper",
]
