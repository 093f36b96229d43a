# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Mapper augmentations, padding, image formats and the errors raised on bad input."""

import json
import os

import numpy as np
import pytest
import torch
from data_formats import mini_cfg
from data_testutils import (
    COLORS,
    REGIONS,
    H,
    W,
    ids_to_rgb,
    layout_image,
    panoptic_ids,
    save_image,
    save_jpg,
    semantic_labels,
    unique_prefix,
    write_ade20k_150,
    write_coco_panoptic,
)
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import SizeMismatchError
from PIL import Image

from mask_former.data import (
    DETRPanopticDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    build_train_mapper,
)
from mask_former.data.datasets import register_ade20k_150, register_coco_panoptic
from mask_former.data.mappers import build_mask_former_train_augmentations

ADE_CLASSES = {"left": 0, "right": 2, "a": 7, "b": 7, "void": 255}


def semantic_mapper(**kwargs):
    args = dict(
        augmentations=[],
        image_format="RGB",
        ignore_label=255,
        size_divisibility=-1,
        num_classes=150,
    )
    args.update(kwargs)
    return MaskFormerSemanticDatasetMapper(**args)


def sem_record(tmp_path, labels=None, image=None, image_name="img.jpg"):
    labels = semantic_labels(ADE_CLASSES) if labels is None else labels
    image = layout_image() if image is None else image
    image_path = str(tmp_path / image_name)
    if image_name.endswith(".jpg"):
        save_jpg(image_path, image)
    else:
        save_image(image_path, image)
    label_path = save_image(str(tmp_path / "label.png"), labels)
    return {"file_name": image_path, "sem_seg_file_name": label_path}


# --- augmentations ---------------------------------------------------------------------------


def two_class_record(tmp_path):
    labels = np.zeros((64, 64), np.uint8)
    labels[:, 32:] = 1
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 32:] = 255
    return sem_record(tmp_path, labels, image)


def crop_cfg(max_area):
    cfg = mini_cfg("ade20k_sem_seg_train", "mask_former_semantic", 150, 255)
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (32, 32)
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = max_area
    return cfg


def largest_class_share(sem: torch.Tensor) -> float:
    return torch.bincount(sem.flatten()).max().item() / sem.numel()


def test_crop_single_category_constraint(tmp_path):
    # 64x64, class 0 left half, class 1 right half, 32x32 crops: a crop starting at column x0
    # holds 32 - x0 columns of class 0, so the 0.75 limit accepts only 8 < x0 < 24.
    record = two_class_record(tmp_path)
    mapper = build_train_mapper(crop_cfg(0.75))
    shares = [largest_class_share(mapper(record)["sem_seg"]) for _ in range(20)]
    assert all(s < 0.75 for s in shares), shares
    # Without the constraint, the same crops often violate it (proves the test can fail).
    mapper = build_train_mapper(crop_cfg(1.0))
    shares = [largest_class_share(mapper(record)["sem_seg"]) for _ in range(20)]
    assert any(s >= 0.75 for s in shares), shares


def test_crop_uses_the_configured_ignore_value_and_size(tmp_path):
    cfg = crop_cfg(0.5)
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 77
    cfg.INPUT.COLOR_AUG_SSD = True
    augs = build_mask_former_train_augmentations(cfg)
    names = [type(a).__name__ for a in augs]
    assert names == [
        "ResizeShortestEdge",
        "RandomCrop_CategoryAreaConstraint",
        "ColorAugSSDTransform",
        "RandomFlip",
    ]
    crop = augs[1]
    assert crop.ignored_category == 77 and crop.single_category_max_area == 0.5
    assert crop.crop_aug.crop_type == "absolute" and tuple(crop.crop_aug.crop_size) == (32, 32)


def test_color_aug_changes_pixels_but_not_labels(tmp_path):
    cfg = crop_cfg(1.0)
    cfg.INPUT.MIN_SIZE_TRAIN = (H,)
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.COLOR_AUG_SSD = True
    record = sem_record(tmp_path)
    out = build_train_mapper(cfg)(record)
    labels = torch.as_tensor(semantic_labels(ADE_CLASSES).astype(np.int64))
    sem = out["sem_seg"][:H, :W]
    flipped = not torch.equal(sem, labels)
    assert torch.equal(sem, labels.flip(-1) if flipped else labels)
    image = torch.as_tensor(layout_image()).permute(2, 0, 1)
    image = image.flip(-1) if flipped else image
    assert (out["image"][:, :H, :W].int() - image.int()).abs().float().mean() > 3


