# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Bad and awkward inputs in training and evaluation (issue 13, item 1): each gives a correct
result, or an error whose first line names the file, key or value, also when it is raised in
a DataLoader worker. The README's "What bad input gives" table lists the same cases.
"""

import argparse
import re
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np
import pytest
import torch
from data_testutils import H, W, bomb_png, ids_to_rgb, save_image, unique_prefix
from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_test_loader
from detectron2.data import transforms as T
from PIL import Image
from torch._utils import ExceptionWrapper

from mask_former import load_config
from mask_former.data import (
    DETRPanopticDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    MaskFormerTestDatasetMapper,
    build_train_mapper,
    check_num_classes,
)
from mask_former.data.datasets import register_ade20k_150, register_coco_panoptic
from mask_former.data.mappers import (
    DataError,
    DataFileNotFoundError,
    ImageSizeMismatchError,
    MapperError,
    UnreadableImageError,
)
from mask_former.data.mappers.detr_panoptic import CROP_RESIZE_MAX_SIZE
from tests.paths import CONFIGS

ADE_CONFIG = str(CONFIGS / "ade20k-150" / "maskformer_R50_bs16_160k.yaml")
COCO_CONFIG = str(CONFIGS / "coco-panoptic" / "maskformer_panoptic_R50_bs64_554k.yaml")
# Files that are not readable images, and the reason the error gives for each.
UNREADABLE = {
    "bomb.png": r"too large \(3600000000 pixels; the limit is \d+\)",
    "cut.png": r"truncated or corrupt \(.+\)",
    "empty.jpg": r"empty file \(0 bytes\)",
    "notes.jpg": r"not an image \(unknown format\)",
}
KINDS = ("mask_former_semantic", "mask_former_panoptic", "detr_panoptic", "test")


def _layout_rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)


def write_odd_images(folder: Path) -> Dict[str, tuple]:
    """Readable images of awkward kinds; returns name -> upright (height, width)."""
    folder.mkdir(exist_ok=True)
    rgb = _layout_rgb()
    Image.fromarray(rgb[:, :, 0], "L").save(folder / "gray.png")
    Image.fromarray(np.dstack([rgb, rgb[:, :, :1]]), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=100)
    ramp = np.linspace(0, 65535, H * W).reshape(H, W).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "deep.png")  # 16-bit grey ("I;16")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored W x H; rotate 90 degrees clockwise to view
    Image.fromarray(np.rot90(rgb).copy()).save(folder / "exif.png", exif=exif)
    Image.fromarray(rgb[:1, :1]).save(folder / "dot.png")
    strip = np.random.default_rng(1).integers(0, 255, (3, 2000, 3), dtype=np.uint8)
    Image.fromarray(strip).save(folder / "strip.png")
    # The 16-bit image last: detectron2 alone reads all the others right.
    sizes = {n: (H, W) for n in ("gray.png", "rgba.png", "cmyk.jpg", "exif.png")}
    return {**sizes, "dot.png": (1, 1), "strip.png": (3, 2000), "deep.png": (H, W)}


def write_unreadable(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    save_image(str(folder / "good.png"), _layout_rgb())
    png = (folder / "good.png").read_bytes()
    (folder / "cut.png").write_bytes(png[: len(png) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image, despite its name\n")
    (folder / "bomb.png").write_bytes(bomb_png(60000, 60000))


def labelled_record(image_path: str, size: tuple, label: int = 1) -> Dict[str, Any]:
    """A record of ``image_path`` with a label map and a panoptic PNG of one segment."""
    folder = Path(image_path).parent / "gt"
    stem = Path(image_path).stem
    labels = np.full(size, label, np.uint8)
    ids = np.full(size, 5, np.int64)
    return {
        "file_name": image_path,
        "sem_seg_file_name": save_image(str(folder / f"{stem}_sem.png"), labels),
        "pan_seg_file_name": save_image(str(folder / f"{stem}_pan.png"), ids_to_rgb(ids)),
        "segments_info": [{"id": 5, "category_id": label, "iscrowd": 0}],
    }


def plain_mapper(kind: str, num_classes: int = 150) -> Callable:
    """A mapper of ``kind`` without augmentations or padding."""
    if kind == "detr_panoptic":
        return DETRPanopticDatasetMapper(
            augmentations=[], crop_augmentations=None, image_format="RGB", num_classes=num_classes
        )
    if kind == "test":
        return MaskFormerTestDatasetMapper(
            augmentations=[], image_format="RGB", num_classes=num_classes, ignore_label=255
        )
    cls = {
        "mask_former_semantic": MaskFormerSemanticDatasetMapper,
        "mask_former_panoptic": MaskFormerPanopticDatasetMapper,
    }[kind]
    return cls(
        augmentations=[],
        image_format="RGB",
        ignore_label=255,
        size_divisibility=-1,
        num_classes=num_classes,
    )


def for_kind(record: Dict[str, Any], kind: str) -> Dict[str, Any]:
    """The fields of ``record`` that a record of a ``kind`` dataset has."""
    if kind == "mask_former_semantic":
        drop = ("pan_seg_file_name", "segments_info")
    elif kind == "detr_panoptic":
        drop = ("sem_seg_file_name",)
    else:
        drop = ()
    return {k: v for k, v in record.items() if k not in drop}


def zoo_cfg(path: str):
    """The model-zoo config ``path``, unfrozen, its MODEL.DEVICE as written."""
    return load_config(path, freeze=False, cpu_fallback=False)


# --- unreadable and missing files ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_image_names_the_file(tmp_path, kind, name):
    write_unreadable(tmp_path / "in")
    record = labelled_record(str(tmp_path / "in" / name), (H, W))
    path = re.escape(str(tmp_path / "in" / name))
    with pytest.raises(
        UnreadableImageError, match=f"^Cannot read image {path}: {UNREADABLE[name]}$"
    ) as e:
        plain_mapper(kind)(for_kind(record, kind))
    assert isinstance(e.value, DataError) and e.value.path == str(tmp_path / "in" / name)
    # One line, no chained traceback of the decoder.
    assert e.value.__cause__ is None and (
        e.value.__context__ is None or e.value.__suppress_context__
    )


@pytest.mark.parametrize(
    "kind, field",
    [
        ("mask_former_semantic", "sem_seg_file_name"),
        ("test", "sem_seg_file_name"),
        ("mask_former_panoptic", "pan_seg_file_name"),
        ("detr_panoptic", "pan_seg_file_name"),
    ],
)
@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_label_map_or_panoptic_png_names_the_file(tmp_path, kind, field, name):
    write_unreadable(tmp_path / "in")
    record = labelled_record(str(tmp_path / "in" / "good.png"), (H, W))
    record[field] = str(tmp_path / "in" / name)
    role = {"sem_seg_file_name": "label map", "pan_seg_file_name": "panoptic PNG"}[field]
    path = re.escape(str(tmp_path / "in" / name))
    expected = f"^Cannot read {role} \\({field}\\) {path}: {UNREADABLE[name]}$"
    with pytest.raises(UnreadableImageError, match=expected):
        plain_mapper(kind)(for_kind(record, kind))


def test_doctor_and_train_mapper_give_the_same_verdict_on_each_bad_file(tmp_path):
    from mask_former.data.datasets import register_dataset
    from mask_former.data.doctor import check_dataset

    write_unreadable(tmp_path / "in")
    good = str(tmp_path / "in" / "good.png")
    records, expected = [], []
    for name in sorted(UNREADABLE):
        bad = str(tmp_path / "in" / name)
        as_label = labelled_record(good, (H, W))
        as_label["sem_seg_file_name"] = bad
        for record, role in ((labelled_record(bad, (H, W)), "image"), (as_label, "label map")):
            records.append(for_kind(record, "mask_former_semantic"))
            expected.append((role, bad, UNREADABLE[name]))
    name = unique_prefix() + "bad_files"
    meta = {"stuff_classes": [f"c{i}" for i in range(150)], "ignore_label": 255}
    register_dataset(
        name, lambda: [dict(r) for r in records], {**meta, "evaluator_type": "sem_seg"}
    )
    doctor = [i.detail for i in check_dataset(name).issues if i.kind == "unreadable file"]
    mapper = plain_mapper("mask_former_semantic")
    verdicts = []
    for record in records:
        with pytest.raises(UnreadableImageError) as e:
            mapper(dict(record))
        verdicts.append(str(e.value))
    assert doctor == verdicts and len(verdicts) == 2 * len(UNREADABLE)
    for verdict, (role, path, reason) in zip(verdicts, expected):
        assert re.fullmatch(f"Cannot read {role}.* {re.escape(path)}: {reason}", verdict), verdict


@pytest.mark.parametrize(
    "kind, field",
    [
        ("test", "file_name"),
        ("test", "sem_seg_file_name"),
        ("mask_former_panoptic", "pan_seg_file_name"),
        ("detr_panoptic", "pan_seg_file_name"),
    ],
)
def test_missing_file_names_the_file(tmp_path, kind, field):
    write_unreadable(tmp_path / "in")
    record = labelled_record(str(tmp_path / "in" / "good.png"), (H, W))
    record[field] = str(tmp_path / "in" / "gone.png")
    noun = {
        "file_name": "Image file",
        "sem_seg_file_name": r"Label map \(sem_seg_file_name\)",
        "pan_seg_file_name": r"Panoptic PNG \(pan_seg_file_name\)",
    }[field]
    with pytest.raises(DataFileNotFoundError, match=rf"^{noun} '.*gone\.png' does not exist"):
        plain_mapper(kind)(for_kind(record, kind))


def test_missing_dataset_folder_or_json_names_it(tmp_path):
    prefix = unique_prefix()
    register_ade20k_150(str(tmp_path), prefix)
    register_coco_panoptic(str(tmp_path), prefix)
    with pytest.raises(FileNotFoundError, match=r"ADEChallengeData2016/images/training"):
        DatasetCatalog.get(prefix + "ade20k_sem_seg_train")
    with pytest.raises(FileNotFoundError, match=r"annotations/panoptic_train2017\.json"):
        DatasetCatalog.get(prefix + "coco_2017_train_panoptic")


def test_unexpected_failure_names_the_record(tmp_path):
    class Broken(T.Augmentation):
        def get_transform(self, image):
            raise RuntimeError("no transform today")

    write_unreadable(tmp_path / "in")
    record = labelled_record(str(tmp_path / "in" / "good.png"), (H, W))
    mapper = plain_mapper("mask_former_semantic")
    mapper.augmentations = T.AugmentationList([Broken()])
    with pytest.raises(MapperError, match=r"'.*good\.png' failed: RuntimeError: no transform"):
        mapper(for_kind(record, "mask_former_semantic"))


# --- DataLoader workers -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mask_former_semantic", "test"])
def test_worker_error_names_the_file_in_its_first_line(tmp_path, kind):
    write_unreadable(tmp_path / "in")
    record = for_kind(labelled_record(str(tmp_path / "in" / "cut.png"), (H, W)), kind)
    loader = build_detection_test_loader([record], mapper=plain_mapper(kind), num_workers=1)
    with pytest.raises(DataError) as e:
        next(iter(loader))
    first = str(e.value).splitlines()[0]
    assert first.startswith(
        f"Cannot read image {tmp_path / 'in' / 'cut.png'}: truncated or corrupt"
    )
    assert "worker process 0" in first
    assert "Original Traceback" in str(e.value)  # the worker's traceback is still there


@pytest.mark.parametrize(
    "error",
    [DataError, DataFileNotFoundError, ImageSizeMismatchError, MapperError, UnreadableImageError],
)
def test_every_mapper_error_keeps_its_message_first_through_a_worker(error):
    # What PyTorch does with an exception in a worker: format it there, re-raise it here.
    try:
        raise error("Label map 'x/a.png' is bad.")
    except error:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 3")
    with pytest.raises(error) as e:
        wrapper.reraise()
    assert str(e.value).startswith("Label map 'x/a.png' is bad. [in DataLoader worker process 3;")


# --- awkward images -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_awkward_images_are_read_upright_as_8_bit_rgb(tmp_path, kind):
    sizes = write_odd_images(tmp_path / "in")
    for name, size in sizes.items():
        record = for_kind(labelled_record(str(tmp_path / "in" / name), size), kind)
        image = plain_mapper(kind)(record)["image"]
        assert image.shape == (3, *size) and image.dtype == torch.uint8, name
        if name == "gray.png":
            assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
        if name == "cmyk.jpg":
            expected = np.array(Image.open(tmp_path / "in" / name).convert("RGB"))
            assert torch.equal(image, torch.as_tensor(expected).permute(2, 0, 1))
        if name == "deep.png":
            # 16 bits scaled to 8, not clipped at 255: the ramp spans the whole range.
            assert image.min() == 0 and image.max() == 255 and 120 < image.float().mean() < 135
        if name == "exif.png":
            assert torch.equal(image, torch.as_tensor(_layout_rgb()).permute(2, 0, 1))


def test_tiny_and_strip_images_train_with_the_ade20k_recipe(tmp_path):
    sizes = write_odd_images(tmp_path / "in")
    mapper = build_train_mapper(zoo_cfg(ADE_CONFIG))
    for name in ("dot.png", "strip.png"):
        record = for_kind(labelled_record(str(tmp_path / "in" / name), sizes[name]), KINDS[0])
        out = mapper(record)
        assert out["image"].shape == (3, 512, 512), name  # padded to SIZE_DIVISIBILITY
        assert out["instances"].gt_classes.tolist() == [1]
        assert out["instances"].gt_masks.sum() == (out["sem_seg"] == 1).sum() > 0


def test_strip_image_in_the_detr_crop_branch_stays_small(tmp_path):
    sizes = write_odd_images(tmp_path / "in")
    mapper = DETRPanopticDatasetMapper(zoo_cfg(COCO_CONFIG), is_train=True)
    strip = np.zeros((3, 2000, 3), np.uint8)
    resize = mapper.crop_augmentations[0].get_transform(strip)
    # The original resizes to 400..600 x 266667..400000 (up to 720 MB per RGB array).
    assert max(resize.new_h, resize.new_w) <= CROP_RESIZE_MAX_SIZE
    record = labelled_record(str(tmp_path / "in" / "strip.png"), sizes["strip.png"])
    for seed in range(4):  # both branches
        np.random.seed(seed)
        out = mapper(for_kind(record, "detr_panoptic"))
        assert min(out["image"].shape[1:]) >= 1 and max(out["image"].shape[1:]) <= 1333


def test_tiny_and_strip_images_evaluate_with_the_ade20k_sizes(tmp_path):
    sizes = write_odd_images(tmp_path / "in")
    mapper = MaskFormerTestDatasetMapper(zoo_cfg(ADE_CONFIG), dataset_name="ade20k_sem_seg_val")
    for name, shape in [("dot.png", (512, 512)), ("strip.png", (3, 2048))]:
        record = labelled_record(str(tmp_path / "in" / name), sizes[name])
        assert tuple(mapper(for_kind(record, "test"))["image"].shape[1:]) == shape


def test_test_mapper_gives_what_detectron2_gives(tmp_path):
    write_unreadable(tmp_path / "in")
    record = labelled_record(str(tmp_path / "in" / "good.png"), (H, W))
    record["annotations"] = []
    cfg = zoo_cfg(ADE_CONFIG)
    ours = MaskFormerTestDatasetMapper(cfg, dataset_name="ade20k_sem_seg_val")(record)
    theirs = DatasetMapper(cfg, is_train=False)(record)
    assert torch.equal(ours["image"], theirs["image"])
    # The evaluators read the ground truth from the files; the model ignores "sem_seg".
    assert sorted(ours) == sorted(k for k in theirs if k != "sem_seg")


# --- label maps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mask_former_semantic", "mask_former_panoptic", "test"])
def test_label_out_of_range_wrong_size_or_colour_names_the_file(tmp_path, kind):
    write_unreadable(tmp_path / "in")
    record = for_kind(labelled_record(str(tmp_path / "in" / "good.png"), (H, W)), kind)
    label_path = record["sem_seg_file_name"]
    mapper = plain_mapper(kind)
    save_image(label_path, np.full((H, W), 151, np.uint8))
    with pytest.raises(DataError, match=r"_sem\.png' has label\(s\) \[151\] outside"):
        mapper(record)
    save_image(label_path, np.ones((H, W - 1), np.uint8))
    with pytest.raises(DataError, match=r"_sem\.png' is 31x24 \(WxH\) but its image"):
        mapper(record)
    save_image(label_path, np.ones((H, W, 3), np.uint8))
    with pytest.raises(DataError, match=r"_sem\.png' has shape \(24, 32, 3\); a single-channel"):
        mapper(record)


def ignore_only_records(tmp_path) -> Dict[str, Dict[str, Any]]:
    write_unreadable(tmp_path / "in")
    record = labelled_record(str(tmp_path / "in" / "good.png"), (H, W), label=255)
    save_image(record["pan_seg_file_name"], np.zeros((H, W, 3), np.uint8))  # all VOID
    record["segments_info"] = []
    return {k: for_kind(record, k) for k in KINDS[:3]}


def test_ignore_only_label_map_gives_no_targets_and_finite_losses(tmp_path):
    from data_formats import mini_cfg, tiny_model_cfg
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    records = ignore_only_records(tmp_path)
    for kind, record in records.items():
        instances = plain_mapper(kind)(record)["instances"]
        assert len(instances) == 0 and instances.gt_masks.shape == (0, H, W), kind
    cfg = tiny_model_cfg(mini_cfg("ade20k_sem_seg_train", KINDS[0], 150, 255))
    batch = [plain_mapper(KINDS[0])(records[KINDS[0]]) for _ in range(2)]
    torch.manual_seed(0)
    model = build_model(cfg).train()
    with EventStorage():
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()  # "no object" for every query still trains the classifier
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- panoptic JSON against its PNG --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mask_former_panoptic", "detr_panoptic"])
def test_panoptic_segments_that_do_not_match_the_png(tmp_path, kind):
    write_unreadable(tmp_path / "in")
    record = for_kind(labelled_record(str(tmp_path / "in" / "good.png"), (H, W)), kind)
    mapper = plain_mapper(kind)
    listed = {"id": 5, "category_id": 1, "iscrowd": 0}
    record["segments_info"] = [listed, {"id": 9, "category_id": 2, "iscrowd": 0}]
    with pytest.raises(DataError, match=r"Segment id 9 .* does not occur in .*_pan\.png"):
        mapper(record)
    # A segment of the PNG that segments_info does not list is unlabelled, as in the original.
    ids = np.full((H, W), 5, np.int64)
    ids[:4, :4] = 7 + 256 * 3
    save_image(record["pan_seg_file_name"], ids_to_rgb(ids))
    record["segments_info"] = [listed]
    masks = mapper(record)["instances"].gt_masks
    assert masks.shape == (1, H, W) and torch.equal(masks[0], torch.as_tensor(ids == 5))


# --- config -------------------------------------------------------------------------------------


def test_unknown_config_key_is_named(tmp_path):
    from mask_former.engine.defaults import build_cfg

    path = tmp_path / "typo.yaml"
    path.write_text(f"_BASE_: {ADE_CONFIG}\nMODEL:\n  MASK_FORMER:\n    DEEP: 1\n")
    with pytest.raises(KeyError, match=r"Non-existent config key: MODEL\.MASK_FORMER\.DEEP"):
        build_cfg(argparse.Namespace(config_file=str(path), opts=[]))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("delta", [-50, 50])
def test_num_classes_must_match_the_dataset(kind, delta):
    cfg = zoo_cfg(COCO_CONFIG if kind == "detr_panoptic" else ADE_CONFIG)
    cfg.INPUT.DATASET_MAPPER_NAME = kind
    dataset = (cfg.DATASETS.TEST if kind == "test" else cfg.DATASETS.TRAIN)[0]
    count = 133 if kind == "detr_panoptic" else 150
    k = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = count + delta
    expected = (
        f"NUM_CLASSES is {k} but dataset {dataset!r} has {count} classes (len of its metadata "
        "stuff_classes): "
        + (f"its labels {k}..{count - 1} would have" if delta < 0 else "the model would predict 50")
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        if kind == "test":
            MaskFormerTestDatasetMapper(cfg, dataset_name=dataset)
        else:
            build_train_mapper(cfg)


def test_model_zoo_configs_match_their_datasets():
    paths = [p for p in CONFIGS.glob("**/*.yaml") if not p.name.startswith("Base-")]
    assert len(paths) > 30
    for path in paths:
        cfg = zoo_cfg(str(path))
        check_num_classes(
            cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, cfg.DATASETS.TRAIN + cfg.DATASETS.TEST
        )
