# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Detectron2 evaluators for a dataset, chosen by the dataset's metadata ``evaluator_type`` as the
original MaskFormer's ``train_net.py`` chooses them.

Every evaluator is checked before inference starts: the model must produce the output it reads
(a MODEL.MASK_FORMER.TEST flag) and the ground truth it reads must exist. A failed check raises
ValueError or FileNotFoundError naming the dataset, the evaluator and the flag, metadata key or
file. It never raises NotImplementedError, which detectron2's ``DefaultTrainer.test`` would
turn into "No evaluator found" and an empty result.
"""

import logging
import os
from dataclasses import dataclass, replace
from typing import Callable, Collection, Dict, List, Optional, Tuple

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

__all__ = ["build_evaluator", "EVALUATOR_TYPES"]

logger = logging.getLogger(__name__)


def _has_compiled_detectron2() -> bool:
    from detectron2 import _C

    # The stand-in of mask_former.d2_compat has no file; a compiled extension has one.
    return getattr(_C, "__file__", None) is not None


@dataclass(frozen=True)
class _EvaluatorSpec:
    """
    What one detectron2 evaluator reads.

    Attributes:
        name: the evaluator's class name, for messages.
        make: builds it from (dataset name, output folder).
        output: the model output it reads ("sem_seg", "panoptic_seg" or "instances").
        flag: the MODEL.MASK_FORMER.TEST flag that turns that output on.
        metadata: metadata keys it reads.
        metadata_paths: metadata keys naming a ground-truth file or folder that must exist.
        record_file: record key naming each image's ground-truth file, which must exist.
        only_if_given: use the evaluator only if the records name ``record_file`` at all.
    """

    name: str
    make: Callable[[str, str], DatasetEvaluator]
    output: str
    flag: str
    metadata: Tuple[str, ...] = ()
    metadata_paths: Tuple[str, ...] = ()
    record_file: Optional[str] = None
    only_if_given: bool = False


_SEM_SEG = _EvaluatorSpec(
    "SemSegEvaluator",
    lambda name, out: SemSegEvaluator(name, distributed=True, output_dir=out),
    "sem_seg",
    "SEMANTIC_ON",
    metadata=("stuff_classes", "ignore_label"),
    record_file="sem_seg_file_name",
)
_PANOPTIC = _EvaluatorSpec(
    "COCOPanopticEvaluator",
    COCOPanopticEvaluator,
    "panoptic_seg",
    "PANOPTIC_ON",
    metadata=("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id"),
    metadata_paths=("panoptic_json", "panoptic_root"),
)
_CITYSCAPES_SEM_SEG = _EvaluatorSpec(
    "CityscapesSemSegEvaluator",
    lambda name, out: CityscapesSemSegEvaluator(name),
    "sem_seg",
    "SEMANTIC_ON",
    metadata_paths=("gt_dir",),
)
_CITYSCAPES_INSTANCE = _EvaluatorSpec(
    "CityscapesInstanceEvaluator",
    lambda name, out: CityscapesInstanceEvaluator(name),
    "instances",
    "INSTANCE_ON",
    metadata=("thing_classes",),
    metadata_paths=("gt_dir",),
)
_COCO = _EvaluatorSpec(
    "COCOEvaluator",
    # The fast COCO evaluation is a compiled op.
    lambda name, out: COCOEvaluator(name, output_dir=out, use_fast_impl=_has_compiled_detectron2()),
    "instances",
    "INSTANCE_ON",
)

# evaluator_type -> its evaluators, in the original's order.
EVALUATOR_TYPES: Dict[str, Tuple[_EvaluatorSpec, ...]] = {
    "sem_seg": (_SEM_SEG,),
    "ade20k_sem_seg": (_SEM_SEG,),
    "ade20k_panoptic_seg": (_SEM_SEG, _PANOPTIC),
    # The main job's mIoU on shapes_panoptic_val comes from the semantic files of its records.
    "coco_panoptic_seg": (_PANOPTIC, replace(_SEM_SEG, only_if_given=True)),
    "cityscapes_panoptic_seg": (_PANOPTIC, _CITYSCAPES_SEM_SEG),
    "cityscapes_sem_seg": (_CITYSCAPES_SEM_SEG,),
    "cityscapes_instance": (_CITYSCAPES_INSTANCE,),
    "coco": (_COCO,),
}


def _check_output(spec: _EvaluatorSpec, cfg: CfgNode, where: str) -> None:
    flag = f"MODEL.MASK_FORMER.TEST.{spec.flag}"
    if not cfg.MODEL.MASK_FORMER.TEST[spec.flag]:
        raise ValueError(
            f"{where} is evaluated by {spec.name}, which needs the model's {spec.output!r} "
            f"output, but {flag} is False: set {flag} True"
        )


def _check_metadata(spec: _EvaluatorSpec, dataset_name: str, where: str) -> None:
    metadata = MetadataCatalog.get(dataset_name)
    for key in spec.metadata + spec.metadata_paths:
        if not hasattr(metadata, key):
            raise ValueError(f"{where}: {spec.name} needs the metadata {key!r}, which is not set")
    for key in spec.metadata_paths:
        path = getattr(metadata, key)
        if not PathManager.exists(path):
            raise FileNotFoundError(
                f"{where}: the ground truth of {spec.name}, metadata {key!r} = {path!r}, "
                "does not exist"
            )


def _check_record_files(spec: _EvaluatorSpec, records: List[Dict], where: str) -> None:
    key = spec.record_file
    unnamed = sum(key not in r for r in records)
    if unnamed:
        raise ValueError(f"{where}: {spec.name} needs {key!r}, which {unnamed} records lack")
    missing = [r[key] for r in records if not PathManager.exists(r[key])]
    if missing:
        raise FileNotFoundError(
            f"{where}: {len(missing)} of the {len(records)} ground-truth files of {spec.name} "
            f"({key!r}) do not exist, e.g. {missing[0]!r}"
        )


def _given(spec: _EvaluatorSpec, records: List[Dict], where: str) -> bool:
    """False for an evaluator used only where the records name ground truth that they do not."""
    if spec.only_if_given and not any(spec.record_file in r for r in records):
        logger.info("%s: no %s, as the records name no %r", where, spec.name, spec.record_file)
        return False
    return True


def _check(
    specs: List[_EvaluatorSpec], cfg: CfgNode, dataset_name: str, records: List[Dict], where: str
) -> None:
    """Check the model outputs of all ``specs`` first, then their ground truth."""
    for spec in specs:
        _check_output(spec, cfg, where)
    for spec in specs:
        _check_metadata(spec, dataset_name, where)
        if spec.record_file is not None:
            _check_record_files(spec, records, where)


def build_evaluator(
    cfg: CfgNode,
    dataset_name: str,
    output_folder: Optional[str] = None,
    *,
    tasks: Optional[Collection[str]] = None,
) -> DatasetEvaluator:
    """
    The evaluators of ``dataset_name`` by its metadata ``evaluator_type`` (see
    ``EVALUATOR_TYPES``): "sem_seg" / "ade20k_sem_seg" (mIoU), "ade20k_panoptic_seg" (mIoU and
    PQ), "coco_panoptic_seg" (PQ, and mIoU where the records name semantic files),
    "cityscapes_panoptic_seg" (PQ and Cityscapes mIoU), "cityscapes_sem_seg",
    "cityscapes_instance" and "coco".

    Args:
        cfg: the config of the evaluated model; its MODEL.MASK_FORMER.TEST flags must turn on
            every output that an evaluator reads.
        dataset_name: a registered dataset.
        output_folder: where results go (default OUTPUT_DIR/inference).
        tasks: evaluate only these model outputs (e.g. ("sem_seg",) for a model that
            gives nothing else); None: all of them.
    Returns:
        the one evaluator, or a DatasetEvaluators of several.
    Raises:
        NotImplementedError: the dataset has no known ``evaluator_type``.
        ValueError, FileNotFoundError: an evaluator lacks the model output or ground truth it
            reads, or ``tasks`` leaves none.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
    if evaluator_type not in EVALUATOR_TYPES:
        raise NotImplementedError(
            f"no evaluator for dataset {dataset_name!r} with evaluator_type {evaluator_type!r}; "
            f"known types: {sorted(EVALUATOR_TYPES)}"
        )
    where = f"dataset {dataset_name!r} (evaluator_type {evaluator_type!r})"
    specs = [s for s in EVALUATOR_TYPES[evaluator_type] if tasks is None or s.output in tasks]
    needs_records = any(s.record_file is not None for s in specs)
    records = DatasetCatalog.get(dataset_name) if needs_records else []
    specs = [s for s in specs if _given(s, records, where)]
    if not specs:
        raise ValueError(f"{where}: no evaluator of the model outputs {sorted(tasks or [])}")
    _check(specs, cfg, dataset_name, records, where)
    evaluators = [spec.make(dataset_name, output_folder) for spec in specs]
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