@pytest.mark.parametrize(
    "size_div, expected",
    [(32, (32, 32)), (16, (32, 32)), (8, (24, 32)), (0, (24, 32)), (-1, (24, 32))],
)
def test_padding_to_size_divisibility(tmp_path, size_div, expected):
    out = semantic_mapper(size_divisibility=size_div)(sem_record(tmp_path))
    assert tuple(out["image"].shape[1:]) == expected
    assert tuple(out["sem_seg"].shape) == expected
    assert out["instances"].image_size == expected
    assert tuple(out["instances"].gt_masks.shape[1:]) == expected
    assert (out["image"][:, H:, :] == 128).all() and (out["image"][:, :, W:] == 128).all()
    assert (out["sem_seg"][H:, :] == 255).all() and (out["sem_seg"][:, W:] == 255).all()
    assert not out["instances"].gt_masks[:, H:, :].any()


def test_panoptic_padding_is_void(tmp_path):
    root = str(tmp_path)
    write_coco_panoptic(root)
    prefix = unique_prefix()
    register_coco_panoptic(root, prefix)
    record = DatasetCatalog.get(prefix + "coco_2017_train_panoptic")[0]
    mapper = MaskFormerPanopticDatasetMapper(
        augmentations=[],
        image_format="RGB",
        ignore_label=255,
        size_divisibility=32,
        num_classes=133,
    )
    out = mapper(record)
    masks = out["instances"].gt_masks
    assert masks.shape == (4, 32, 32)
    assert not masks[:, H:].any()  # padded rows belong to no segment
    assert "sem_seg" not in out  # COCO panoptic records have no semantic file
    # The void corner of the layout is in no mask either.
    assert not masks[:, :H, :W][:, torch.as_tensor(REGIONS["void"])].any()


def panoptic_mapper_of(kind, augmentations, num_classes=133):
    """A panoptic mapper of ``kind`` that applies exactly ``augmentations``, no padding."""
    if kind == "detr_panoptic":
        return DETRPanopticDatasetMapper(
            augmentations=augmentations,
            crop_augmentations=None,
            image_format="RGB",
            num_classes=num_classes,
        )
    return MaskFormerPanopticDatasetMapper(
        augmentations=augmentations,
        image_format="RGB",
        ignore_label=255,
        size_divisibility=-1,
        num_classes=num_classes,
    )


@pytest.mark.parametrize("kind", ["mask_former_panoptic", "detr_panoptic"])
def test_panoptic_keeps_cropped_away_segments_with_empty_masks(tmp_path, kind):
    root = str(tmp_path)
    write_coco_panoptic(root, crowd_b=True)
    prefix = unique_prefix()
    register_coco_panoptic(root, prefix)
    record = DatasetCatalog.get(prefix + "coco_2017_train_panoptic")[0]
    # A fixed crop of the right half (columns 16..31) removes the left region and square A.
    mapper = panoptic_mapper_of(kind, [_Fixed(T.CropTransform(16, 0, 16, H))])
    out = mapper(record)
    # As in the original, every non-crowd segment keeps its target, in segments_info order
    # (left = wall 131, right = sky 119, A = person 0); only the crowd square B is dropped.
    assert out["instances"].gt_classes.tolist() == [131, 119, 0]
    masks = out["instances"].gt_masks
    assert masks.shape == (3, H, 16) and masks.dtype == torch.bool
    assert torch.equal(masks[1], torch.as_tensor(REGIONS["right"][:, 16:]))
    assert not masks[0].any() and not masks[2].any()


