# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The dataset formats of the data tests: each model-zoo format's miniature writer, registration,
mapper and class count (:data:`FORMATS`), the config that keeps the miniatures at their size
(:func:`mini_cfg`), and the tiny model the training-step tests put on it (:func:`tiny_model_cfg`).
"""

from data_testutils import (
    H,
    unique_prefix,
    write_ade20k_150,
    write_ade20k_full,
    write_ade20k_panoptic,
    write_cityscapes,
    write_coco_panoptic,
    write_coco_stuff_10k,
    write_mapillary_vistas,
)

from mask_former import get_mask_former_cfg
from mask_former.data.datasets import (
    register_ade20k_150,
    register_ade20k_full,
    register_ade20k_panoptic,
    register_cityscapes_sem_seg,
    register_coco_panoptic,
    register_coco_stuff_10k,
    register_mapillary_vistas,
)
from tests.modeling.model_testing import TINY_HEAD, TINY_RESNET18, set_keys

# name: (writer, register, train name, mapper, K, ignore, evaluator_type)
FORMATS = {
    "ade20k_150": (
        write_ade20k_150,
        register_ade20k_150,
        "ade20k_sem_seg_train",
        "mask_former_semantic",
        150,
        255,
        "sem_seg",
    ),
    "ade20k_full": (
        write_ade20k_full,
        register_ade20k_full,
        "ade20k_full_sem_seg_train",
        "mask_former_semantic",
        847,
        65535,
        "sem_seg",
    ),
    "coco_stuff_10k": (
        write_coco_stuff_10k,
        register_coco_stuff_10k,
        "coco_2017_train_stuff_10k_sem_seg",
        "mask_former_semantic",
        171,
        255,
        "sem_seg",
    ),
    "mapillary": (
        write_mapillary_vistas,
        register_mapillary_vistas,
        "mapillary_vistas_sem_seg_train",
        "mask_former_semantic",
        65,
        65,
        "sem_seg",
    ),
    "cityscapes": (
        write_cityscapes,
        register_cityscapes_sem_seg,
        "cityscapes_fine_sem_seg_train",
        "mask_former_semantic",
        19,
        255,
        "cityscapes_sem_seg",
    ),
    "ade20k_panoptic": (
        write_ade20k_panoptic,
        register_ade20k_panoptic,
        "ade20k_panoptic_train",
        "mask_former_panoptic",
        150,
        255,
        "ade20k_panoptic_seg",
    ),
    "coco_panoptic": (
        write_coco_panoptic,
        register_coco_panoptic,
        "coco_2017_train_panoptic",
        "detr_panoptic",
        133,
        255,
        "coco_panoptic_seg",
    ),
}


def mini_cfg(dataset: str, mapper: str, num_classes: int, ignore: int):
    """A config whose augmentations keep the 24x32 miniature images at their size."""
    cfg = get_mask_former_cfg()
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.DATASETS.TEST = ()
    cfg.INPUT.DATASET_MAPPER_NAME = mapper
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (H,)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.SIZE_DIVISIBILITY = 32
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = ignore
    return cfg


def register_format(tmp_path, fmt):
    writer, register, base_name, mapper, k, ignore, evaluator = FORMATS[fmt]
    classes = writer(str(tmp_path))
    prefix = unique_prefix()
    registered = register(str(tmp_path), prefix)
    name = prefix + base_name
    assert name in registered
    return name, classes, mini_cfg(name, mapper, k, ignore)


def tiny_model_cfg(cfg):
    """
    ``cfg`` with the tests' tiny MaskFormer (model_testing's head on ResNet-18) in BatchNorm,
    the transformer decoder on res5 and 6 queries, on the CPU.
    """
    set_keys(cfg, {**TINY_HEAD, **TINY_RESNET18})
    return set_keys(
        cfg,
        {
            "MODEL.DEVICE": "cpu",
            "MODEL.WEIGHTS": "",
            "MODEL.RESNETS.NORM": "BN",
            "MODEL.RESNETS.STEM_OUT_CHANNELS": 64,
            "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "BasePixelDecoder",
            "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "res5",
            "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 6,
        },
    )
