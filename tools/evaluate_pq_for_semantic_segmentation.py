#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Panoptic quality (PQ) of semantic-segmentation predictions, as reported in the MaskFormer
paper for semantic datasets.

Usage:
    python train_net.py --eval-only --config-file configs/ade20k-150/... MODEL.WEIGHTS ...
    python tools/evaluate_pq_for_semantic_segmentation.py --dataset-name ade20k_sem_seg_val \
        --json-file output/inference/sem_seg_predictions.json

The json file is the one Detectron2's SemSegEvaluator writes (one run-length-encoded mask per
image and predicted category, with dataset category ids). Every class region of an image, in
the prediction and in the ground truth, is taken as one segment; segments of the same class
match when their IoU is above 0.5. As in COCO panoptic evaluation, pixels of the ignore label
are void: they are left out of the IoU, and an unmatched predicted segment that is more than
half void is not a false positive. All categories are stuff, so the "All" and "Stuff" rows
agree. The tool also prints the mIoU of the same predictions. A progress bar on stderr counts
the images (``--no-progress``: none).
"""

import argparse
import json
import logging
import sys
from collections import defaultdict
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager
from panopticapi.evaluation import PQStat
from PIL import Image
from tabulate import tabulate

import mask_former  # noqa: F401  (registers this project's datasets)
from mask_former.utils import atomic_write

logger = logging.getLogger("mask_former.evaluate_pq_for_semantic_segmentation")

# Label of pixels without any prediction in a rebuilt prediction map.
NO_PREDICTION = -1
# A class region is a true positive when its IoU with the ground truth region exceeds this.
MATCH_IOU = 0.5


def load_predictions(json_file: str) -> Dict[str, List[dict]]:
    """Read SemSegEvaluator's predictions; return them grouped by image file name."""
    try:
        with PathManager.open(json_file, "r") as f:
            entries = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"Cannot read predictions from {json_file}: {e}") from e
    by_file: Dict[str, List[dict]] = defaultdict(list)
    for i, entry in enumerate(entries if isinstance(entries, list) else [None]):
        if not isinstance(entry, dict) or not {"file_name", "category_id", "segmentation"} <= set(
            entry
        ):
            raise ValueError(
                f"{json_file}: entry {i} is not a SemSegEvaluator prediction (a dict with "
                "'file_name', 'category_id' and 'segmentation')"
            )
        by_file[entry["file_name"]].append(entry)
    return by_file


def rebuild_label_map(
    entries: Sequence[dict], shape: Sequence[int], dataset_id_to_contiguous: Mapping[int, int]
) -> np.ndarray:
    """
    Paint the RLE masks of one image into a label map of contiguous ids (NO_PREDICTION where
    no mask covers a pixel).

    Args:
        entries: the image's predictions, each with "category_id" and "segmentation" (RLE).
        shape: (H, W) of the image.
        dataset_id_to_contiguous: dataset category id -> contiguous id (identity if empty).
    """
    label_map = np.full(shape, NO_PREDICTION, dtype=np.int64)
    for entry in entries:
        category_id = entry["category_id"]
        label = dataset_id_to_contiguous.get(category_id, category_id)
        rle = dict(entry["segmentation"])
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("utf-8")
        mask = mask_util.decode(rle).astype(bool)
        if mask.shape != tuple(shape):
            raise ValueError(
                f"Prediction mask of {entry['file_name']} has size {mask.shape}, but its ground "
                f"truth has size {tuple(shape)}"
            )
        label_map[mask] = label
    return label_map