@pytest.mark.parametrize("kind", ["mask_former_panoptic", "detr_panoptic"])
@pytest.mark.parametrize("size, n_moved", [(13, 10), (27, 9), (30, 5)])
def test_panoptic_resize_samples_the_pixels_of_pil_nearest(tmp_path, kind, size, n_moved):
    # One segment per column of a 20x20 PNG, with ids in all three channels.
    column_ids = np.arange(20) * (1 + 256 + 65536) + 1
    ids = np.tile(column_ids, (20, 1))
    rgb = ids_to_rgb(ids)
    segments = [{"id": int(i), "category_id": 1, "iscrowd": 0} for i in column_ids]
    record = {
        "file_name": save_image(str(tmp_path / "img.png"), np.zeros((20, 20, 3), np.uint8)),
        "pan_seg_file_name": save_image(str(tmp_path / "pan.png"), rgb),
        "segments_info": segments,
    }
    mapper = panoptic_mapper_of(
        kind, [T.ResizeShortestEdge((size,), 1000, "choice")], num_classes=2
    )
    masks = mapper(record)["instances"].gt_masks.numpy()
    # The original resizes the RGB PNG with PIL's NEAREST and then turns colours into ids.
    resized = np.asarray(Image.fromarray(rgb).resize((size, size), Image.NEAREST)).astype(int)
    expected_ids = resized[..., 0] + 256 * resized[..., 1] + 65536 * resized[..., 2]
    assert np.array_equal(masks, expected_ids[None] == column_ids[:, None, None])
    # torch's nearest rule on float ids picks other source columns at n_moved of the columns.
    by_torch = torch.nn.functional.interpolate(
        torch.as_tensor(ids, dtype=torch.float64)[None, None], (size, size), mode="nearest"
    )[0, 0].numpy()
    assert (by_torch[0] != expected_ids[0]).sum() == n_moved


class _Fixed(T.Augmentation):
    """An augmentation that always returns the given transform."""

    def __init__(self, tfm):
        super().__init__()
        self.tfm = tfm

    def get_transform(self, image):
        return self.tfm


def interior(mask: np.ndarray) -> np.ndarray:
    """The pixels of an (H, W) bool mask whose four neighbours are in it too."""
    inside = np.zeros_like(mask)
    inside[1:-1, 1:-1] = (
        mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    )
    return inside


def test_detr_mapper_crop_branch_and_test_mode(tmp_path):
    root = str(tmp_path)
    classes = write_coco_panoptic(root)
    prefix = unique_prefix()
    register_coco_panoptic(root, prefix)
    record = DatasetCatalog.get(prefix + "coco_2017_train_panoptic")[0]
    cfg = mini_cfg(prefix + "coco_2017_train_panoptic", "detr_panoptic", 133, 255)
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (200, 200)
    mapper = build_train_mapper(cfg)
    assert isinstance(mapper, DETRPanopticDatasetMapper)
    shapes = set()
    for _ in range(12):
        out = mapper(record)
        shape = tuple(out["image"].shape[1:])
        shapes.add(shape)
        inst = out["instances"]
        assert tuple(inst.gt_masks.shape[1:]) == shape
        # The masks follow the image content: the pixels inside a mask have the colour of one
        # region of its class (squares A and B share a class). Its border pixels are left out:
        # the antialiased bilinear downscale of the image blends them with the neighbours.
        image = out["image"].permute(1, 2, 0).numpy().astype(int)
        for cls, mask in zip(inst.gt_classes.tolist(), inst.gt_masks):
            inside = interior(mask.numpy())
            if not inside.any():
                continue  # cropped away, or a sliver at the edge of the crop
            pixels = image[inside]
            shares = [
                (np.abs(pixels - COLORS[n]).max(axis=1) < 40).mean()
                for n in ("left", "right", "a", "b")
                if classes[n] == cls
            ]
            assert max(shares) > 0.8, (cls, shares)
    # Without the crop branch the 24x32 image keeps its size; with it, the 200x200 crop of the
    # 400..600 px upscaled image comes back square at the final short side of 24.
    assert shapes == {(H, W), (H, H)}

    test_cfg = cfg.clone()
    test_cfg.INPUT.MIN_SIZE_TEST = 48
    test_mapper = DETRPanopticDatasetMapper(test_cfg, is_train=False)
    out = test_mapper({**record, "annotations": []})
    assert tuple(out["image"].shape[1:]) == (48, 64)
    assert "instances" not in out and "annotations" not in out


def test_build_train_mapper_unknown_name_returns_none():
    cfg = mini_cfg("ade20k_sem_seg_train", "my_own_mapper", 150, 255)
    assert build_train_mapper(cfg) is None


def test_semantic_mapper_is_train_only():
    with pytest.raises(ValueError, match="training targets only"):
        semantic_mapper(is_train=False)


