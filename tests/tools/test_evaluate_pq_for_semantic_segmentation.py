# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""tools/evaluate_pq_for_semantic_segmentation.py on a 3-image dataset worked out by hand."""

import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

IGNORE = 255
# Contiguous id -> dataset id, so the tool must map the json's ids back.
DATASET_IDS = [10, 20, 30, 40]


def _rows(label_rows):
    """Build a 10x10 map from (first_row, last_row, label) bands."""
    out = np.zeros((10, 10), dtype=np.uint8)
    for first, last, label in label_rows:
        out[first : last + 1] = label
    return out


def _images():
    """(gt, pred) per image; the hand computation is in test_pq_and_miou_match_hand_values."""
    gt1 = np.zeros((10, 10), dtype=np.uint8)
    gt1[:, 5:] = 1
    pred1 = np.zeros((10, 10), dtype=np.uint8)
    pred1[:, 6:] = 1
    gt2 = _rows([(0, 1, IGNORE), (2, 9, 2)])
    pred2 = _rows([(0, 0, 1), (1, 3, 0), (4, 9, 2)])
    gt3 = _rows([(0, 1, 1), (2, 9, 2)])
    pred3 = _rows([(0, 9, 2)])
    return [(gt1, pred1), (gt2, pred2), (gt3, pred3)]


def _predictions_json(preds, names):
    """Encode predictions the way Detectron2's SemSegEvaluator writes them."""
    entries = []
    for pred, name in zip(preds, names):
        for label in np.unique(pred):
            rle = mask_util.encode(np.asfortranarray((pred == label).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("utf-8")
            entries.append(
                {"file_name": name, "category_id": DATASET_IDS[label], "segmentation": rle}
            )
    return entries


@pytest.fixture
def dataset(tmp_path):
    name = "_test_pq_tool_dataset"
    records, preds = [], []
    for i, (gt, pred) in enumerate(_images()):
        Image.fromarray(gt).save(tmp_path / f"gt{i}.png")
        records.append(
            {"file_name": f"img{i}.jpg", "sem_seg_file_name": str(tmp_path / f"gt{i}.png")}
        )
        preds.append(pred)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        stuff_classes=["a", "b", "c", "never-seen"],
        ignore_label=IGNORE,
        stuff_dataset_id_to_contiguous_id={d: i for i, d in enumerate(DATASET_IDS)},
    )
    json_file = tmp_path / "sem_seg_predictions.json"
    json_file.write_text(json.dumps(_predictions_json(preds, [r["file_name"] for r in records])))
    yield name, json_file
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_pq_and_miou_match_hand_values(tool, dataset, tmp_path, capsys):
    # Image 1: class 0 IoU 50/60, class 1 IoU 40/50: two true positives.
    # Image 2 (rows 0-1 void): class 2 IoU 60/80 (TP); class 0 (rows 1-3) is unmatched and
    #   only 1/3 void: FP; class 1 (row 0) lies entirely in the void: not an FP.
    # Image 3: class 2 IoU 80/100 (TP); the ground-truth class 1 is missed: FN.
    # PQ_c = sum IoU / (TP + FP/2 + FN/2): class 0: (5/6)/1.5, class 1: 0.8/1.5,
    # class 2: 1.55/2; class 3 never occurs and is not averaged.
    pq = [(5 / 6) / 1.5, 0.8 / 1.5, 1.55 / 2]
    sq = [5 / 6, 0.8, 1.55 / 2]
    rq = [1 / 1.5, 1 / 1.5, 1.0]
    # mIoU over non-void pixels of all images: class 0 50/80, class 1 40/70, class 2 140/180.
    miou = 100 * np.mean([50 / 80, 40 / 70, 140 / 180])

    name, json_file = dataset
    evaluate_pq = tool("evaluate_pq_for_semantic_segmentation")
    out = tmp_path / "pq.json"
    results = evaluate_pq.main(
        ["--dataset-name", name, "--json-file", str(json_file), "--output", str(out)]
    )
    for row in ("All", "Stuff"):
        assert results[row]["n"] == 3
        assert results[row]["pq"] == pytest.approx(100 * np.mean(pq))
        assert results[row]["sq"] == pytest.approx(100 * np.mean(sq))
        assert results[row]["rq"] == pytest.approx(100 * np.mean(rq))
    assert results["mIoU"]["mIoU"] == pytest.approx(miou)
    assert json.loads(out.read_text()) == results
    printed = capsys.readouterr().out
    assert f"{100 * np.mean(pq):.3f}" in printed and f"mIoU: {miou:.3f}" in printed


def test_unknown_image_in_predictions_is_named(tool, dataset, tmp_path):
    name, json_file = dataset
    entries = json.loads(json_file.read_text())
    entries[0]["file_name"] = "stranger.jpg"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(entries))
    evaluate_pq = tool("evaluate_pq_for_semantic_segmentation")
    with pytest.raises(ValueError, match="stranger.jpg"):
        evaluate_pq.main(["--dataset-name", name, "--json-file", str(bad)])
    bad.write_text(json.dumps([{"file_name": "img0.jpg"}]))
    with pytest.raises(ValueError, match="entry 0 is not a SemSegEvaluator prediction"):
        evaluate_pq.main(["--dataset-name", name, "--json-file", str(bad)])


def test_reads_the_json_of_detectron2_sem_seg_evaluator(tool, dataset, tmp_path):
    """The json written by SemSegEvaluator itself; the mIoU of both must agree."""
    from detectron2.evaluation import SemSegEvaluator

    name, _ = dataset
    evaluator = SemSegEvaluator(name, distributed=False, output_dir=str(tmp_path / "inference"))
    evaluator.reset()
    for i, (_, pred) in enumerate(_images()):
        logits = torch.nn.functional.one_hot(torch.as_tensor(pred, dtype=torch.long), 4)
        evaluator.process([{"file_name": f"img{i}.jpg"}], [{"sem_seg": logits.permute(2, 0, 1)}])
    d2_results = evaluator.evaluate()["sem_seg"]
    json_file = tmp_path / "inference" / "sem_seg_predictions.json"

    results = tool("evaluate_pq_for_semantic_segmentation").main(
        ["--dataset-name", name, "--json-file", str(json_file)]
    )
    assert results["mIoU"]["mIoU"] == pytest.approx(d2_results["mIoU"])
    assert results["All"]["pq"] == pytest.approx(100 * np.mean([(5 / 6) / 1.5, 0.8 / 1.5, 0.775]))
