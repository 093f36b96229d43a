# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
What a person looks at besides the drawing of a :class:`~.results.Prediction`: its segments as
table rows (id, class, thing or stuff, area in % of the image, score), its class map in colours
with a legend, its id map as a PNG and its segments as a JSON document. Plain functions of a
Prediction and NumPy, for the web demo (``demo/app.py``) and anyone else; no web framework.

A *task* is one kind of model output: "panoptic" ("panoptic_seg"), "semantic" ("sem_seg") or
"instance" ("instances"). A MaskFormer computes the tasks its config enables
(MODEL.MASK_FORMER.TEST.PANOPTIC_ON, SEMANTIC_ON, INSTANCE_ON) in one call, so a viewer can
switch between them without predicting again.

Scores: panoptic inference keeps no score per segment, so the score of a segment (and of a class
of the semantic map) is the mean, over its pixels, of its class's share of the pixel's semantic
scores ("sem_seg" normalised to sum 1 over the classes at each pixel; MaskFormer's scores sum
class probability x mask probability over the queries and are not normalised), in [0, 1], when
the prediction has "sem_seg"; an instance's score is the model's own (class probability x mask
quality).

Shape shorthand in this module: H, W image height and width; K classes; N instances.
"""

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Set

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import Metadata
from detectron2.utils.colormap import colormap
from PIL import Image

from ..data.io import ids_to_rgb
from .results import Prediction

__all__ = [
    "TASKS",
    "LegendEntry",
    "SegmentRow",
    "class_colours",
    "class_map",
    "colourise",
    "enabled_tasks",
    "id_map",
    "id_map_image",
    "legend",
    "segment_rows",
    "segments_document",
    "task_view",
    "thing_class_ids",
]

TASKS = ("panoptic", "semantic", "instance")
_OUTPUT_KEY = {"panoptic": "panoptic_seg", "semantic": "sem_seg", "instance": "instances"}
# How each task's id map is stored in its PNG (also written into the JSON document).
ID_MAP_ENCODINGS = {
    "panoptic": "RGB, segment id = R + 256 G + 256^2 B (COCO panoptic), 0 = no segment",
    "semantic": "one channel (8-bit, 16-bit above 255 classes), value = class id",
    "instance": "one channel (8-bit, 16-bit above 255 instances), value = instance id, "
    "0 = none; where instances overlap, the higher score wins",
}


@dataclasses.dataclass
class SegmentRow:
    """
    One row of a result table: a panoptic segment, a class of the semantic map or an instance.

    Attributes:
        id: the value of its pixels in :func:`id_map` (segment id, class id or instance id).
        class_id, class_name: its class.
        isthing: whether the class is a thing class.
        area: its pixels; ``area_percent``: the same in % of the image.
        score: see the module docstring; None when the prediction has none for it.
    """

    id: int
    class_id: int
    class_name: str
    isthing: bool
    area: int
    area_percent: float
    score: Optional[float]

    def cells(self) -> List[Any]:
        """The table cells: id, class, "thing"/"stuff", area % (2 decimals), score (3) or ""."""
        score = "" if self.score is None else round(self.score, 3)
        kind = "thing" if self.isthing else "stuff"
        return [self.id, self.class_name, kind, round(self.area_percent, 2), score]


TABLE_HEADERS = ["id", "class", "thing/stuff", "area %", "score"]


@dataclasses.dataclass
class LegendEntry:
    """A class of a class map: its id, name, RGB colour and area in % of the image."""

    class_id: int
    name: str
    colour: tuple
    area_percent: float


def enabled_tasks(cfg: CfgNode) -> List[str]:
    """
    The tasks a model of ``cfg`` computes, in :data:`TASKS` order: those of
    MODEL.MASK_FORMER.TEST.*_ON for a MaskFormer, "semantic" alone for other models (the
    per-pixel baselines) and for sliding-window inference (TEST.MODE "slide").
    """
    test = cfg.MODEL.MASK_FORMER.TEST
    if cfg.MODEL.META_ARCHITECTURE != "MaskFormer" or test.MODE == "slide":
        return ["semantic"]
    flags = {
        "panoptic": test.PANOPTIC_ON,
        "semantic": test.SEMANTIC_ON,
        "instance": test.INSTANCE_ON,
    }
    return [task for task in TASKS if flags[task]]


def thing_class_ids(metadata: Metadata) -> Set[int]:
    """The contiguous ids of the thing classes of ``metadata`` (empty when it names none)."""
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None) or {}
    return {int(v) for v in mapping.values()}


def _check_task(prediction: Prediction, task: str) -> str:
    if task not in _OUTPUT_KEY:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    key = _OUTPUT_KEY[task]
    if key not in prediction.outputs:
        raise ValueError(
            f"The prediction of {prediction.source} has no {task} output ({key!r}); "
            f"it has {sorted(prediction.outputs)}"
        )
    return key


def task_view(prediction: Prediction, task: str) -> Prediction:
    """A copy of ``prediction`` whose ``outputs`` hold ``task``'s output only (to draw it)."""
    key = _check_task(prediction, task)
    return dataclasses.replace(prediction, outputs={key: prediction.outputs[key]})


