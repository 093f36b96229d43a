# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
What inference returns: :class:`Prediction` (one image's maps, segments and instances with
class names) and :class:`Segment`, and :func:`class_metadata`, the metadata that names (and,
for drawings, colours) a model's classes.

Shape shorthand in this module: H, W image height and width; N instances.
"""

import dataclasses
import logging
from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.structures import Instances

from ..data.checks import NUM_CLASSES_KEY, check_num_classes

__all__ = ["Prediction", "Segment", "class_metadata", "segments_of"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Segment:
    """One segment of a panoptic result: its id in ``Prediction.panoptic`` and its class."""

    id: int
    category_id: int
    class_name: str
    isthing: bool
    area: int


@dataclasses.dataclass
class Prediction:
    """
    The result for one image. Maps and instances are on the CPU, at the image's size; the
    model's own output dict (on the model's device) is ``outputs``.

    Attributes:
        source: the file path, or ``"<input i>"`` for the i-th array or PIL image of a call.
        height, width: the image's size.
        class_names: the K class names of the model (index = class id).
        semantic: (H, W) int64 class ids (argmax of the "sem_seg" scores), or None when the
            model gives no semantic output.
        panoptic: (H, W) int32 segment ids (0: no segment), or None.
        segments: the segments of ``panoptic``, with class names.
        instances: "instances" of the model (``pred_masks``, ``pred_classes``, ``scores``),
            or None.
        outputs: the model's output dict for the image ("sem_seg" (K, H, W) scores, ...).
        error: why the image gave no result (an unreadable file with ``errors="skip"``),
            else None.
    """

    source: str
    height: int = 0
    width: int = 0
    class_names: List[str] = dataclasses.field(default_factory=list)
    semantic: Optional[torch.Tensor] = None
    panoptic: Optional[torch.Tensor] = None
    segments: List[Segment] = dataclasses.field(default_factory=list)
    instances: Optional[Instances] = None
    outputs: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        """True when the image was predicted (``error`` is None)."""
        return self.error is None

    @property
    def instance_class_names(self) -> List[str]:
        """The class name of each instance (empty without instances)."""
        if self.instances is None:
            return []
        return [_class_name(self.class_names, c) for c in self.instances.pred_classes.tolist()]

    def cpu(self) -> "Prediction":
        """This prediction with ``outputs`` on the CPU too (a copy; e.g. to send it away)."""
        return dataclasses.replace(self, outputs=_outputs_to_cpu(self.outputs))

    def with_instances_above(self, threshold: float) -> "Prediction":
        """
        A copy without the instances scoring below ``threshold`` (in ``instances`` and in
        ``outputs["instances"]``); this prediction itself when ``threshold`` <= 0.
        """
        if threshold <= 0 or self.instances is None:
            return self
        outputs = dict(self.outputs)
        if "instances" in outputs:
            kept = outputs["instances"]
            outputs["instances"] = kept[kept.scores >= threshold]
        instances = self.instances[self.instances.scores >= threshold]
        return dataclasses.replace(self, instances=instances, outputs=outputs)


def _outputs_to_cpu(outputs: Dict[str, Any]) -> Dict[str, Any]:
    """A model's output dict with its tensors (and Instances) on the CPU."""
    moved = {}
    for key, value in outputs.items():
        if key == "panoptic_seg":
            ids, segments_info = value
            moved[key] = (ids.to("cpu"), segments_info)
        else:  # a tensor ("sem_seg") or Instances
            moved[key] = value.to("cpu")
    return moved


def _class_name(names: Sequence[str], class_id: int) -> str:
    return names[class_id] if 0 <= class_id < len(names) else f"class {class_id}"


def segments_of(
    ids: torch.Tensor, segments_info: List[Dict], thing_names: List[str], stuff_names: List[str]
) -> List[Segment]:
    """
    The segments of a panoptic map with class names (things named by ``thing_names``, stuff
    by ``stuff_names``) and areas.

    Args:
        ids: (H, W) segment ids.
        segments_info: the model's list of {"id", "category_id", "isthing"} dicts.
    """
    values, counts = torch.unique(ids, return_counts=True)
    areas = dict(zip(values.tolist(), counts.tolist()))
    segments = []
    for info in segments_info:
        isthing = bool(info.get("isthing", False))
        names = thing_names if isthing else stuff_names
        category = int(info["category_id"])
        segment_id = int(info["id"])
        area = int(areas.get(segment_id, 0))
        segments.append(Segment(segment_id, category, _class_name(names, category), isthing, area))
    return segments


def _test_dataset_metadata(cfg: CfgNode) -> Optional[Metadata]:
    """The metadata of DATASETS.TEST[0] if it is registered and names classes, else None."""
    if not len(cfg.DATASETS.TEST):
        return None
    name = cfg.DATASETS.TEST[0]
    if name not in MetadataCatalog.list() and name not in DatasetCatalog.list():
        return None
    metadata = MetadataCatalog.get(name)
    if metadata.get("stuff_classes") is None:
        logger.warning("Dataset %s has no class names in its metadata", name)
        return None
    check_num_classes(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, [name])
    return metadata


def _saved_metadata(cfg: CfgNode, saved: Dict[str, Any], source: str) -> Metadata:
    """Metadata from the class metadata saved in a checkpoint; its class count must fit."""
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    names = list(saved["stuff_classes"])
    if len(names) != num_classes:
        raise ValueError(
            f"{NUM_CLASSES_KEY} is {num_classes} but the checkpoint {source} names "
            f"{len(names)} classes: the model does not match its class names. "
            f"Set {NUM_CLASSES_KEY} {len(names)}."
        )
    fields = {"thing_classes": names, **saved}
    return Metadata(name="__checkpoint_classes").set(**fields)


def class_metadata(
    cfg: CfgNode, saved: Optional[Dict[str, Any]] = None, source: str = ""
) -> Metadata:
    """
    The metadata that names (and colours) the classes, in this order of precedence:

    1. that of the config's first test set (DATASETS.TEST[0]), when it is registered in this
       process and names classes (``demo.py --register`` registers a user's datasets);
    2. the class metadata saved in the checkpoint (``saved``: ``LoadedWeights.metadata``, see
       :mod:`mask_former.checkpoint.metadata`; ``source``: the file, for messages);
    3. generic names "class 0", "class 1", ... for MODEL.SEM_SEG_HEAD.NUM_CLASSES classes, with
       a warning, so that any model can still be named and drawn.

    Raises:
        ValueError: the chosen class names are not MODEL.SEM_SEG_HEAD.NUM_CLASSES many (the
            message names both counts).
    """
    metadata = _test_dataset_metadata(cfg)
    if metadata is not None:
        return metadata
    if saved and saved.get("stuff_classes") is not None:
        return _saved_metadata(cfg, saved, source)
    test = f"{cfg.DATASETS.TEST[0]!r}" if len(cfg.DATASETS.TEST) else "(none)"
    logger.warning(
        "No class names for the model: its test dataset %s is not registered in this process "
        "(see --register) and its checkpoint holds none; using generic names 'class 0', ...",
        test,
    )
    names = [f"class {i}" for i in range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)]
    return Metadata(name="__generic_classes").set(stuff_classes=names, thing_classes=names)
