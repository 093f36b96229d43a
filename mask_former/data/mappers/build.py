# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""The registry of train-time dataset mappers and its builder."""

import logging
from typing import Callable, Optional

from detectron2.config import CfgNode
from detectron2.utils.registry import Registry

__all__ = ["DATASET_MAPPER_REGISTRY", "register_mapper", "build_train_mapper"]

logger = logging.getLogger(__name__)

DATASET_MAPPER_REGISTRY = Registry("DATASET_MAPPER")
DATASET_MAPPER_REGISTRY.__doc__ = """
Train-time dataset mappers, keyed by the value of ``cfg.INPUT.DATASET_MAPPER_NAME``
("mask_former_semantic", "mask_former_panoptic", "detr_panoptic").

A registered object is a ``@configurable`` class called as ``cls(cfg, is_train=True)``; the
instance maps one detectron2 dataset record (dict) to the model's input dict.
"""


def register_mapper(name: str) -> Callable[[type], type]:
    """Class decorator: register a mapper class under the config name ``name``."""

    def decorator(cls: type) -> type:
        # Configs use short names, not class names. fvcore's Registry (0.1.5, which detectron2
        # 0.6 re-exports) has no public way to register under a given name: register() always
        # keys by obj.__name__, and _do_register(name, obj) is the method it delegates to.
        DATASET_MAPPER_REGISTRY._do_register(name, cls)
        return cls

    return decorator


def build_train_mapper(cfg: CfgNode) -> Optional[Callable]:
    """
    Build the train-time mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``.

    Returns:
        the mapper, or None for a name not in :data:`DATASET_MAPPER_REGISTRY`, in which case
        the caller uses detectron2's default ``DatasetMapper``.
    """
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in DATASET_MAPPER_REGISTRY:
        logger.info(
            "INPUT.DATASET_MAPPER_NAME %r is not a MaskFormer mapper: using the default.", name
        )
        return None
    return DATASET_MAPPER_REGISTRY.get(name)(cfg, is_train=True)