def _class_scores(prediction: Prediction) -> Optional[torch.Tensor]:
    """The (K, H, W) float semantic scores on the CPU, normalised to sum 1 per pixel, or None."""
    scores = prediction.outputs.get("sem_seg")
    if scores is None:
        return None
    scores = scores.detach().to("cpu", torch.float32)
    return scores / scores.sum(0, keepdim=True).clamp_min(1e-12)


def _mean_score(
    scores: Optional[torch.Tensor], class_id: int, mask: torch.Tensor
) -> Optional[float]:
    if scores is None or not 0 <= class_id < scores.shape[0] or not bool(mask.any()):
        return None
    return float(scores[class_id][mask].mean())


def _instance_ids(prediction: Prediction) -> torch.Tensor:
    """(H, W) int64: instance i + 1 where its mask is, the higher score on top; 0 elsewhere."""
    ids = torch.zeros((prediction.height, prediction.width), dtype=torch.int64)
    instances = prediction.instances
    if instances is None:
        return ids
    for i in torch.argsort(instances.scores.float(), stable=True).tolist():  # lowest first
        ids[instances.pred_masks[i].to("cpu") > 0.5] = i + 1
    return ids


def segment_rows(prediction: Prediction, task: str, thing_ids: Set[int]) -> List[SegmentRow]:
    """
    The table rows of ``task``: one per panoptic segment (in segment order), per class of the
    semantic map (by class id) or per instance (by instance id, from 1).

    Args:
        thing_ids: contiguous ids of the thing classes (:func:`thing_class_ids`); panoptic
            segments say themselves whether they are things.
    """
    _check_task(prediction, task)
    pixels = max(prediction.height * prediction.width, 1)
    scores = _class_scores(prediction)
    names = prediction.class_names
    rows = []
    if task == "panoptic":
        ids = prediction.panoptic
        for s in prediction.segments:
            score = _mean_score(scores, s.category_id, ids == s.id)
            percent = 100.0 * s.area / pixels
            rows.append(
                SegmentRow(s.id, s.category_id, s.class_name, s.isthing, s.area, percent, score)
            )
    elif task == "semantic":
        labels = prediction.semantic
        values, counts = torch.unique(labels, return_counts=True)
        for c, area in zip(values.tolist(), counts.tolist()):
            name = names[c] if 0 <= c < len(names) else f"class {c}"
            score = _mean_score(scores, c, labels == c)
            rows.append(SegmentRow(c, c, name, c in thing_ids, area, 100.0 * area / pixels, score))
    else:
        instances = prediction.instances
        areas = instances.pred_masks.flatten(1).gt(0.5).sum(1).tolist()
        classes = instances.pred_classes.tolist()
        for i, (c, name, area, score) in enumerate(
            zip(classes, prediction.instance_class_names, areas, instances.scores.tolist())
        ):
            rows.append(
                SegmentRow(i + 1, c, name, c in thing_ids, area, 100.0 * area / pixels, score)
            )
    return rows


def id_map(prediction: Prediction, task: str) -> np.ndarray:
    """
    (H, W) int64 ids of ``task``: panoptic segment ids (0: none), semantic class ids, or
    instance ids (0: none; where instances overlap the one with the higher score).
    """
    _check_task(prediction, task)
    if task == "panoptic":
        return prediction.panoptic.numpy().astype(np.int64)
    if task == "semantic":
        return prediction.semantic.numpy().astype(np.int64)
    return _instance_ids(prediction).numpy()


