# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
What a report measures on the validation set itself: one pass of the project's
:class:`~mask_former.inference.Predictor` over the records of the run's test dataset gives

* the semantic confusion matrix (pixels of each ground-truth class by predicted class), from
  which per-class IoU follows;
* per-class panoptic quality (PQ, SQ, RQ), counted as COCO's panoptic evaluation counts it
  (detectron2's COCOPanopticEvaluator reports only the averages over all, thing and stuff
  classes, and deletes the prediction files it computed them from);
* the input | ground truth | prediction drawings of the first images (the images the main job
  draws).

The Predictor runs in the config's MODEL.MASK_FORMER.TEST.PRECISION (float32 unless the run set
another), as the evaluation during training does, so that the numbers recomputed here are those
of ``metrics.json``.

Shape shorthand in this module: H, W image height and width; K classes.
"""

import dataclasses
import logging
from collections import Counter
from typing import Dict, Iterable, List, Optional, Set, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.utils.visualizer import Visualizer
from panopticapi.evaluation import OFFSET, VOID, PQStat

from ..data import io
from ..inference import Prediction, Predictor
from .inputs import ReportInputError

__all__ = [
    "Sample",
    "ValidationResults",
    "accumulate_confusion",
    "accumulate_panoptic_quality",
    "evaluate_validation",
]

logger = logging.getLogger(__name__)

# A predicted and a ground-truth segment of the same class match above this IoU (COCO).
MATCH_IOU = 0.5


@dataclasses.dataclass
class Sample:
    """One validation image drawn for the report: (H, W, 3) uint8 RGB arrays of one size."""

    name: str
    image: np.ndarray
    ground_truth: np.ndarray
    prediction: np.ndarray


@dataclasses.dataclass
class ValidationResults:
    """
    What one pass over a validation set measured.

    Attributes:
        dataset: the dataset's registered name.
        class_names: the K class names (index = class id).
        thing_ids: the class ids of thing classes.
        num_images: the images evaluated (the first ones of the dataset).
        total_images: the images of the dataset.
        confusion: (K, K) int64 pixel counts, row = ground-truth class, column = predicted
            class (ignored pixels left out), or None without semantic output or ground truth.
        panoptic: per-class segment counts (panopticapi's PQStat), or None without panoptic
            output or ground truth.
        samples: the drawings of the first images.
    """

    dataset: str
    class_names: List[str]
    thing_ids: Set[int]
    num_images: int
    total_images: int
    confusion: Optional[np.ndarray]
    panoptic: Optional[PQStat]
    samples: List[Sample]

    def class_iou(self) -> Optional[np.ndarray]:
        """(K,) IoU of each class in %, from the confusion matrix (NaN: class never seen)."""
        if self.confusion is None:
            return None
        hits = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - hits
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, 100.0 * hits / union, np.nan)

    def class_pq(self) -> Dict[int, Dict[str, float]]:
        """
        Class id -> {"pq", "sq", "rq"} in % and {"tp", "fp", "fn"} counts, for the classes with
        any segment (panopticapi's averages leave the others out too).
        """
        if self.panoptic is None:
            return {}
        classes = range(len(self.class_names))
        categories = {i: {"isthing": int(i in self.thing_ids)} for i in classes}
        _, per_class = self.panoptic.pq_average(categories, isthing=None)
        results = {}
        for class_id, values in per_class.items():
            counts = self.panoptic[class_id]
            if counts.tp + counts.fp + counts.fn == 0:
                continue
            results[class_id] = {k: 100.0 * v for k, v in values.items()}
            results[class_id].update(tp=counts.tp, fp=counts.fp, fn=counts.fn)
        return results


def accumulate_confusion(
    confusion: np.ndarray, pred: np.ndarray, gt: np.ndarray, ignore_label: int, source: str = ""
) -> None:
    """
    Add one image to a confusion matrix.

    Args:
        confusion: (K, K) int64 counts, row = ground-truth class, column = predicted class;
            updated in place.
        pred: (H, W) predicted class ids.
        gt: (H, W) ground-truth class ids; pixels of ``ignore_label`` are left out.
        source: the image, for messages.

    Raises:
        ValueError: a class id outside 0..K-1 (other than the ignore label).
    """
    num_classes = confusion.shape[0]
    valid = gt != ignore_label
    gt, pred = gt[valid].astype(np.int64), pred[valid].astype(np.int64)
    for what, labels in (("ground truth", gt), ("prediction", pred)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"{source}: the {what} has class ids {labels.min()}..{labels.max()}, "
                f"outside 0..{num_classes - 1} (ignore label {ignore_label})"
            )
    counts = np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    confusion += counts.reshape(num_classes, num_classes)


def accumulate_panoptic_quality(
    stat: PQStat,
    pred_ids: np.ndarray,
    pred_classes: Dict[int, int],
    gt_ids: np.ndarray,
    gt_classes: Dict[int, int],
    gt_crowd: Iterable[int] = (),
) -> None:
    """
    Add one image to ``stat`` as COCO's panoptic evaluation (panopticapi) counts it: a
    predicted and a ground-truth segment of the same class match when their IoU is above 0.5,
    the prediction's pixels on void left out of the union; an unmatched ground-truth segment
    (not crowd) is a false negative; an unmatched predicted segment is a false positive unless
    more than half of it lies on void or on a crowd region of its class.

    Args:
        stat: per-class counts, updated in place.
        pred_ids: (H, W) predicted segment ids, 0 where no segment.
        pred_classes: predicted segment id -> class id.
        gt_ids: (H, W) ground-truth segment ids, 0 (VOID) where unlabelled.
        gt_classes: ground-truth segment id -> class id.
        gt_crowd: the ids of crowd ground-truth segments.
    """
    crowd = set(gt_crowd)
    pairs, counts = np.unique(
        gt_ids.astype(np.int64) * OFFSET + pred_ids.astype(np.int64), return_counts=True
    )
    overlap = {(int(p // OFFSET), int(p % OFFSET)): int(c) for p, c in zip(pairs, counts)}
    gt_area: Counter = Counter()
    pred_area: Counter = Counter()
    for (g, p), count in overlap.items():
        gt_area[g] += count
        pred_area[p] += count
    matched_gt, matched_pred = set(), set()
    for (g, p), intersection in overlap.items():
        if g not in gt_classes or p not in pred_classes or g in crowd:
            continue
        if gt_classes[g] != pred_classes[p]:
            continue
        union = pred_area[p] + gt_area[g] - intersection - overlap.get((VOID, p), 0)
        iou = intersection / union
        if iou > MATCH_IOU:
            stat[gt_classes[g]].tp += 1
            stat[gt_classes[g]].iou += iou
            matched_gt.add(g)
            matched_pred.add(p)
    crowd_of_class = {gt_classes[g]: g for g in crowd if g in gt_classes}
    for g, class_id in gt_classes.items():
        if g not in matched_gt and g not in crowd:
            stat[class_id].fn += 1
    for p, class_id in pred_classes.items():
        if p in matched_pred or pred_area[p] == 0:
            continue
        ignored = overlap.get((VOID, p), 0)
        if class_id in crowd_of_class:
            ignored += overlap.get((crowd_of_class[class_id], p), 0)
        if ignored / pred_area[p] <= MATCH_IOU:
            stat[class_id].fp += 1


@dataclasses.dataclass
class _GroundTruth:
    """An image's ground truth: (H, W) class ids and (H, W) segment ids with their segments."""

    semantic: Optional[np.ndarray] = None
    panoptic: Optional[np.ndarray] = None
    segments: List[Dict] = dataclasses.field(default_factory=list)


def _read_ground_truth(record: Dict) -> _GroundTruth:
    truth = _GroundTruth()
    if record.get("sem_seg_file_name"):
        path = record["sem_seg_file_name"]
        labels = np.asarray(io.open_image(path, "semantic ground truth"))
        if labels.ndim != 2:
            raise ValueError(f"{path}: a semantic label map must have one channel")
        truth.semantic = labels.astype(np.int64)
    if record.get("pan_seg_file_name") and "segments_info" in record:
        rgb = io.read_image(record["pan_seg_file_name"], "RGB", "panoptic ground truth")
        truth.panoptic = io.rgb_to_ids(rgb)
        truth.segments = list(record["segments_info"])
    return truth


def _draw_labels(rgb: np.ndarray, labels: np.ndarray, metadata: Metadata) -> np.ndarray:
    """(H, W) class ids drawn over the image with detectron2's Visualizer (seeded colours)."""
    state = np.random.get_state()
    np.random.seed(0)  # colours of classes without a metadata colour are drawn at random
    try:
        return Visualizer(rgb, metadata).draw_sem_seg(labels).get_image()
    finally:
        np.random.set_state(state)


def _draw_sample(
    rgb: np.ndarray, prediction: Prediction, truth: _GroundTruth, metadata: Metadata
) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """
    The ground truth and the prediction drawn alike: panoptic segments when the model and the
    dataset have them (with the front-end's drawing), else semantic classes; None if neither.
    """
    from ..inference.drawing import draw_prediction  # loads matplotlib: only when drawing

    if prediction.panoptic is not None and truth.panoptic is not None:
        ids = torch.as_tensor(truth.panoptic)
        size = (prediction.source, prediction.height, prediction.width, prediction.class_names)
        shown = Prediction(*size, outputs={"panoptic_seg": prediction.outputs["panoptic_seg"]})
        expected = Prediction(*size, outputs={"panoptic_seg": (ids, truth.segments)})
        drawn = [draw_prediction(rgb, p, metadata).get_image() for p in (expected, shown)]
        return drawn[0], drawn[1]
    if prediction.semantic is not None and truth.semantic is not None:
        return (
            _draw_labels(rgb, truth.semantic, metadata),
            _draw_labels(rgb, prediction.semantic.numpy(), metadata),
        )
    return None


def _thing_ids(metadata: Metadata) -> Set[int]:
    return set(metadata.get("thing_dataset_id_to_contiguous_id", {}).values())


def _dataset_records(dataset: str, max_images: Optional[int]) -> Tuple[List[Dict], int]:
    """The first ``max_images`` (None: all) records of ``dataset`` and the dataset's size."""
    if dataset not in DatasetCatalog.list():
        raise ReportInputError(
            f"dataset {dataset!r} is not registered in this process (DATASETS.TEST of the "
            "run's config.yaml; register it with --register, or choose one with --dataset)"
        )
    records = DatasetCatalog.get(dataset)
    if not records:
        raise ReportInputError(f"dataset {dataset!r} has no images")
    return records[: max_images or len(records)], len(records)


class _Accumulator:
    """The counts of a pass: confusion matrix and panoptic quality, per image."""

    def __init__(self, num_classes: int, ignore_label: int):
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.panoptic = PQStat()
        self.ignore_label = ignore_label
        self.semantic_images = self.panoptic_images = 0

    def add(self, prediction: Prediction, truth: _GroundTruth) -> None:
        if prediction.semantic is not None and truth.semantic is not None:
            pred = prediction.semantic.numpy()
            if pred.shape != truth.semantic.shape:
                raise ValueError(
                    f"{prediction.source}: the prediction is {pred.shape[1]}x{pred.shape[0]} "
                    f"but its ground truth {truth.semantic.shape[1]}x{truth.semantic.shape[0]}"
                )
            accumulate_confusion(
                self.confusion, pred, truth.semantic, self.ignore_label, prediction.source
            )
            self.semantic_images += 1
        if prediction.panoptic is not None and truth.panoptic is not None:
            segments = {s.id: s.category_id for s in prediction.segments}
            gt_classes = {int(s["id"]): int(s["category_id"]) for s in truth.segments}
            crowd = [int(s["id"]) for s in truth.segments if s.get("iscrowd", 0)]
            accumulate_panoptic_quality(
                self.panoptic,
                prediction.panoptic.numpy(),
                segments,
                truth.panoptic,
                gt_classes,
                crowd,
            )
            self.panoptic_images += 1


def evaluate_validation(
    config_file: str,
    checkpoint: str,
    *,
    dataset: Optional[str] = None,
    max_images: Optional[int] = None,
    num_samples: int = 12,
    batch_size: int = 4,
    progress: bool = False,
) -> ValidationResults:
    """
    Predict the validation images of a run with its last checkpoint and measure them.

    Args:
        config_file: the run's config.yaml.
        checkpoint: its weights.
        dataset: the registered dataset to evaluate; None: the config's DATASETS.TEST[0].
        max_images: evaluate the first ``max_images`` images only (None: all).
        num_samples: how many of the first images to draw.
        batch_size: images per model call.
        progress: show a progress bar on stderr.

    Raises:
        ReportInputError: the dataset is not registered or has no images.
        mask_former.checkpoint.CheckpointError: the checkpoint cannot be used (names the file).
        mask_former.data.io.UnreadableImageError, ValueError: a bad image or ground truth file.
    """
    predictor = Predictor(config_file, checkpoint, precision=None, batch_size=batch_size)
    if dataset is None:
        if not len(predictor.cfg.DATASETS.TEST):
            raise ReportInputError(f"{config_file} names no DATASETS.TEST: choose one (--dataset)")
        dataset = predictor.cfg.DATASETS.TEST[0]
    records, total = _dataset_records(dataset, max_images)
    # The evaluated dataset's own labels (it may not be the test set that names the classes).
    metadata = MetadataCatalog.get(dataset)
    counts = _Accumulator(len(predictor.class_names), int(metadata.get("ignore_label", 255)))
    samples = _predict_all(predictor, records, counts, num_samples, progress)
    return ValidationResults(
        dataset=dataset,
        class_names=predictor.class_names,
        thing_ids=_thing_ids(metadata) or _thing_ids(predictor.metadata),
        num_images=len(records),
        total_images=total,
        confusion=counts.confusion if counts.semantic_images else None,
        panoptic=counts.panoptic if counts.panoptic_images else None,
        samples=samples,
    )


def _predict_all(
    predictor: Predictor,
    records: List[Dict],
    counts: _Accumulator,
    num_samples: int,
    progress: bool,
) -> List[Sample]:
    """Predict every record (``predictor.batch_size`` per call) into ``counts``; draw the first."""
    import tqdm

    samples: List[Sample] = []
    step = predictor.batch_size
    with tqdm.tqdm(total=len(records), desc="report", unit="img", disable=not progress) as bar:
        for start in range(0, len(records), step):
            chunk = records[start : start + step]
            predictions = predictor.predict([r["file_name"] for r in chunk])
            for record, prediction in zip(chunk, predictions):
                truth = _read_ground_truth(record)
                counts.add(prediction, truth)
                if len(samples) < num_samples:
                    rgb = io.read_image(record["file_name"], "RGB")
                    drawn = _draw_sample(rgb, prediction, truth, predictor.metadata)
                    if drawn is not None:
                        samples.append(Sample(record["file_name"], rgb, *drawn))
            bar.update(len(chunk))
    return samples
