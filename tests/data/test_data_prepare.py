# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The prepare scripts in ``datasets/``, each run on a miniature input in the original raw format
written by the test, then checked against hand-computed outputs and read back through the
registration and the train mapper.
"""

import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from data_formats import mini_cfg
from data_testutils import unique_prefix
from detectron2.data import DatasetCatalog
from PIL import Image
from scipy.io import savemat

from mask_former.data import build_train_mapper
from mask_former.data.datasets import (
    register_ade20k_150,
    register_ade20k_full,
    register_ade20k_panoptic,
    register_coco_stuff_10k,
)
from tests.paths import REPO_ROOT

SCRIPTS = REPO_ROOT / "datasets"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def rgb_image(h, w):
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (200, 30, 30)
    image[:, w // 2 :] = (30, 200, 30)
    return image


def map_one(dataset: str, mapper_name: str, k: int, ignore: int):
    """Run the train mapper on the first record of a registered dataset."""
    cfg = mini_cfg(dataset, mapper_name, k, ignore)
    record = DatasetCatalog.get(dataset)[0]
    h, w = np.asarray(Image.open(record["file_name"])).shape[:2]
    cfg.INPUT.MIN_SIZE_TRAIN = (min(h, w),)
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    return build_train_mapper(cfg)(record)


# --- ADE20K-150 semantic -----------------------------------------------------------------------


def write_ade_semantic(base: Path):
    # 0 = "other" -> ignore 255; k -> k - 1.
    labels = np.array([[0, 1, 150, 5], [3, 3, 8, 8]], dtype=np.uint8).repeat(4, 0).repeat(4, 1)
    for folder, stem in [("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")]:
        save(base / "images" / folder / f"{stem}.jpg", rgb_image(8, 16), quality=100)
        save(base / "annotations" / folder / f"{stem}.png", labels)
    return labels


def test_prepare_ade20k_sem_seg(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    labels = write_ade_semantic(base)
    load_script("prepare_ade20k_sem_seg").main(["--root", str(tmp_path)])
    expected = np.array([[255, 0, 149, 4], [2, 2, 7, 7]], np.uint8).repeat(4, 0).repeat(4, 1)
    for folder in ("training", "validation"):
        out = next((base / "annotations_detectron2" / folder).glob("*.png"))
        assert np.array_equal(np.asarray(Image.open(out)), expected)
    prefix = unique_prefix()
    register_ade20k_150(str(tmp_path), prefix)
    out = map_one(prefix + "ade20k_sem_seg_train", "mask_former_semantic", 150, 255)
    assert out["instances"].gt_classes.tolist() == [0, 2, 4, 7, 149]
    assert labels.shape == tuple(out["sem_seg"].shape)


def test_prepare_ade20k_sem_seg_rejects_bad_labels(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    write_ade_semantic(base)
    save(
        base / "annotations" / "training" / "ADE_train_00000001.png",
        np.full((8, 16), 151, np.uint8),
    )
    with pytest.raises(ValueError, match="ADE_train_00000001.png"):
        load_script("prepare_ade20k_sem_seg").main(["--root", str(tmp_path)])


# --- ADE20K-full -------------------------------------------------------------------------------


def seg_png(ade_ids: np.ndarray, r_extra: int = 0) -> np.ndarray:
    """Encode full-ADE class indices as a *_seg.png: R = (id // 256) * 10 (+ 0..9), G = id % 256."""
    seg = np.zeros(ade_ids.shape + (3,), np.uint8)
    seg[..., 0] = (ade_ids // 256) * 10 + r_extra
    seg[..., 1] = ade_ids % 256
    seg[..., 2] = 7  # instance bits, ignored
    return seg


def test_prepare_ade20k_full_sem_seg(tmp_path):
    release = tmp_path / "ADE20K_2021_17_01"
    train_dir = "ADE20K_2021_17_01/images/ADE/training/urban/street"
    val_dir = "ADE20K_2021_17_01/images/ADE/validation/home/kitchen"
    # Train: 600x800 (shorter side > 512: resized to 512x683); wall (2978 -> 0) on the left,
    # building (312 -> 1) on the right, with R carrying extra digits that // 10 drops.
    ids = np.full((600, 800), 312)
    ids[:, :400] = 2978
    save(tmp_path / train_dir / "ADE_train_00000001.jpg", rgb_image(600, 800))
    save(tmp_path / train_dir / "ADE_train_00000001_seg.png", seg_png(ids, r_extra=3))
    # Val: small, kept at its size; id 1 is not one of the 847 classes -> 65535.
    val_ids = np.array([[2978, 312], [1, 2978]]).repeat(10, 0).repeat(10, 1)
    save(tmp_path / val_dir / "ADE_val_00000001.jpg", rgb_image(20, 20))
    save(tmp_path / val_dir / "ADE_val_00000001_seg.png", seg_png(val_ids))
    with open(release / "index_ade20k.pkl", "wb") as f:
        pickle.dump(
            {
                "folder": [train_dir, val_dir],
                "filename": ["ADE_train_00000001.jpg", "ADE_val_00000001.jpg"],
                "objectnames": [],
            },
            f,
        )

    load_script("prepare_ade20k_full_sem_seg").main(["--root", str(tmp_path)])
    out = release / "annotations_detectron2"
    train = np.asarray(Image.open(out / "training" / "ADE_train_00000001.tif"))
    assert train.dtype == np.uint16 and train.shape == (512, 683)
    assert (train[:, :330] == 0).all() and (train[:, 355:] == 1).all()
    image = Image.open(release / "images_detectron2" / "training" / "ADE_train_00000001.jpg")
    assert image.size == (683, 512)
    val = np.asarray(Image.open(out / "validation" / "ADE_val_00000001.tif"))
    assert np.array_equal(val, np.array([[0, 1], [65535, 0]]).repeat(10, 0).repeat(10, 1))

    prefix = unique_prefix()
    register_ade20k_full(str(tmp_path), prefix)
    mapped = map_one(prefix + "ade20k_full_sem_seg_val", "mask_former_semantic", 847, 65535)
    assert mapped["instances"].gt_classes.tolist() == [0, 1]


# --- ADE20K panoptic ---------------------------------------------------------------------------


def test_prepare_ade20k_pan_seg(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    # Semantic (1-based): wall (1) left, sky (3) right, bed (8) in the middle, "other" (0) in
    # the top-left corner. Instance map: two beds (instance class 1 -> bed), touching, which
    # leave one bed-labelled column without an instance (-> VOID).
    semantic = np.ones((12, 16), np.uint8)
    semantic[:, 8:] = 3
    semantic[4:8, 4:13] = 8
    semantic[:2, :2] = 0
    instance = np.zeros((12, 16, 3), np.uint8)
    instance[4:8, 4:8] = (1, 1, 0)
    instance[4:8, 8:12] = (1, 2, 0)
    for folder, stem in [("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")]:
        save(base / "images" / folder / f"{stem}.jpg", rgb_image(12, 16), quality=100)
        save(base / "annotations" / folder / f"{stem}.png", semantic)
        save(base / "annotations_instance" / folder / f"{stem}.png", instance)

    load_script("prepare_ade20k_pan_seg").main(["--root", str(tmp_path)])
    load_script("prepare_ade20k_sem_seg").main(["--root", str(tmp_path)])
    with open(base / "ade20k_panoptic_val.json") as f:
        data = json.load(f)
    assert len(data["categories"]) == 150 and data["categories"][7]["isthing"] == 1
    assert data["images"][0]["id"] == 20210  # from ade20k_instance_imgCatIds.json
    ann = data["annotations"][0]
    pan = np.asarray(Image.open(base / "ade20k_panoptic_val" / ann["file_name"])).astype(int)
    ids = pan[..., 0] + 256 * pan[..., 1] + 65536 * pan[..., 2]
    by_category = {}
    for seg in ann["segments_info"]:
        by_category.setdefault(seg["category_id"], []).append(ids == seg["id"])
        assert seg["area"] == (ids == seg["id"]).sum()
    assert sorted((k, len(v)) for k, v in by_category.items()) == [(0, 1), (2, 1), (7, 2)]
    wall = np.zeros((12, 16), bool)
    wall[:, :8] = True
    wall[:2, :2] = False
    wall[4:8, 4:8] = False
    assert np.array_equal(by_category[0][0], wall)
    beds = sorted(by_category[7], key=lambda m: np.argmax(m.any(0)))
    assert beds[0].sum() == 16 and beds[0][4:8, 4:8].all()
    assert beds[1].sum() == 16 and beds[1][4:8, 8:12].all()
    void = ids == 0
    assert void[:2, :2].all() and void[4:8, 12].all() and void.sum() == 4 + 4

    prefix = unique_prefix()
    register_ade20k_panoptic(str(tmp_path), prefix)
    out = map_one(prefix + "ade20k_panoptic_train", "mask_former_panoptic", 150, 255)
    assert sorted(out["instances"].gt_classes.tolist()) == [0, 2, 7, 7]
    assert set(out["sem_seg"].unique().tolist()) == {0, 2, 7, 255}


# --- COCO-Stuff-10k ----------------------------------------------------------------------------


def write_coco_stuff(base: Path, s: np.ndarray):
    for split in ("train", "test"):
        name = f"COCO_{split}2014_000000000077"
        (base / "imageLists").mkdir(parents=True, exist_ok=True)
        (base / "imageLists" / f"{split}.txt").write_text(name + "\n")
        save(base / "images" / f"{name}.jpg", rgb_image(*s.shape), quality=100)
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        savemat(base / "annotations" / f"{name}.mat", {"S": s, "names": ["x"]})


def test_prepare_coco_stuff_10k(tmp_path):
    base = tmp_path / "coco" / "coco_stuff_10k"
    # S: 1 = unlabeled, 2..172 = classes 0..170.
    s = np.array([[1, 2], [172, 100]], np.uint16).repeat(5, 0).repeat(6, 1)
    write_coco_stuff(base, s)
    load_script("prepare_coco_stuff_10k_v1.0_sem_seg").main(["--root", str(tmp_path)])
    for split in ("train", "test"):
        labels = np.asarray(
            Image.open(
                base / "annotations_detectron2" / split / f"COCO_{split}2014_000000000077.png"
            )
        )
        expected = np.array([[255, 0], [170, 98]]).repeat(5, 0).repeat(6, 1)
        assert labels.dtype == np.uint8 and np.array_equal(labels, expected)
        assert (base / "images_detectron2" / split / f"COCO_{split}2014_000000000077.jpg").is_file()
    prefix = unique_prefix()
    register_coco_stuff_10k(str(tmp_path), prefix)
    out = map_one(prefix + "coco_2017_train_stuff_10k_sem_seg", "mask_former_semantic", 171, 255)
    assert out["instances"].gt_classes.tolist() == [0, 98, 170]


def test_prepare_coco_stuff_10k_rejects_bad_labels(tmp_path):
    base = tmp_path / "coco" / "coco_stuff_10k"
    write_coco_stuff(base, np.full((4, 4), 173, np.uint16))
    with pytest.raises(ValueError, match=r"COCO_train2014_000000000077\.mat"):
        load_script("prepare_coco_stuff_10k_v1.0_sem_seg").main(["--root", str(tmp_path)])
