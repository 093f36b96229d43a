# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Detectron2 evaluators for a dataset, chosen by the dataset's metadata ``evaluator_type``."""

import logging
import os
from typing import Callable, Dict, List

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from detectron2.utils.file_io import PathManager

__all__ = ["build_evaluator", "has_semantic_files", "PANOPTIC_EVALUATOR_TYPES"]

logger = logging.getLogger(__name__)

# Panoptic datasets: evaluated with PQ; their semantic files, if present, give mIoU too.
PANOPTIC_EVALUATOR_TYPES = ("coco_panoptic_seg", "ade20k_panoptic_seg", "cityscapes_panoptic_seg")


def has_semantic_files(dataset_name: str) -> bool:
    """Whether every record of the dataset names a semantic label file and the first exists."""
    records = DatasetCatalog.get(dataset_name)
    if not records or not all("sem_seg_file_name" in r for r in records):
        return False
    return PathManager.exists(records[0]["sem_seg_file_name"])


def _has_compiled_detectron2() -> bool:
    from detectron2 import _C

    # The stand-in of mask_former.d2_compat has no file; a compiled extension has one.
    return getattr(_C, "__file__", None) is not None


def _semantic(name: str, out: str, cfg: CfgNode) -> DatasetEvaluator:
    return SemSegEvaluator(name, distributed=True, output_dir=out)


def _panoptic(name: str, out: str, cfg: CfgNode) -> DatasetEvaluator:
    return COCOPanopticEvaluator(name, out)


def _coco(name: str, out: str, cfg: CfgNode) -> DatasetEvaluator:
    # The fast COCO evaluation is a compiled op.
    return COCOEvaluator(name, output_dir=out, use_fast_impl=_has_compiled_detectron2())


def _cityscapes_semantic(name: str, out: str, cfg: CfgNode) -> DatasetEvaluator:
    return CityscapesSemSegEvaluator(name)


def _cityscapes_instance(name: str, out: str, cfg: CfgNode) -> DatasetEvaluator:
    return CityscapesInstanceEvaluator(name)


_Factory = Callable[[str, str, CfgNode], DatasetEvaluator]

# evaluator_type -> evaluators always used for it (panoptic ones are added by _panoptic_extras).
_EVALUATORS: Dict[str, List[_Factory]] = {
    "sem_seg": [_semantic],
    "coco": [_coco],
    "cityscapes_sem_seg": [_cityscapes_semantic],
    "cityscapes_instance": [_cityscapes_instance],
    "coco_panoptic_seg": [],
    "ade20k_panoptic_seg": [],
    "cityscapes_panoptic_seg": [_cityscapes_semantic],
}


def _panoptic_extras(cfg: CfgNode, dataset_name: str, evaluator_type: str) -> List[_Factory]:
    """
    For a panoptic dataset: PQ when the model produces panoptic outputs
    (MODEL.MASK_FORMER.TEST.PANOPTIC_ON), and mIoU from the semantic files when they exist and the
    model produces semantic outputs (Cityscapes has its own semantic evaluator).
    """
    if evaluator_type not in PANOPTIC_EVALUATOR_TYPES:
        return []
    test = cfg.MODEL.MASK_FORMER.TEST
    extras: List[_Factory] = []
    if test.PANOPTIC_ON:
        extras.append(_panoptic)
    if (
        evaluator_type != "cityscapes_panoptic_seg"
        and test.SEMANTIC_ON
        and has_semantic_files(dataset_name)
    ):
        extras.append(_semantic)
    return extras


def build_evaluator(cfg: CfgNode, dataset_name: str, output_folder: str = None) -> DatasetEvaluator:
    """
    Evaluators of ``dataset_name`` by its metadata ``evaluator_type``: "sem_seg" (mIoU),
    "coco_panoptic_seg" / "ade20k_panoptic_seg" / "cityscapes_panoptic_seg" (PQ, plus mIoU where
    semantic files exist; Cityscapes' own semantic evaluator for Cityscapes), "coco",
    "cityscapes_sem_seg", "cityscapes_instance". Results go to ``output_folder``
    (default OUTPUT_DIR/inference).
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
    if evaluator_type not in _EVALUATORS:
        raise NotImplementedError(
            f"no evaluator for dataset {dataset_name!r} with evaluator_type {evaluator_type!r}; "
            f"known types: {sorted(_EVALUATORS)}"
        )
    factories = _EVALUATORS[evaluator_type] + _panoptic_extras(cfg, dataset_name, evaluator_type)
    if not factories:
        raise NotImplementedError(
            f"dataset {dataset_name!r} ({evaluator_type}): nothing to evaluate, as neither "
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON nor semantic files with SEMANTIC_ON are set"
        )
    evaluators = [make(dataset_name, output_folder, cfg) for make in factories]
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
