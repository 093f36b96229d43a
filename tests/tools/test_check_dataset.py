# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
tools/check_dataset.py (the dataset doctor, mask_former/data/doctor.py): a clean miniature
semantic and panoptic dataset passes with its class table; one with planted faults fails and
the report names each faulty file; an ADE20K root holding only the validation split passes
(the absent training split is a warning); exit statuses 0 / 1 / 2.
"""

import functools
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from detectron2.data.datasets import load_sem_seg
from PIL import Image

from mask_former.data.datasets import (
    load_panoptic_json,
    register_ade20k_150,
    register_dataset,
    register_sem_seg_splits,
)
from mask_former.data.datasets.shapes import shapes_metadata
from mask_former.data.shapes_generator import generate_split
from tests.paths import REPO_ROOT

NAMES = ["circle", "square", "triangle", "gradient", "stripes", "blotches"]


@pytest.fixture
def doctor(tool):
    module = tool("check_dataset")

    def run(capsys, *argv):
        status = module.main(["--no-progress", *argv])
        return status, capsys.readouterr()

    return run


def _miniature(root: Path, num_images: int = 8) -> Path:
    """A shapes-generated val split (images, sem_seg, panoptic, panoptic_val.json) at root."""
    generate_split(str(root), "val", seed=3, num_images=num_images)
    return root


def _register_semantic(root: Path, **meta) -> str:
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    splits = {
        prefix + f"mini_sem_seg_{split}": (
            str(root / "images" / split),
            str(root / "sem_seg" / split),
        )
        for split in ("train", "val")
    }
    register_sem_seg_splits(
        splits, {"stuff_classes": NAMES, "ignore_label": 255, **meta}, gt_ext="png"
    )
    return prefix + "mini_sem_seg_val"


def _register_panoptic(root: Path, **meta_overrides) -> str:
    name = f"t{uuid.uuid4().hex[:8]}_mini_panoptic_val"
    meta = {**shapes_metadata(), **meta_overrides}
    files = {
        "image_root": str(root / "images" / "val"),
        "panoptic_root": str(root / "panoptic" / "val"),
        "panoptic_json": str(root / "panoptic_val.json"),
    }
    loader = functools.partial(
        load_panoptic_json,
        files["panoptic_json"],
        files["image_root"],
        files["panoptic_root"],
        None,
        meta["thing_dataset_id_to_contiguous_id"],
        meta["stuff_dataset_id_to_contiguous_id"],
    )
    register_dataset(name, loader, {**meta, **files, "evaluator_type": "coco_panoptic_seg"})
    return name


def test_clean_semantic_dataset_passes_with_its_class_table(tmp_path, doctor, capsys):
    name = _register_semantic(_miniature(tmp_path))
    status, out = doctor(capsys, "--dataset", name)
    assert status == 0, out.out
    assert "OK: 0 errors, 2 warnings" in out.out
    # Only warnings: the train split is not there, and there are no thing_classes.
    assert "[other split absent]" in out.out and "mini_sem_seg_train" in out.out
    assert "no 'thing_classes'" in out.out
    assert "Class frequency (8 images checked)" in out.out
    labels = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "sem_seg" / "val").iterdir())]
    circle_pixels = sum(int((lab == 0).sum()) for lab in labels)
    circle_images = sum(bool((lab == 0).any()) for lab in labels)
    row = next(line for line in out.out.splitlines() if " circle " in line).split()
    assert row[0] == "0" and int(row[2].replace(",", "")) == circle_pixels
    assert int(row[4]) == circle_images


def _write_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def test_semantic_faults_are_each_named(tmp_path, doctor, capsys):
    root = _miniature(tmp_path)
    labels, images = root / "sem_seg" / "val", root / "images" / "val"
    (labels / "000001.png").unlink()  # an image without its label map
    _write_png(labels / "orphan.png", np.zeros((8, 8), np.uint8))  # a label map without image
    data = (images / "000002.jpg").read_bytes()
    (images / "000002.jpg").write_bytes(data[: len(data) // 3])  # truncated image
    _write_png(labels / "000003.png", np.zeros((10, 12), np.uint8))  # wrong size
    bad = np.asarray(Image.open(labels / "000004.png")).copy()
    bad[0, :3] = [7, 9, 200]
    _write_png(labels / "000004.png", bad)  # labels neither classes nor ignore
    label = np.asarray(Image.open(labels / "000005.png"))
    _write_png(labels / "000005.png", np.repeat(label[:, :, None], 3, axis=2))  # colour labels
    (labels / "000006.png").write_bytes(b"")  # empty file
    status, out = doctor(capsys, "--dataset", _register_semantic(root))
    assert status == 1
    report = out.out
    assert f"[image without label] {images / '000001.jpg'} has no label map" in report
    # The counts agree (one label map missing, one extra): load_sem_seg warns of nothing.
    assert "load_sem_seg pairs the files by sorted order, this image with another" in report
    assert f"[label without image] {labels / 'orphan.png'}" in report
    assert f"Cannot read image {images / '000002.jpg'}: truncated or corrupt (" in report
    assert f"[size mismatch] {labels / '000003.png'} is 12x10 (WxH)" in report
    assert f"label map {labels / '000004.png'} has values outside the classes [0, 6)" in report
    assert "and not the ignore label 255: [7, 9, 200]" in report
    assert f"label map {labels / '000005.png'} has shape" in report
    assert (
        f"[unreadable file] Cannot read label map (sem_seg_file_name) {labels / '000006.png'}: "
        "empty file (0 bytes)\n" in report
    )
    # With one label map missing and one extra, the counts agree: load_sem_seg pairs by order.
    assert "load_sem_seg pairs 7 of 8 images with the label map of another name" in report
    assert "FAILED: 7 errors, 3 warnings" in report
    for clean in ("000000", "000007"):
        assert clean not in report


def test_missing_label_map_is_reported_as_load_sem_seg_handles_it(tmp_path, doctor, capsys):
    root = _miniature(tmp_path)
    labels, images = root / "sem_seg" / "val", root / "images" / "val"
    (labels / "000001.png").unlink()
    name = _register_semantic(root)
    status, out = doctor(capsys, "--dataset", name)
    assert status == 1
    line = next(x for x in out.out.splitlines() if "[image without label]" in x)
    assert f"{images / '000001.jpg'} has no label map in {labels}" in line
    assert "logs a warning that the folders 'has 8 and 7 files, respectively'" in line
    assert "uses only the images that have both" in line
    # What detectron2 really does: the warning the doctor quotes, and 7 records.
    with mock.patch("detectron2.data.datasets.coco.logger") as logger:
        records = load_sem_seg(str(labels), str(images), gt_ext="png", image_ext="jpg")
    warnings = " ".join(str(c.args[0]) for c in logger.warn.call_args_list)
    assert "has 8 and 7 files, respectively" in warnings
    assert sorted(Path(r["file_name"]).name for r in records) == [
        f"{i:06d}.jpg" for i in (0, 2, 3, 4, 5, 6, 7)
    ]


def test_panoptic_faults_are_each_named(tmp_path, doctor, capsys):
    root = _miniature(tmp_path, num_images=5)
    data = json.loads((root / "panoptic_val.json").read_text())
    annotations = data["annotations"]
    annotations[0]["segments_info"].append({"id": 999999, "category_id": 1, "area": 1})
    dropped = annotations[1]["segments_info"].pop()  # its pixels stay in the PNG
    annotations[2]["segments_info"][0]["area"] += 5
    (root / "panoptic_val.json").write_text(json.dumps(data))
    (root / "panoptic" / "val" / "000003.png").unlink()
    (root / "images" / "val" / "000004.jpg").unlink()
    shutil.copy(root / "images" / "val" / "000000.jpg", root / "images" / "val" / "extra.jpg")
    status, out = doctor(capsys, "--dataset", _register_panoptic(root))
    assert status == 1
    report, pan = out.out, root / "panoptic" / "val"
    assert f"{pan / '000000.png'}: JSON segments not in the PNG: ['999999 (circle)']" in report
    assert f"{pan / '000001.png'}: PNG ids the JSON does not list: [{dropped['id']}]" in report
    assert f"[panoptic area] {pan / '000002.png'}: JSON area differs" in report
    assert f"panoptic PNG (pan_seg_file_name) {pan / '000003.png'} does not exist" in report
    assert f"image {root / 'images' / 'val' / '000004.jpg'} does not exist" in report
    assert f"[unused file] {root / 'images' / 'val' / 'extra.jpg'}" in report
    assert "FAILED: 4 errors, 2 warnings" in report
    assert "segments" in report  # the class table counts panoptic segments


def test_incomplete_metadata_is_an_error(tmp_path, doctor, capsys):
    root = _miniature(tmp_path, num_images=2)
    semantic = _register_semantic(root, ignore_label=None)
    meta = shapes_metadata()
    stuff = {k: v for k, v in meta["stuff_dataset_id_to_contiguous_id"].items() if k != 5}
    panoptic = _register_panoptic(root, stuff_dataset_id_to_contiguous_id=stuff)
    status, out = doctor(capsys, "--dataset", semantic, panoptic)
    assert status == 1
    assert "[metadata] no 'ignore_label'" in out.out
    assert "contiguous ids 0..5 that no category has: [4]" in out.out
    assert "category 5 ('stripes') of" in out.out and "is in neither id map" in out.out
    assert "[loader failed] ValueError: Segment" in out.out  # the loader's own message
    assert "2 of 2 datasets have errors" in out.out


def test_config_file_checks_its_datasets_and_num_classes(tmp_path, doctor, capsys):
    name = _register_semantic(_miniature(tmp_path, num_images=2))
    config = tmp_path / "cfg.yaml"
    base = REPO_ROOT / "configs/shapes/maskformer_R18_bs8_1200.yaml"
    config.write_text(f"_BASE_: {base}\nDATASETS:\n  TRAIN: ['{name}']\n  TEST: ['{name}']\n")
    status, out = doctor(capsys, "--config-file", str(config))
    assert status == 0, out.out
    assert out.out.count(f"== {name} ") == 1
    status, out = doctor(
        capsys, "--config-file", str(config), "--opts", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"
    )
    assert status == 1
    assert "[config] MODEL.SEM_SEG_HEAD.NUM_CLASSES is 5 but dataset" in out.out


def test_help_says_what_the_tool_does(tool):
    text = tool("check_dataset").get_parser().format_help()
    description = text.split("\n\n")[1]
    assert description.startswith("Check registered datasets before training on them")
    assert "class-frequency" in description and "--register" in description


def test_unknown_dataset_is_a_usage_error(doctor, capsys):
    status, out = doctor(capsys, "--dataset", "ade20k_sem_seg_vall")
    assert status == 2
    assert "unknown dataset 'ade20k_sem_seg_vall'" in out.err
    assert "did you mean ade20k_sem_seg_val" in out.err


def _ade20k_validation_only(root: Path) -> Path:
    rng = np.random.default_rng(0)
    base = root / "ADEChallengeData2016"
    for stem in ("ADE_val_00000001", "ADE_val_00000002"):
        image_dir, label_dir = (
            base / "images/validation",
            base / "annotations_detectron2/validation",
        )
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
            image_dir / f"{stem}.jpg"
        )
        labels = rng.integers(0, 150, (20, 30), dtype=np.uint8)
        labels[:2] = 255
        _write_png(label_dir / f"{stem}.png", labels)
    return root


def test_ade20k_root_with_only_the_validation_split(tmp_path, doctor, capsys):
    root = _ade20k_validation_only(tmp_path)
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    register_ade20k_150(str(root), prefix)
    status, out = doctor(capsys, "--dataset", prefix + "ade20k_sem_seg_val")
    assert status == 0, out.out
    assert f"{prefix}ade20k_sem_seg_train: image_root" in out.out
    assert "(sem_seg; 2 records)" in out.out and "OK: 0 errors, 2 warnings" in out.out


def test_command_line_on_the_builtin_ade20k_name(tmp_path):
    # A fresh process reads $DETECTRON2_DATASETS when mask_former registers ade20k_sem_seg_val.
    root = _ade20k_validation_only(tmp_path)
    env = {**os.environ, "DETECTRON2_DATASETS": str(root)}
    command = [sys.executable, "tools/check_dataset.py", "--dataset", "ade20k_sem_seg_val"]
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ade20k_sem_seg_train: image_root" in result.stdout
    assert "wall" in result.stdout  # the class table has the ADE20K names


# The contact sheet's layout (mask_former/data/contact_sheet.py): a title line, then tiles of
# TILE x TILE pixels with a caption under each, GAP apart.
TILE, CAPTION, TITLE, GAP = 200, 86, 30, 4
PLACEHOLDER = (128, 128, 128)


def _tile(sheet: np.ndarray, index: int, columns: int) -> np.ndarray:
    x = GAP + (index % columns) * (TILE + GAP)
    y = TITLE + (index // columns) * (TILE + CAPTION + GAP)
    return sheet[y : y + TILE + CAPTION, x : x + TILE]


def test_contact_sheet_of_the_faulty_files(tmp_path, doctor, capsys):
    root = _miniature(tmp_path, num_images=4)
    images, labels = root / "images" / "val", root / "sem_seg" / "val"
    data = (images / "000001.jpg").read_bytes()
    (images / "000001.jpg").write_bytes(data[: len(data) // 3])  # cannot be decoded
    _write_png(labels / "000002.png", np.zeros((10, 12), np.uint8))  # wrong size, all class 0
    sheet_path = tmp_path / "sheets" / "faulty.png"
    status, out = doctor(
        capsys, "--dataset", _register_semantic(root), "--contact-sheet", str(sheet_path)
    )
    assert status == 1
    assert f"Contact sheet of 2 faulty files: {sheet_path}" in out.out
    sheet = np.asarray(Image.open(sheet_path).convert("RGB"))
    # Two tiles side by side (the clean files 000000 and 000003 have none).
    assert sheet.shape == (TITLE + TILE + CAPTION + GAP, GAP + 2 * (TILE + GAP), 3)
    undecodable, label_map = _tile(sheet, 0, 2), _tile(sheet, 1, 2)
    # The truncated image: a grey placeholder, crossed out in black.
    thumb = undecodable[:TILE].reshape(-1, 3)
    assert (thumb == PLACEHOLDER).all(axis=1).mean() > 0.9
    assert (thumb == 0).all(axis=1).sum() > TILE  # the cross
    # The 12 x 10 label map, enlarged to the tile's width: one colour (class 0), not grey.
    enlarged = label_map[: TILE * 10 // 12 - 2, 2 : TILE - 2].reshape(-1, 3)
    assert (enlarged == enlarged[0]).all() and tuple(enlarged[0]) != PLACEHOLDER
    # The reasons: white text in each caption.
    for tile in (undecodable, label_map):
        assert (tile[TILE:] > 200).all(axis=-1).sum() > 100


def test_contact_sheet_without_faulty_files_is_its_title(tmp_path, doctor, capsys):
    name = _register_semantic(_miniature(tmp_path, num_images=2))
    sheet_path = tmp_path / "faulty.png"
    sheet_path.write_bytes(b"an old sheet")
    status, out = doctor(capsys, "--dataset", name, "--contact-sheet", str(sheet_path))
    assert status == 0
    assert f"Contact sheet of 0 faulty files: {sheet_path}" in out.out
    sheet = np.asarray(Image.open(sheet_path).convert("RGB"))
    assert sheet.shape[0] == TITLE and (sheet > 230).all(axis=-1).sum() > 100  # the title
