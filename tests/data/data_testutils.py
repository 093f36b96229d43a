# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Writers of miniature on-disk datasets in the layout of each model-zoo dataset, with
hand-known content, shared by the data tests.

Every miniature image is H x W = 24 x 32 and follows one hand-drawn layout (``layout()``):
the left half and the right half are two different "stuff" regions, two touching 6x6 squares
(instances A and B) of one thing class sit in the left half, and a 4x4 block in the bottom
right corner is unlabeled (ignore / VOID). Images paint every region in a distinct flat
colour so that the image content follows the labels through the augmentations.
"""

import json
import os
import struct
import uuid
import zlib
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

H, W = 24, 32

# Region masks of the hand layout (True where the region is).
_Y, _X = np.mgrid[0:H, 0:W]
MASK_INST_A = (_Y >= 4) & (_Y < 10) & (_X >= 4) & (_X < 10)
MASK_INST_B = (_Y >= 4) & (_Y < 10) & (_X >= 10) & (_X < 16)  # touches A
MASK_VOID = (_Y >= 20) & (_X >= 28)
MASK_LEFT = (_X < 16) & ~MASK_INST_A & ~MASK_INST_B & ~MASK_VOID
MASK_RIGHT = (_X >= 16) & ~MASK_VOID
REGIONS = {
    "left": MASK_LEFT,
    "right": MASK_RIGHT,
    "a": MASK_INST_A,
    "b": MASK_INST_B,
    "void": MASK_VOID,
}
COLORS = {
    "left": (200, 40, 40),
    "right": (40, 200, 40),
    "a": (40, 40, 200),
    "b": (220, 220, 40),
    "void": (0, 0, 0),
}


def unique_prefix() -> str:
    """A fresh dataset-name prefix, so tests never collide in the global catalogs."""
    return f"t{uuid.uuid4().hex[:8]}_"


def layout_image() -> np.ndarray:
    """The RGB image of the hand layout: (H, W, 3) uint8."""
    image = np.zeros((H, W, 3), dtype=np.uint8)
    for name, mask in REGIONS.items():
        image[mask] = COLORS[name]
    return image


def semantic_labels(classes: Dict[str, int], dtype=np.uint8) -> np.ndarray:
    """Label map of the layout with ``classes`` = region name -> label (incl. "void")."""
    labels = np.zeros((H, W), dtype=dtype)
    for name, mask in REGIONS.items():
        labels[mask] = classes[name]
    return labels


def panoptic_ids(ids: Dict[str, int]) -> np.ndarray:
    """Segment ids of the layout, ``ids`` = region name -> segment id (void -> 0)."""
    seg = np.zeros((H, W), dtype=np.int64)
    for name, mask in REGIONS.items():
        seg[mask] = ids.get(name, 0)
    return seg


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def bomb_png(width: int = 60000, height: int = 60000) -> bytes:
    """
    A PNG whose header declares ``width`` x ``height`` 8-bit grey pixels (a "decompression
    bomb" above Pillow's pixel limit), followed by a tiny compressed row and IEND.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def save_image(path: str, array: np.ndarray, **kwargs) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def save_jpg(path: str, image: np.ndarray) -> str:
    return save_image(path, image, quality=100, subsampling=0)


def write_sem_seg_pair(image_path: str, label_path: str, labels: np.ndarray) -> None:
    save_jpg(image_path, layout_image())
    save_image(label_path, labels)


# ---------------------------------------------------------------------------------------------
# One writer per dataset layout. Each returns what the test needs to know about the classes.


def write_ade20k_150(root: str) -> Dict[str, int]:
    classes = {"left": 0, "right": 2, "a": 7, "b": 7, "void": 255}  # wall, sky, bed
    base = os.path.join(root, "ADEChallengeData2016")
    for folder, stem in [("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")]:
        write_sem_seg_pair(
            os.path.join(base, "images", folder, stem + ".jpg"),
            os.path.join(base, "annotations_detectron2", folder, stem + ".png"),
            semantic_labels(classes),
        )
    return classes


def write_ade20k_full(root: str) -> Dict[str, int]:
    # Labels above 255 need the uint16 TIFF format of this dataset.
    classes = {"left": 3, "right": 300, "a": 846, "b": 846, "void": 65535}
    base = os.path.join(root, "ADE20K_2021_17_01")
    for folder in ("training", "validation"):
        stem = "ADE_frame_00000001" if folder == "training" else "ADE_frame_00000002"
        write_sem_seg_pair(
            os.path.join(base, "images_detectron2", folder, stem + ".jpg"),
            os.path.join(base, "annotations_detectron2", folder, stem + ".tif"),
            semantic_labels(classes, dtype=np.uint16),
        )
    return classes


def write_coco_stuff_10k(root: str) -> Dict[str, int]:
    classes = {"left": 100, "right": 170, "a": 0, "b": 0, "void": 255}
    base = os.path.join(root, "coco", "coco_stuff_10k")
    for split in ("train", "test"):
        write_sem_seg_pair(
            os.path.join(base, "images_detectron2", split, "COCO_train2014_000000000077.jpg"),
            os.path.join(base, "annotations_detectron2", split, "COCO_train2014_000000000077.png"),
            semantic_labels(classes),
        )
    return classes


def write_mapillary_vistas(root: str) -> Dict[str, int]:
    classes = {"left": 13, "right": 27, "a": 55, "b": 55, "void": 65}  # road, sky, car
    base = os.path.join(root, "mapillary_vistas")
    palette = np.random.RandomState(0).randint(0, 256, size=(256, 3)).astype(np.uint8)
    for folder in ("training", "validation"):
        save_jpg(os.path.join(base, folder, "images", "img0.jpg"), layout_image())
        # The release stores labels as palette PNGs; the index is the label.
        label = Image.fromarray(semantic_labels(classes), mode="P")
        label.putpalette(palette.ravel().tolist())
        path = os.path.join(base, folder, "labels", "img0.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        label.save(path)
    return classes


def write_cityscapes(root: str) -> Dict[str, int]:
    classes = {"left": 0, "right": 10, "a": 13, "b": 13, "void": 255}  # road, sky, car
    for split in ("train", "val", "test"):
        stem = "aachen_000000_000019_"
        image_dir = os.path.join(root, "cityscapes", "leftImg8bit", split, "aachen")
        gt_dir = os.path.join(root, "cityscapes", "gtFine", split, "aachen")
        save_image(os.path.join(image_dir, stem + "leftImg8bit.png"), layout_image())
        save_image(
            os.path.join(gt_dir, stem + "gtFine_labelTrainIds.png"), semantic_labels(classes)
        )
        for suffix in ("gtFine_labelIds.png", "gtFine_instanceIds.png"):
            save_image(os.path.join(gt_dir, stem + suffix), np.zeros((H, W), np.uint8))
        with open(os.path.join(gt_dir, stem + "gtFine_polygons.json"), "w") as f:
            json.dump({"imgHeight": H, "imgWidth": W, "objects": []}, f)
    return classes


def _panoptic_json(stem: str, segments: List[dict], categories: List[dict], image_id) -> dict:
    return {
        "images": [{"id": image_id, "file_name": stem + ".jpg", "height": H, "width": W}],
        "annotations": [
            {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments}
        ],
        "categories": categories,
    }


def layout_segments(category: Dict[str, int], crowd_b: bool = False) -> Tuple[dict, List[dict]]:
    """Segment ids and COCO segments_info of the layout (void has no segment)."""
    ids = {"left": 11, "right": 12, "a": 300, "b": 301 + 256 * 5}  # b uses the G channel
    segments = [
        {
            "id": ids[name],
            "category_id": category[name],
            "iscrowd": int(crowd_b and name == "b"),
            "area": int(REGIONS[name].sum()),
            "bbox": [0, 0, 1, 1],
        }
        for name in ("left", "right", "a", "b")
    ]
    return ids, segments


def write_ade20k_panoptic(root: str, crowd_b: bool = False) -> Dict[str, int]:
    """ADE panoptic: dataset category ids are already 0..149; returns contiguous classes."""
    category = {"left": 0, "right": 2, "a": 7, "b": 7}  # wall, sky (stuff), bed (thing)
    base = os.path.join(root, "ADEChallengeData2016")
    ids, segments = layout_segments(category, crowd_b)
    for split, folder in [("train", "training"), ("val", "validation")]:
        stem = f"ADE_{split}_00000001"
        save_jpg(os.path.join(base, "images", folder, stem + ".jpg"), layout_image())
        save_image(
            os.path.join(base, f"ade20k_panoptic_{split}", stem + ".png"),
            ids_to_rgb(panoptic_ids(ids)),
        )
        save_image(
            os.path.join(base, "annotations_detectron2", folder, stem + ".png"),
            semantic_labels({**category, "void": 255}),
        )
        with open(os.path.join(base, f"ade20k_panoptic_{split}.json"), "w") as f:
            json.dump(_panoptic_json(stem, segments, [], 1), f)
    return {**category, "void": 255}


def write_coco_panoptic(root: str, crowd_b: bool = False) -> Dict[str, int]:
    """
    COCO panoptic with real COCO ids: person (1, contiguous 0) for the two squares,
    "wall-other-merged" (199, contiguous 131) left and "sky-other-merged" (187, contiguous
    119) right. Returns the contiguous classes.
    """
    dataset_category = {"left": 199, "right": 187, "a": 1, "b": 1}
    ids, segments = layout_segments(dataset_category, crowd_b)
    for split in ("train", "val"):
        stem = "000000000139"
        save_jpg(os.path.join(root, "coco", f"{split}2017", stem + ".jpg"), layout_image())
        save_image(
            os.path.join(root, "coco", f"panoptic_{split}2017", stem + ".png"),
            ids_to_rgb(panoptic_ids(ids)),
        )
        path = os.path.join(root, "coco", "annotations", f"panoptic_{split}2017.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(_panoptic_json(stem, segments, [], 139), f)
    return {"left": 131, "right": 119, "a": 0, "b": 0, "void": 255}


def expected_semantic_targets(classes: Dict[str, int], ignore: int):
    """Classes (ascending) and their masks for the semantic mapper, by hand."""
    per_class: Dict[int, np.ndarray] = {}
    for name, mask in REGIONS.items():
        c = classes[name]
        if c == ignore:
            continue
        per_class[c] = per_class.get(c, np.zeros((H, W), bool)) | mask
    keys = sorted(per_class)
    return keys, [per_class[k] for k in keys]


def expected_panoptic_targets(classes: Dict[str, int], crowd_b: bool = False):
    """Classes and masks for the panoptic mappers in segments_info order, by hand."""
    names = ["left", "right", "a"] + ([] if crowd_b else ["b"])
    return [classes[n] for n in names], [REGIONS[n] for n in names]
