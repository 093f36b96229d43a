# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
detectron2's SemSegEvaluator and COCOPanopticEvaluator run in this environment (they rely on the
compatibility bridge and panopticapi-lite) and give the mIoU / PQ computed by hand below.
"""

import json
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator, SemSegEvaluator
from PIL import Image

import mask_former  # noqa: F401  (installs the detectron2 compatibility bridge)


def _register(name, records, **metadata):
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(**metadata)
    return name


def _one_hot_logits(label_map: np.ndarray, num_classes: int) -> torch.Tensor:
    """(H, W) labels -> (K, H, W) scores whose argmax is the label."""
    return torch.nn.functional.one_hot(torch.as_tensor(label_map), num_classes).permute(2, 0, 1)


def test_sem_seg_evaluator_miou(tmp_path):
    ignore = 255
    gt0 = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, ignore], [2, 2, 2, ignore]], np.uint8)
    pred0 = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [2, 2, 0, 2], [2, 2, 2, 0]])
    gt1 = np.ones((4, 4), np.uint8)  # a second, perfectly predicted image of class 1
    pred1 = np.ones((4, 4), np.int64)
    records = []
    for i, gt in enumerate([gt0, gt1]):
        Image.fromarray(gt).save(tmp_path / f"gt{i}.png")
        records.append(
            {"file_name": f"img{i}.jpg", "sem_seg_file_name": str(tmp_path / f"gt{i}.png")}
        )
    name = _register(
        f"test_semseg_{uuid.uuid4().hex}",
        records,
        stuff_classes=["a", "b", "c"],
        ignore_label=ignore,
    )

    evaluator = SemSegEvaluator(name, distributed=True, output_dir=str(tmp_path / "out"))
    evaluator.reset()
    for i, pred in enumerate([pred0, pred1]):
        evaluator.process([{"file_name": f"img{i}.jpg"}], [{"sem_seg": _one_hot_logits(pred, 3)}])
    res = evaluator.evaluate()["sem_seg"]

    # By hand (ignored pixels count nowhere):
    # class a: TP 3, FP 1 (gt c at (2,2)), FN 1 ((0,1) predicted b)  -> IoU 3/5
    # class b: TP 4 + 16, FP 1 ((0,1)), FN 0                         -> IoU 20/21
    # class c: TP 5, FP 0, FN 1 ((2,2) predicted a)                  -> IoU 5/6
    ious = [3 / 5, 20 / 21, 5 / 6]
    assert res["mIoU"] == pytest.approx(100 * sum(ious) / 3)
    assert res["IoU-a"] == pytest.approx(60.0)
    assert res["pACC"] == pytest.approx(100 * (3 + 20 + 5) / (4 + 20 + 6))
    assert (tmp_path / "out" / "sem_seg_predictions.json").exists()


def _write_panoptic_gt(tmp_path):
    """One 10x10 image: two things of class 1 (ids 1, 2) in the corners, stuff class 2 (id 3)."""
    from panopticapi.utils import id2rgb

    gt = np.full((10, 10), 3, np.int32)
    gt[0:4, 0:4] = 1
    gt[6:10, 6:10] = 2
    (tmp_path / "gt").mkdir()
    Image.fromarray(id2rgb(gt)).save(tmp_path / "gt" / "img.png")
    segments = [
        {"id": 1, "category_id": 1, "iscrowd": 0, "area": 16, "bbox": [0, 0, 4, 4]},
        {"id": 2, "category_id": 1, "iscrowd": 0, "area": 16, "bbox": [6, 6, 4, 4]},
        {"id": 3, "category_id": 2, "iscrowd": 0, "area": 68, "bbox": [0, 0, 10, 10]},
    ]
    categories = [
        {"id": 1, "name": "thing", "isthing": 1, "color": [220, 20, 60]},
        {"id": 2, "name": "stuff", "isthing": 0, "color": [0, 80, 100]},
    ]
    gt_json = {
        "images": [{"id": 7, "file_name": "img.jpg", "width": 10, "height": 10}],
        "annotations": [{"image_id": 7, "file_name": "img.png", "segments_info": segments}],
        "categories": categories,
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))


def test_coco_panoptic_evaluator_pq(tmp_path):
    _write_panoptic_gt(tmp_path)
    name = _register(
        f"test_panoptic_{uuid.uuid4().hex}",
        [],
        panoptic_root=str(tmp_path / "gt"),
        panoptic_json=str(tmp_path / "gt.json"),
        thing_dataset_id_to_contiguous_id={1: 0},
        stuff_dataset_id_to_contiguous_id={2: 1},
    )
    # Prediction: thing 1 one column too wide (IoU 16/20), thing 2 only half found (IoU 8/16,
    # not a match), stuff everywhere else.
    pred = np.full((10, 10), 3, np.int32)
    pred[0:4, 0:5] = 1
    pred[6:10, 8:10] = 2
    segments_info = [
        {"id": 1, "category_id": 0, "isthing": True},
        {"id": 2, "category_id": 0, "isthing": True},
        {"id": 3, "category_id": 1, "isthing": False},
    ]
    evaluator = COCOPanopticEvaluator(name, output_dir=str(tmp_path / "out"))
    evaluator.reset()
    evaluator.process(
        [{"file_name": "somewhere/img.jpg", "image_id": 7}],
        [{"panoptic_seg": (torch.as_tensor(pred), segments_info)}],
    )
    res = evaluator.evaluate()["panoptic_seg"]

    # By hand. Thing class: TP 1 (IoU 0.8), FP 1, FN 1 -> PQ = 0.8 / (1 + 0.5 + 0.5) = 0.4.
    # Stuff class: gt 68 px, pred 72 px (gains the 8 px of thing 2 it covers, loses 4 px to the
    # wide thing 1), intersection 64 -> IoU 64 / 76, a TP: PQ = 64 / 76.
    pq_thing, pq_stuff = 0.4, 64 / 76
    assert res["PQ_th"] == pytest.approx(100 * pq_thing)
    assert res["PQ_st"] == pytest.approx(100 * pq_stuff)
    assert res["PQ"] == pytest.approx(100 * (pq_thing + pq_stuff) / 2)
    assert res["RQ_th"] == pytest.approx(50.0) and res["SQ_th"] == pytest.approx(80.0)
