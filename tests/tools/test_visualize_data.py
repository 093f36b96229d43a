# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
tools/visualize_data.py (mask_former/data/pictures.py) on a miniature shapes dataset: one
picture per record, the ground truth drawn in the metadata's colours over the image (as
stored, and after the train mapper: the crop's size and the mapper's targets), bad records
skipped with the reader's message, unknown names and missing configs refused.
"""

import functools
import random
import uuid
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from PIL import Image

from mask_former import load_config
from mask_former.data import build_train_mapper
from mask_former.data.datasets import load_panoptic_json, register_dataset, register_sem_seg_splits
from mask_former.data.datasets.shapes import shapes_metadata
from mask_former.data.io import rgb_to_ids
from mask_former.data.shapes_generator import generate_split
from tests.paths import REPO_ROOT

SEMANTIC_CONFIG = str(REPO_ROOT / "configs/shapes/maskformer_R18_bs8_1200.yaml")
PANOPTIC_CONFIG = str(REPO_ROOT / "configs/shapes/maskformer_panoptic_R18_bs8_1200.yaml")
META = shapes_metadata()
STUFF_COLORS = np.array(META["stuff_colors"], dtype=np.float64)  # (K, 3) RGB
THINGS = set(META["thing_dataset_id_to_contiguous_id"].values())


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """A 3-image shapes split registered twice: semantic and panoptic (names returned)."""
    root = tmp_path_factory.mktemp("mini")
    generate_split(str(root), "val", seed=5, num_images=3)
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    images, labels = str(root / "images/val"), str(root / "sem_seg/val")
    register_sem_seg_splits(
        {prefix + "vis_sem_seg_val": (images, labels)},
        {**META, "ignore_label": 255},
        gt_ext="png",
    )
    files = {
        "image_root": images,
        "panoptic_root": str(root / "panoptic/val"),
        "panoptic_json": str(root / "panoptic_val.json"),
    }
    loader = functools.partial(
        load_panoptic_json,
        files["panoptic_json"],
        images,
        files["panoptic_root"],
        None,
        META["thing_dataset_id_to_contiguous_id"],
        META["stuff_dataset_id_to_contiguous_id"],
    )
    register_dataset(prefix + "vis_panoptic_val", loader, {**META, **files})
    return root, prefix + "vis_sem_seg_val", prefix + "vis_panoptic_val"


@pytest.fixture
def visualize(tool):
    module = tool("visualize_data")

    def run(capsys, *argv):
        status = module.main(["--no-progress", *argv])
        return status, capsys.readouterr()

    return run


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


# Regions at least this large are checked for their colour: a class name's box covers much
# of a smaller one.
LARGE = 2000


def _assert_overlay(drawing: np.ndarray, raw: np.ndarray, mask: np.ndarray, colour) -> None:
    """Where ``mask`` is, the drawing is the image half covered by ``colour`` (alpha 0.5):
    the median over the region (class names and outlines cover a few of its pixels)."""
    assert mask.sum() >= LARGE
    expected = 0.5 * raw[mask] + 0.5 * np.asarray(colour)
    error = np.median(np.abs(drawing[mask] - expected), axis=0)
    assert (error <= 6).all(), (error, colour)


def _names(root: Path, ext: str = ".png"):
    return sorted(p.stem + ext for p in (root / "images/val").iterdir())


def test_semantic_annotation_in_the_class_colours(mini, visualize, capsys, tmp_path):
    root, semantic, _ = mini
    out = tmp_path / "pictures"
    status, output = visualize(capsys, "--dataset", semantic, "--output", str(out))
    assert status == 0, output.err
    assert f"Wrote 3 pictures of {semantic} to {out}" in output.out
    assert sorted(p.name for p in out.iterdir()) == _names(root)
    for picture in sorted(out.iterdir()):
        raw = _rgb(root / "images/val" / (picture.stem + ".jpg"))
        labels = np.asarray(Image.open(root / "sem_seg/val" / picture.name))
        drawing = _rgb(picture)
        assert drawing.shape == raw.shape
        large = [label for label in np.unique(labels) if (labels == label).sum() >= LARGE]
        assert len(large) >= 2
        for label in large:
            _assert_overlay(drawing, raw, labels == label, STUFF_COLORS[label])


def test_panoptic_annotation_draws_segments(mini, visualize, capsys, tmp_path):
    root, _, panoptic = mini
    out = tmp_path / "pictures"
    status, output = visualize(capsys, "--dataset", panoptic, "--output", str(out), "--num", "2")
    assert status == 0, output.err
    assert sorted(p.name for p in out.iterdir()) == _names(root)[:2]
    records = {Path(r["file_name"]).stem: r for r in DatasetCatalog.get(panoptic)}
    checked = []
    for picture in sorted(out.iterdir()):
        raw, drawing = _rgb(records[picture.stem]["file_name"]), _rgb(picture)
        ids = rgb_to_ids(np.asarray(Image.open(records[picture.stem]["pan_seg_file_name"])))
        for segment in records[picture.stem]["segments_info"]:
            mask = ids == segment["id"]
            if segment["category_id"] in THINGS:  # jittered colours: different from the image
                assert np.abs(drawing[mask] - raw[mask]).mean() > 20
                checked.append("thing")
            elif mask.sum() >= LARGE:
                _assert_overlay(drawing, raw, mask, STUFF_COLORS[segment["category_id"]])
                checked.append("stuff")
    assert {"thing", "stuff"} == set(checked)


def _mapped_records(config: str, dataset: str, seed: int = 0):
    """What the tool's mapper makes of the records, with the tool's seed: the expectation."""
    cfg = load_config(config, ["DATASETS.TRAIN", f"('{dataset}',)"], cpu_fallback=False)
    mapper = build_train_mapper(cfg)
    random.seed(seed)
    np.random.seed(seed)
    return [mapper(r) for r in DatasetCatalog.get(dataset)]


def test_dataloader_draws_the_mappers_targets(mini, visualize, capsys, tmp_path):
    root, semantic, _ = mini
    out = tmp_path / "pictures"
    argv = ["--source", "dataloader", "--config-file", SEMANTIC_CONFIG, "--dataset", semantic]
    status, output = visualize(capsys, *argv, "--output", str(out))
    assert status == 0, output.err
    assert sorted(p.name for p in out.iterdir()) == _names(root)
    checked = 0
    for mapped in _mapped_records(SEMANTIC_CONFIG, semantic):
        drawing = _rgb(out / (Path(mapped["file_name"]).stem + ".png"))
        # The crop of the config (128 x 128): not the stored image's size.
        assert drawing.shape == (128, 128, 3)
        image = mapped["image"].permute(1, 2, 0).numpy().astype(np.float64)
        sem_seg = mapped["sem_seg"].numpy()
        for label in np.unique(sem_seg):
            if (sem_seg == label).sum() >= LARGE:
                _assert_overlay(drawing, image, sem_seg == label, STUFF_COLORS[label])
                checked += 1
    assert checked >= 3


def test_dataloader_of_a_panoptic_config(mini, visualize, capsys, tmp_path):
    _, _, panoptic = mini
    out = tmp_path / "pictures"
    argv = ["--source", "dataloader", "--config-file", PANOPTIC_CONFIG, "--dataset", panoptic]
    status, output = visualize(capsys, *argv, "--output", str(out), "--num", "1")
    assert status == 0, output.err
    (mapped,) = _mapped_records(PANOPTIC_CONFIG, panoptic)[:1]
    drawing = _rgb(out / (Path(mapped["file_name"]).stem + ".png"))
    image = mapped["image"].permute(1, 2, 0).numpy().astype(np.float64)
    assert drawing.shape == image.shape
    instances = mapped["instances"]
    checked = 0
    for mask, category in zip(instances.gt_masks.numpy(), instances.gt_classes.tolist()):
        if category in THINGS and mask.any():
            assert np.abs(drawing[mask] - image[mask]).mean() > 20
            checked += 1
        elif mask.sum() >= LARGE:
            _assert_overlay(drawing, image, mask, STUFF_COLORS[category])
            checked += 1
    assert checked >= 2


def test_a_bad_record_is_skipped_with_the_readers_message(tmp_path, visualize, capsys):
    root = tmp_path / "data"
    generate_split(str(root), "val", seed=5, num_images=2)
    (root / "sem_seg/val/000001.png").write_bytes(b"")
    name = f"t{uuid.uuid4().hex[:8]}_broken_sem_seg_val"
    register_sem_seg_splits(
        {name: (str(root / "images/val"), str(root / "sem_seg/val"))},
        {"stuff_classes": META["stuff_classes"], "ignore_label": 255},
        gt_ext="png",
    )
    out = tmp_path / "pictures"
    status, output = visualize(capsys, "--dataset", name, "--output", str(out))
    assert status == 1
    assert [p.name for p in out.iterdir()] == ["000000.png"]
    label = root / "sem_seg/val/000001.png"
    assert f"skipped: {name}: Cannot read label map (sem_seg_file_name) {label}: empty" in (
        output.err
    )
    assert "tools/check_dataset.py" in output.err


def test_unknown_names_and_missing_configs_are_refused(mini, visualize, capsys, tmp_path):
    _, semantic, _ = mini
    out = str(tmp_path / "pictures")
    status, output = visualize(capsys, "--dataset", semantic + "x", "--output", out)
    assert status == 2
    (line,) = output.err.splitlines()
    assert f"unknown dataset '{semantic}x'" in line and f"did you mean {semantic}" in line
    with pytest.raises(SystemExit) as exit_info:
        visualize(capsys, "--dataset", semantic, "--source", "dataloader", "--output", out)
    assert exit_info.value.code == 2
    assert "--source dataloader needs --config-file" in capsys.readouterr().err
    # The mapper checks the config's classes against the dataset's, in one line.
    argv = ["--source", "dataloader", "--config-file", SEMANTIC_CONFIG, "--dataset", semantic]
    status, output = visualize(
        capsys, *argv, "--output", out, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"
    )
    assert status == 2
    assert output.err.startswith("visualize_data.py: error: MODEL.SEM_SEG_HEAD.NUM_CLASSES is 5")
    assert not Path(out).exists()


def test_a_config_draws_its_training_datasets(mini, visualize, capsys, tmp_path):
    root, semantic, panoptic = mini
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"_BASE_: {SEMANTIC_CONFIG}\nDATASETS:\n  TRAIN: ['{semantic}', '{panoptic}']\n"
    )
    out = tmp_path / "pictures"
    status, output = visualize(
        capsys, "--config-file", str(config), "--output", str(out), "--num", "4"
    )
    assert status == 0, output.err
    # Several datasets: each picture's name starts with its dataset's.
    stems = [p[: -len(".png")] for p in _names(root)]
    expected = [f"{semantic}__{s}.png" for s in stems] + [f"{panoptic}__{stems[0]}.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)


def test_progress_bar_on_stderr(mini, tool, capsys, tmp_path):
    _, semantic, _ = mini
    argv = ["--dataset", semantic, "--output", str(tmp_path), "--num", "2"]
    assert tool("visualize_data").main(argv) == 0
    err = capsys.readouterr().err
    assert "drawing (annotation): 100%" in err and "2/2" in err