def accumulate_pq(pred: np.ndarray, gt: np.ndarray, ignore_label: int, pq_stat: PQStat) -> None:
    """
    Add one image to ``pq_stat``, with each class region taken as one segment.

    Args:
        pred: (H, W) predicted contiguous ids (NO_PREDICTION: none).
        gt: (H, W) ground-truth contiguous ids, ``ignore_label`` for void pixels.
    """
    void = gt == ignore_label
    gt_labels = set(np.unique(gt[~void]).tolist())
    pred_labels = set(np.unique(pred).tolist()) - {NO_PREDICTION}
    for label in gt_labels | pred_labels:
        pred_mask, gt_mask = pred == label, gt == label
        pred_area, gt_area = int(pred_mask.sum()), int(gt_mask.sum())
        pred_void = int((pred_mask & void).sum())
        matched = False
        if label in gt_labels and label in pred_labels:
            intersection = int((pred_mask & gt_mask).sum())
            iou = intersection / (pred_area + gt_area - intersection - pred_void)
            if iou > MATCH_IOU:
                matched = True
                pq_stat[label].tp += 1
                pq_stat[label].iou += iou
        if matched:
            continue
        if label in gt_labels:
            pq_stat[label].fn += 1
        if label in pred_labels and pred_void / pred_area <= 0.5:
            pq_stat[label].fp += 1


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_label: int):
    """(K, K) pixel counts [gt, pred] over non-void pixels that have a prediction."""
    valid = (gt != ignore_label) & (pred != NO_PREDICTION)
    index = gt[valid] * num_classes + pred[valid]
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def mean_iou(conf: np.ndarray) -> float:
    """mIoU in percent over classes that occur in the ground truth or the prediction."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    return float(100 * (tp[present] / union[present]).mean()) if present.any() else 0.0


def _read_gt(path: str) -> np.ndarray:
    try:
        with PathManager.open(path, "rb") as f:
            return np.asarray(Image.open(f), dtype=np.int64)
    except OSError as e:
        raise ValueError(f"Cannot read the ground-truth segmentation {path}: {e}") from e


def evaluate(
    dataset_name: str,
    json_file: str,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
) -> Dict[str, Dict[str, float]]:
    """
    Compute PQ/SQ/RQ (All, Stuff) and mIoU of the predictions in ``json_file`` against the
    registered dataset ``dataset_name``. ``progress`` wraps the iteration over the predicted
    images (e.g. a tqdm bar), or None.
    """
    metadata = MetadataCatalog.get(dataset_name)
    num_classes = len(metadata.stuff_classes)
    ignore_label = metadata.ignore_label
    dataset_to_contiguous = dict(metadata.get("stuff_dataset_id_to_contiguous_id", {}))
    gt_files = {r["file_name"]: r["sem_seg_file_name"] for r in DatasetCatalog.get(dataset_name)}
    predictions = load_predictions(json_file)
    unknown = sorted(set(predictions) - set(gt_files))
    if unknown:
        raise ValueError(f"{json_file} has predictions for images not in {dataset_name}: {unknown}")
    if len(predictions) < len(gt_files):
        logger.warning(
            "%d of %d images of %s have no prediction; they are not evaluated.",
            len(gt_files) - len(predictions), len(gt_files), dataset_name,
        )  # fmt: skip

    pq_stat = PQStat()
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    items = list(predictions.items())
    for file_name, entries in progress(items) if progress else items:
        gt = _read_gt(gt_files[file_name])
        pred = rebuild_label_map(entries, gt.shape, dataset_to_contiguous)
        accumulate_pq(pred, gt, ignore_label, pq_stat)
        conf += confusion_matrix(pred, gt, num_classes, ignore_label)

    categories = {i: {"isthing": 0} for i in range(num_classes)}
    results = {}
    for name, isthing in (("All", None), ("Stuff", False)):
        summary, _ = pq_stat.pq_average(categories, isthing=isthing)
        results[name] = {k: (100 * v if k != "n" else v) for k, v in summary.items()}
    results["mIoU"] = {"mIoU": mean_iou(conf)}
    return results


def format_results(results: Mapping[str, Mapping[str, float]]) -> str:
    rows = [
        [name, results[name]["pq"], results[name]["sq"], results[name]["rq"], results[name]["n"]]
        for name in ("All", "Stuff")
    ]
    table = tabulate(
        rows, headers=["", "PQ", "SQ", "RQ", "#categories"], tablefmt="pipe", floatfmt=".3f"
    )
    return f"{table}\nmIoU: {results['mIoU']['mIoU']:.3f}"


def _bar(items: Sequence) -> Iterable:
    import tqdm

    return tqdm.tqdm(items, desc="PQ of semantic predictions", unit="image", file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset-name",
        required=True,
        help="a registered semantic-segmentation dataset, e.g. ade20k_sem_seg_val, "
        "coco_2017_test_stuff_10k_sem_seg, ade20k_full_sem_seg_val",
    )
    parser.add_argument(
        "--json-file", required=True, help="sem_seg_predictions.json written by SemSegEvaluator"
    )
    parser.add_argument("--output", help="also write the results to this json file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)
    if args.dataset_name not in DatasetCatalog.list():
        parser.error(f"--dataset-name {args.dataset_name!r} is not a registered dataset")

    results = evaluate(args.dataset_name, args.json_file, None if args.no_progress else _bar)
    if args.output:
        with atomic_write(args.output, "w") as f:
            json.dump(results, f, indent=2)
    print(format_results(results))
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1:])