def test_ignore_label_comes_from_the_dataset_metadata(tmp_path):
    root = str(tmp_path)
    write_ade20k_150(root)
    prefix = unique_prefix()
    register_ade20k_150(root, prefix)
    from detectron2.data import MetadataCatalog

    MetadataCatalog.get(prefix + "ade20k_sem_seg_train")  # registered with ignore_label 255
    cfg = mini_cfg(prefix + "ade20k_sem_seg_train", "mask_former_semantic", 150, 0)
    assert build_train_mapper(cfg).ignore_label == 255
    MetadataCatalog.get("tnoignore_ds")
    cfg = mini_cfg("tnoignore_ds", "mask_former_semantic", 150, 255)
    with pytest.raises(ValueError, match="tnoignore_ds.*ignore_label"):
        build_train_mapper(cfg)


# --- image formats -----------------------------------------------------------------------------


def test_grayscale_image_becomes_three_channels(tmp_path):
    gray = layout_image().mean(axis=2).astype(np.uint8)
    out = semantic_mapper()(sem_record(tmp_path, image=gray))
    image = out["image"]
    assert image.shape == (3, H, W)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert (image[0].int() - torch.as_tensor(gray).int()).abs().max() <= 3


def test_rgba_image_drops_alpha(tmp_path):
    rgba = np.concatenate([layout_image(), np.full((H, W, 1), 90, np.uint8)], axis=2)
    out = semantic_mapper()(sem_record(tmp_path, image=rgba, image_name="img.png"))
    assert torch.equal(out["image"], torch.as_tensor(layout_image()).permute(2, 0, 1))


def test_bgr_format_reverses_channels(tmp_path):
    out = semantic_mapper(image_format="BGR")(sem_record(tmp_path, image_name="img.png"))
    assert torch.equal(
        out["image"], torch.as_tensor(layout_image()[..., ::-1].copy()).permute(2, 0, 1)
    )