def id_map_image(ids: np.ndarray, task: str) -> Image.Image:
    """
    The PNG-ready image of an :func:`id_map` (see :data:`ID_MAP_ENCODINGS`): COCO panoptic
    colours for "panoptic", one 8-bit (or 16-bit) channel of the ids otherwise.
    """
    if task == "panoptic":
        return Image.fromarray(ids_to_rgb(ids), "RGB")
    if ids.size and (ids.min() < 0 or ids.max() > 65535):
        raise ValueError(
            f"{task} ids must be in [0, 65535] for a PNG, got {ids.min()}..{ids.max()}"
        )
    if ids.size == 0 or ids.max() <= 255:
        return Image.fromarray(ids.astype(np.uint8), "L")
    return Image.fromarray(ids.astype(np.uint16))


def segments_document(
    prediction: Prediction,
    task: str,
    rows: Sequence[SegmentRow],
    *,
    id_map_file: str,
    settings: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """
    A JSON-serialisable description of ``rows``: the image, its size, the task, the id map
    file and its encoding, the ``settings`` (e.g. the inference thresholds) and one dict per
    row (id, class_id, class, isthing, area, area_percent, score).
    """
    return {
        "image": prediction.source,
        "height": prediction.height,
        "width": prediction.width,
        "task": task,
        "id_map": {"file": id_map_file, "encoding": ID_MAP_ENCODINGS[task]},
        "settings": dict(settings or {}),
        "segments": [
            {
                "id": r.id,
                "class_id": r.class_id,
                "class": r.class_name,
                "isthing": r.isthing,
                "area": r.area,
                "area_percent": r.area_percent,
                "score": r.score,
            }
            for r in rows
        ],
    }


def class_colours(metadata: Metadata, num_classes: int) -> np.ndarray:
    """
    (K, 3) uint8 RGB colour of each class: the metadata's ``stuff_colors`` when it gives one
    per class, else detectron2's fixed colour map, repeated as needed.
    """
    given = metadata.get("stuff_colors", None)
    if given is not None and len(given) >= num_classes:
        return np.asarray(given[:num_classes], dtype=np.uint8).reshape(num_classes, 3)
    fixed = colormap(rgb=True, maximum=255).astype(np.uint8)
    return fixed[np.arange(num_classes) % len(fixed)]


def class_map(prediction: Prediction) -> np.ndarray:
    """
    (H, W) int64 class of each pixel, -1 for none: the semantic map when the prediction has
    one, else the classes of its panoptic segments, else of its instances (the higher score
    on top).
    """
    if prediction.semantic is not None:
        return prediction.semantic.numpy().astype(np.int64)
    if prediction.panoptic is not None:
        ids = prediction.panoptic.numpy()
        owners = [(s.id, s.category_id) for s in prediction.segments]
    elif prediction.instances is not None:
        ids = _instance_ids(prediction).numpy()
        owners = list(enumerate(prediction.instances.pred_classes.tolist(), start=1))
    else:
        raise ValueError(f"The prediction of {prediction.source} has no class map")
    lookup = np.full(int(ids.max(initial=0)) + 1, -1, dtype=np.int64)
    for segment_id, category_id in owners:
        lookup[segment_id] = category_id
    return lookup[ids]


def colourise(classes: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(H, W) class ids (-1: none, drawn black) -> (H, W, 3) uint8 RGB in ``colours`` (K, 3)."""
    if classes.size and classes.max() >= len(colours):
        raise ValueError(f"class id {classes.max()} has no colour ({len(colours)} colours)")
    table = np.concatenate([colours.astype(np.uint8), np.zeros((1, 3), np.uint8)])
    return table[np.where(classes < 0, len(colours), classes)]


def legend(classes: np.ndarray, names: Sequence[str], colours: np.ndarray) -> List[LegendEntry]:
    """The classes present in ``classes`` (H, W), largest area first, with name and colour."""
    values, counts = np.unique(classes[classes >= 0], return_counts=True)
    pixels = max(classes.size, 1)
    entries = [
        LegendEntry(
            int(c),
            names[c] if c < len(names) else f"class {c}",
            tuple(int(v) for v in colours[c]),
            100.0 * int(n) / pixels,
        )
        for c, n in zip(values.tolist(), counts.tolist())
    ]
    return sorted(entries, key=lambda e: (-e.area_percent, e.class_id))
