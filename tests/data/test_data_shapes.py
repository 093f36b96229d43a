# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""The built-in synthetic "shapes" dataset: determinism, format agreement, difficulty,
registration, atomic caching and evaluator compatibility."""

import filecmp
import json
import os

import cv2
import numpy as np
import pytest
import torch
from data_testutils import unique_prefix
from detectron2.data import DatasetCatalog, MetadataCatalog

from mask_former.data import shapes_generator
from mask_former.data.datasets import register_shapes

TRAIN_SEED, _ = shapes_generator.SHAPES_SPLITS["train"]
VAL_SEED, _ = shapes_generator.SHAPES_SPLITS["val"]


def read_split(base, split):
    """Images (BGR), semantic labels and panoptic ids of a generated split, by plain decoding."""
    with open(os.path.join(base, f"panoptic_{split}.json")) as f:
        data = json.load(f)
    samples = []
    for ann in data["annotations"]:
        stem = os.path.splitext(ann["file_name"])[0]
        image = cv2.imread(os.path.join(base, "images", split, stem + ".jpg"))
        labels = cv2.imread(
            os.path.join(base, "sem_seg", split, stem + ".png"), cv2.IMREAD_UNCHANGED
        )
        rgb = cv2.imread(os.path.join(base, "panoptic", split, stem + ".png"))[..., ::-1]
        rgb = rgb.astype(np.int64)  # uint8 * 256 overflows under NumPy 2's promotion rules
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        samples.append((image, labels, ids, ann["segments_info"]))
    return data, samples


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    """40 train and 16 val images: the first images of the real splits (same seeds)."""
    base = str(tmp_path_factory.mktemp("shapes"))
    shapes_generator.generate_split(base, "train", TRAIN_SEED, 40)
    shapes_generator.generate_split(base, "val", VAL_SEED, 16)
    return base


def test_same_seed_same_bytes_and_prefix_property(tmp_path, small_shapes):
    shapes_generator.generate_split(str(tmp_path), "train", TRAIN_SEED, 6)
    for sub, ext in [("images", ".jpg"), ("sem_seg", ".png"), ("panoptic", ".png")]:
        for i in range(6):
            a = os.path.join(tmp_path, sub, "train", f"{i:06d}{ext}")
            b = os.path.join(small_shapes, sub, "train", f"{i:06d}{ext}")
            assert filecmp.cmp(a, b, shallow=False), (sub, i)
    shapes_generator.generate_split(str(tmp_path / "other"), "train", TRAIN_SEED + 1, 2)
    assert not filecmp.cmp(
        os.path.join(tmp_path, "images", "train", "000000.jpg"),
        os.path.join(tmp_path, "other", "images", "train", "000000.jpg"),
        shallow=False,
    )


def test_semantic_and_panoptic_formats_agree(small_shapes):
    data, samples = read_split(small_shapes, "train")
    category_index = {c["id"]: i for i, c in enumerate(data["categories"])}
    assert [c["isthing"] for c in data["categories"]] == [1, 1, 1, 0, 0, 0]
    for image, labels, ids, segments in samples:
        expected = np.full(labels.shape, -1)
        for seg in segments:
            mask = ids == seg["id"]
            assert mask.sum() == seg["area"] > 0
            expected[mask] = category_index[seg["category_id"]]
        assert (expected >= 0).all()  # every pixel belongs to a listed segment
        assert np.array_equal(expected, labels)
        # Stuff: one segment per class present.
        stuff = [s["category_id"] for s in segments if category_index[s["category_id"]] >= 3]
        assert len(stuff) == len(set(stuff))


def test_dataset_properties(small_shapes):
    data, samples = read_split(small_shapes, "train")
    touching_same_class = 0
    things_per_image = []
    for image, labels, ids, segments in samples:
        h, w = labels.shape
        assert 128 <= h <= 256 and 128 <= w <= 256 and image.shape == (h, w, 3)
        things = [s for s in segments if s["category_id"] <= 3]
        things_per_image.append(len(things))
        for i, a in enumerate(things):
            grown = cv2.dilate((ids == a["id"]).astype(np.uint8), np.ones((3, 3), np.uint8))
            for b in things[i + 1 :]:
                if b["category_id"] == a["category_id"] and (grown & (ids == b["id"])).any():
                    touching_same_class += 1
    assert min(things_per_image) >= 2 and np.mean(things_per_image) >= 3
    assert touching_same_class >= 5  # same-class instances that touch or overlap
    all_labels = np.concatenate([s[1].ravel() for s in samples])
    assert set(np.unique(all_labels)) == set(range(6))


def test_squares_are_axis_aligned_and_triangles_point_up():
    h, w, size = 120, 120, 20.0
    square = shapes_generator._shape_mask("square", (60, 60), size, h, w)
    ys, xs = np.nonzero(square)
    # An axis-aligned square fills its bounding box.
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert square.sum() == box
    triangle = shapes_generator._shape_mask("triangle", (60, 60), size, h, w)
    widths = triangle.sum(axis=1)
    rows = np.nonzero(widths)[0]
    # Apex up: the rows widen downwards, the base is the last row.
    assert widths[rows[0]] <= 3 and widths[rows[-1]] == widths.max()
    assert np.all(np.diff(widths[rows]) >= 0)
    # About the same area for the three shapes at a given size.
    areas = [
        shapes_generator._shape_mask(k, (60, 60), size, h, w).sum()
        for k in ("circle", "square", "triangle")
    ]
    assert max(areas) < 1.25 * min(areas), areas


def colour_keys(images, levels):
    q = 256 // levels
    pix = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.int64) // q
    return pix[:, 0] * levels * levels + pix[:, 1] * levels + pix[:, 2]


@pytest.mark.parametrize("levels", [8, 16, 32])
def test_not_a_colour_lookup(small_shapes, levels):
    # The best per-pixel colour -> class table fitted on the train labels must score below
    # 50% pixel accuracy on val: the classes are defined by texture and shape, not colour.
    _, train = read_split(small_shapes, "train")
    _, val = read_split(small_shapes, "val")
    keys = colour_keys([s[0] for s in train], levels)
    labels = np.concatenate([s[1].ravel() for s in train]).astype(np.int64)
    table = np.zeros((levels**3, 6), dtype=np.int64)
    np.add.at(table, (keys, labels), 1)
    best = table.argmax(axis=1)
    best[table.sum(axis=1) == 0] = np.bincount(labels).argmax()
    train_acc = (best[keys] == labels).mean()
    val_keys = colour_keys([s[0] for s in val], levels)
    val_labels = np.concatenate([s[1].ravel() for s in val])
    val_acc = (best[val_keys] == val_labels).mean()
    assert val_acc < 0.5, val_acc
    assert train_acc > val_acc  # the table did fit the train set


@pytest.fixture
def tiny_splits(monkeypatch):
    monkeypatch.setattr(
        shapes_generator, "SHAPES_SPLITS", {"train": (TRAIN_SEED, 4), "val": (VAL_SEED, 3)}
    )


def test_registration_generates_once_and_metadata(tmp_path, tiny_splits):
    prefix = unique_prefix()
    names = register_shapes(str(tmp_path), prefix)
    assert sorted(names) == sorted(
        prefix + f"shapes_{kind}_{split}"
        for kind in ("sem_seg", "panoptic")
        for split in ("train", "val")
    )
    assert not os.path.exists(tmp_path / "shapes")  # nothing happens until first use
    sem = DatasetCatalog.get(prefix + "shapes_sem_seg_train")
    assert len(sem) == 4 and os.path.isfile(tmp_path / "shapes" / "COMPLETE")
    stamp = os.path.getmtime(tmp_path / "shapes" / "COMPLETE")
    pan = DatasetCatalog.get(prefix + "shapes_panoptic_val")
    assert len(pan) == 3 and os.path.getmtime(tmp_path / "shapes" / "COMPLETE") == stamp
    rec = pan[0]
    assert {
        "file_name",
        "pan_seg_file_name",
        "sem_seg_file_name",
        "segments_info",
        "image_id",
        "height",
        "width",
    } <= set(rec)
    assert all(0 <= s["category_id"] < 6 for s in rec["segments_info"])
    assert all(s["isthing"] == (s["category_id"] < 3) for s in rec["segments_info"])

    meta = MetadataCatalog.get(prefix + "shapes_panoptic_val")
    assert meta.evaluator_type == "coco_panoptic_seg"
    assert MetadataCatalog.get(prefix + "shapes_sem_seg_val").evaluator_type == "sem_seg"
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
    assert meta.stuff_dataset_id_to_contiguous_id == {i + 1: i for i in range(6)}
    assert meta.stuff_classes == ["circle", "square", "triangle", "gradient", "stripes", "blotches"]
    assert meta.ignore_label == 255 and os.path.isdir(meta.sem_seg_root)
    assert os.path.isfile(meta.panoptic_json) and os.path.isdir(meta.panoptic_root)
    # Registering again is a no-op.
    assert register_shapes(str(tmp_path), prefix) == []


def test_interrupted_generation_leaves_nothing(tmp_path, tiny_splits, monkeypatch):
    real = shapes_generator.generate_split

    def failing(out_dir, split, seed, num):
        real(out_dir, split, seed, num)
        if split == "val":
            raise KeyboardInterrupt

    monkeypatch.setattr(shapes_generator, "generate_split", failing)
    with pytest.raises(KeyboardInterrupt):
        shapes_generator.ensure_shapes_dataset(str(tmp_path))
    assert os.listdir(tmp_path) == []  # neither "shapes" nor the temporary folder
    monkeypatch.setattr(shapes_generator, "generate_split", real)
    assert os.path.isfile(
        os.path.join(shapes_generator.ensure_shapes_dataset(str(tmp_path)), "COMPLETE")
    )


def test_incomplete_folder_is_reported(tmp_path):
    os.makedirs(tmp_path / "shapes")
    with pytest.raises(RuntimeError, match="COMPLETE"):
        shapes_generator.ensure_shapes_dataset(str(tmp_path))


def test_evaluators_score_ground_truth_perfectly(tmp_path, tiny_splits):
    # The metadata must carry everything COCOPanopticEvaluator and SemSegEvaluator need, on the
    # same val set: the ground truth itself, fed back as predictions, scores 100 PQ and mIoU.
    from detectron2.evaluation import COCOPanopticEvaluator, SemSegEvaluator

    from mask_former.data.io import rgb_to_ids
    from mask_former.data.mappers.reading import read_panoptic_rgb

    prefix = unique_prefix()
    register_shapes(str(tmp_path), prefix)
    name = prefix + "shapes_panoptic_val"
    records = DatasetCatalog.get(name)
    pan_eval = COCOPanopticEvaluator(name, str(tmp_path / "pan_out"))
    sem_eval = SemSegEvaluator(name, distributed=False, output_dir=None)
    pan_eval.reset()
    sem_eval.reset()
    for rec in records:
        ids = rgb_to_ids(read_panoptic_rgb(rec, (rec["height"], rec["width"])))
        labels = cv2.imread(rec["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
        scores = torch.nn.functional.one_hot(torch.as_tensor(labels.astype(np.int64)), 6)
        segments = [
            {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
            for s in rec["segments_info"]
        ]
        outputs = [
            {
                "panoptic_seg": (torch.as_tensor(ids.astype(np.int32)), segments),
                "sem_seg": scores.permute(2, 0, 1).float(),
            }
        ]
        pan_eval.process([rec], outputs)
        sem_eval.process([rec], outputs)
    pq = pan_eval.evaluate()["panoptic_seg"]
    assert pq["PQ"] == pytest.approx(100.0)
    assert sem_eval.evaluate()["sem_seg"]["mIoU"] == pytest.approx(100.0)


def test_dataset_of_another_generator_version_is_replaced(tmp_path, tiny_splits):
    base = shapes_generator.ensure_shapes_dataset(str(tmp_path))
    complete = os.path.join(base, "COMPLETE")
    with open(complete) as f:
        stamp = json.load(f)
    with open(complete, "w") as f:
        json.dump({**stamp, "version": -1}, f)
    os.remove(os.path.join(base, "images", "val", "000000.jpg"))
    shapes_generator.ensure_shapes_dataset(str(tmp_path))
    with open(complete) as f:
        assert json.load(f) == stamp
    assert os.path.isfile(os.path.join(base, "images", "val", "000000.jpg"))
    assert os.listdir(tmp_path) == ["shapes"]  # no temporary folder left behind


def test_command_line_generates_ahead_of_time(tmp_path, tiny_splits, monkeypatch, capsys):
    from mask_former.data.__main__ import main

    monkeypatch.setattr("sys.argv", ["python -m mask_former.data", "--root", str(tmp_path)])
    main()
    assert capsys.readouterr().out.strip() == str(tmp_path / "shapes")
    assert len(os.listdir(tmp_path / "shapes" / "images" / "val")) == 3