def test_exif_rotated_image_is_upright(tmp_path):
    # Store the layout rotated by 90 degrees with EXIF orientation 6 ("rotate 90 CW to view"):
    # viewers, and the mapper, must show the upright 24x32 layout that the labels describe.
    upright = layout_image()
    stored = np.rot90(upright, k=1).copy()  # 32x24 on disk
    path = str(tmp_path / "rot.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, quality=100, subsampling=0, exif=exif)
    record = sem_record(tmp_path)
    record["file_name"] = path
    out = semantic_mapper()(record)
    assert out["image"].shape == (3, H, W)
    diff = (out["image"].permute(1, 2, 0).int() - torch.as_tensor(upright).int()).abs()
    assert diff.float().mean() < 4


def test_sixteen_bit_png_labels(tmp_path):
    labels = semantic_labels(
        {"left": 3, "right": 300, "a": 846, "b": 846, "void": 65535}, dtype=np.uint16
    )
    record = sem_record(tmp_path, labels=labels)
    out = semantic_mapper(ignore_label=65535, num_classes=847)(record)
    assert torch.equal(out["sem_seg"], torch.as_tensor(labels.astype(np.int64)))
    assert out["instances"].gt_classes.tolist() == [3, 300, 846]


# --- errors ------------------------------------------------------------------------------------


def test_label_outside_class_range(tmp_path):
    labels = semantic_labels({**ADE_CLASSES, "a": 200})
    record = sem_record(tmp_path, labels=labels)
    with pytest.raises(ValueError, match=r"label\.png.*\[200\].*\[0, 150\)"):
        semantic_mapper()(record)


def test_label_map_size_differs_from_image(tmp_path):
    record = sem_record(tmp_path, labels=semantic_labels(ADE_CLASSES)[:, :30])
    with pytest.raises(ValueError, match=r"label\.png.*30x24.*img\.jpg.*32x24"):
        semantic_mapper()(record)


def test_record_size_differs_from_image(tmp_path):
    record = {**sem_record(tmp_path), "height": 10, "width": 10}
    with pytest.raises(SizeMismatchError, match="img.jpg"):
        semantic_mapper()(record)


@pytest.mark.parametrize("field", ["file_name", "sem_seg_file_name"])
def test_missing_file(tmp_path, field):
    record = sem_record(tmp_path)
    os.remove(record[field])
    with pytest.raises(FileNotFoundError, match=os.path.basename(record[field])):
        semantic_mapper()(record)


def test_semantic_record_without_label_or_with_annotations(tmp_path):
    record = sem_record(tmp_path)
    with pytest.raises(ValueError, match="annotations"):
        semantic_mapper()({**record, "annotations": []})
    with pytest.raises(ValueError, match="sem_seg_file_name"):
        semantic_mapper()({"file_name": record["file_name"]})


def write_pan_record(tmp_path, segments):
    ids = panoptic_ids({"left": 11, "right": 12, "a": 300, "b": 301})
    pan = save_image(str(tmp_path / "pan.png"), ids_to_rgb(ids))
    image = save_jpg(str(tmp_path / "img.jpg"), layout_image())
    return {"file_name": image, "pan_seg_file_name": pan, "segments_info": segments}


def pan_mapper():
    return MaskFormerPanopticDatasetMapper(
        augmentations=[],
        image_format="RGB",
        ignore_label=255,
        size_divisibility=-1,
        num_classes=10,
    )


def test_panoptic_segment_absent_from_png(tmp_path):
    record = write_pan_record(
        tmp_path,
        [{"id": 11, "category_id": 1, "iscrowd": 0}, {"id": 999, "category_id": 2, "iscrowd": 0}],
    )
    with pytest.raises(ValueError, match=r"Segment id 999.*pan\.png"):
        pan_mapper()(record)


def test_panoptic_category_outside_class_range(tmp_path):
    record = write_pan_record(tmp_path, [{"id": 11, "category_id": 10, "iscrowd": 0}])
    with pytest.raises(ValueError, match=r"Segment id 11.*pan\.png.*category_id 10"):
        pan_mapper()(record)


def categories_of(instances) -> np.ndarray:
    """The (h, w) category of each pixel of a panoptic mapper's targets, 255 where none is."""
    labels = np.full(tuple(instances.image_size), 255)
    for category, mask in zip(instances.gt_classes.tolist(), instances.gt_masks.numpy()):
        labels[mask] = category
    return labels


def within_area_limit(labels: np.ndarray, max_area: float) -> bool:
    """
    detectron2's RandomCrop_CategoryAreaConstraint test of a crop: two categories or more, and
    none with ``max_area`` or more of the labelled (not 255) pixels.
    """
    _, counts = np.unique(labels[labels != 255], return_counts=True)
    return len(counts) > 1 and counts.max() < counts.sum() * max_area


def test_panoptic_without_semantic_file_constrains_crop_on_segments(tmp_path):
    # Two categories of two segments each: category 1 = left + square A, category 2 = right +
    # square B. The constraint must count the pixels of a category, not of a segment.
    segments = [
        {"id": i, "category_id": c, "iscrowd": 0} for i, c in [(11, 1), (300, 1), (12, 2), (301, 2)]
    ]
    record = write_pan_record(tmp_path, segments)
    assert "sem_seg_file_name" not in record
    max_area, crop = 0.75, (16, 16)
    # Most 16x16 windows of the layout break the limit (52%): one of the constraint's 10 tries
    # finds a valid crop for all but 0.15% of the images.
    layout = semantic_labels({"left": 1, "a": 1, "right": 2, "b": 2, "void": 255})
    windows = [
        layout[y : y + crop[0], x : x + crop[1]]
        for y in range(H - crop[0] + 1)
        for x in range(W - crop[1] + 1)
    ]
    assert np.mean([not within_area_limit(w, max_area) for w in windows]) > 0.5

    mapper = pan_mapper()
    crops = {}
    for limit in (max_area, 1.0):  # 1.0: the constraint is off
        mapper.augmentations = T.AugmentationList(
            [T.RandomCrop_CategoryAreaConstraint("absolute", crop, limit, 255)]
        )
        np.random.seed(0)
        outputs = [mapper(record) for _ in range(20)]
        assert all("sem_seg" not in out for out in outputs)
        crops[limit] = [categories_of(out["instances"]) for out in outputs]
    assert all(labels.shape == crop for labels in crops[max_area] + crops[1.0])
    within = {k: [within_area_limit(labels, max_area) for labels in v] for k, v in crops.items()}
    # The category map derived from the segments constrains every crop ...
    assert all(within[max_area]), within[max_area]
    # ... and without the constraint, crops from the same seed break the limit (the test can fail).
    assert not all(within[1.0]), within[1.0]


def test_panoptic_json_with_unknown_category(tmp_path):
    from mask_former.data.datasets import load_panoptic_json

    path = tmp_path / "pan.json"
    path.write_text(
        json.dumps(
            {
                "annotations": [
                    {
                        "image_id": 1,
                        "file_name": "x.png",
                        "segments_info": [{"id": 5, "category_id": 42}],
                    }
                ]
            }
        )
    )
    with pytest.raises(ValueError, match=r"category_id 42"):
        load_panoptic_json(str(path), "img", "pan", None, {1: 0}, {2: 1})
