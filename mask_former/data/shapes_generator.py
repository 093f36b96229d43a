# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
"shapes": the project's built-in synthetic dataset, so that training, evaluation and the demo
run anywhere without a download.

Each image is a layout of stuff regions told apart by *texture type*, with things told apart by
*shape* drawn on top:

- stuff (3 classes): ``gradient`` (a linear ramp), ``stripes`` (a square wave of random period
  and angle) and ``blotches`` (thresholded smooth noise). Each region is drawn between two
  random shades of a random hue, so colour alone does not give the class.
- things (3 classes): ``circle``, ``square`` (axis-aligned) and ``triangle`` (equilateral,
  apex up), in random solid colours and sizes; several per image, and often a second instance
  of the same class placed so that it touches or overlaps a first one. The three have about the
  same area at a given size, so size does not tell the class; their outline does.

Files, under ``<datasets root>/shapes``::

    images/{train,val}/NNNNNN.jpg     the images (128 to 256 px a side)
    sem_seg/{train,val}/NNNNNN.png    uint8 label maps, contiguous class ids 0..5
    panoptic/{train,val}/NNNNNN.png   COCO panoptic PNGs (id = R + 256 G + 256^2 B)
    panoptic_{train,val}.json         COCO panoptic annotations with categories and isthing
    COMPLETE                          written last; its presence marks a finished dataset

Generation is deterministic: image ``i`` of a split is drawn from the random generator seeded by
``(split seed, i)``, so the same seed gives the same bytes and a dataset of N images is the first
N images of a larger one. The whole dataset is written into a temporary folder that is renamed
into place when done, so an interrupted run never leaves a half-written dataset behind.
``python -m mask_former.data`` generates it ahead of time.

Shape shorthand in this module: H, W image height and width.
"""

import json
import logging
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np

from .io import ids_to_rgb

__all__ = [
    "SHAPES_CATEGORIES",
    "SHAPES_SPLITS",
    "shapes_dir",
    "ensure_shapes_dataset",
    "generate_split",
    "render_image",
    "panoptic_segments",
]

logger = logging.getLogger(__name__)

# 3: squares and triangles are no longer rotated. With random rotations, a ResNet-18 trained from
# scratch for the main job's budget did not learn to tell the shapes apart per pixel (thing IoU
# at chance, 10-24%), with MaskFormer and with a plain FCN alike.
GENERATOR_VERSION = 3

# Contiguous id = index. Things first, as in detectron2's COCO panoptic convention.
SHAPES_CATEGORIES: List[Dict[str, Any]] = [
    {"id": 1, "name": "circle", "isthing": 1, "color": [220, 20, 60]},
    {"id": 2, "name": "square", "isthing": 1, "color": [0, 80, 200]},
    {"id": 3, "name": "triangle", "isthing": 1, "color": [250, 170, 30]},
    {"id": 4, "name": "gradient", "isthing": 0, "color": [120, 120, 120]},
    {"id": 5, "name": "stripes", "isthing": 0, "color": [60, 180, 75]},
    {"id": 6, "name": "blotches", "isthing": 0, "color": [145, 30, 180]},
]
_NUM_THINGS = 3

# split -> (seed, number of images). Different seeds: val images are never train images.
SHAPES_SPLITS: Dict[str, Tuple[int, int]] = {"train": (20211, 400), "val": (20212, 100)}

_MIN_SIDE, _MAX_SIDE = 128, 256
_NOISE_STD = 6.0
_JPEG_QUALITY = 92


def shapes_dir(root: str) -> str:
    """The folder of the shapes dataset under the datasets root ``root``."""
    return os.path.join(root, "shapes")


# ---------------------------------------------------------------------------------------------
# Rendering (pure functions of a random generator)


def _random_shades(rng: np.random.Generator) -> np.ndarray:
    """Two BGR colours of one random hue, one dark and one light: shape (2, 3), float."""
    hue = rng.integers(0, 180)
    hsv = np.array(
        [
            [
                [hue, rng.integers(70, 256), rng.integers(30, 130)],
                [hue, rng.integers(70, 256), rng.integers(140, 256)],
            ]
        ],
        dtype=np.uint8,
    )
    shades = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0].astype(np.float32)
    return shades[rng.permutation(2)]


def _ramp(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Projection of the pixel grid on a random direction: shape (H, W), float."""
    angle = rng.uniform(0, np.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs * np.cos(angle) + ys * np.sin(angle)


def _texture(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Mixing weight in [0, 1] between the two shades: shape (H, W), float."""
    if kind == "gradient":
        proj = _ramp(rng, h, w)
        return (proj - proj.min()) / max(float(proj.max() - proj.min()), 1.0)
    if kind == "stripes":
        period = rng.uniform(6.0, 16.0)
        phase = rng.uniform(0.0, 1.0)
        return (np.mod(_ramp(rng, h, w) / period + phase, 1.0) < 0.5).astype(np.float32)
    if kind == "blotches":
        cell = int(rng.integers(10, 25))
        coarse = rng.random((h // cell + 3, w // cell + 3)).astype(np.float32)
        up = cv2.resize(coarse, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)
        noise = up[cell : cell + h, cell : cell + w]
        return np.clip((noise - 0.5) * 6.0 + 0.5, 0.0, 1.0)
    raise ValueError(f"Unknown texture kind {kind!r}")


def _stuff_layout(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Region index per pixel (a weighted Voronoi partition of 2..4 regions): (H, W) int."""
    n = int(rng.integers(2, 5))
    centers = rng.random((n, 2)) * np.array([h, w])
    weights = rng.uniform(0.0, 0.3 * max(h, w), size=n)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dist = np.stack([np.hypot(ys - cy, xs - cx) - wt for (cy, cx), wt in zip(centers, weights)])
    return dist.argmin(axis=0)


# Angle of the first corner: squares with horizontal and vertical sides, triangles apex up
# (image y grows downwards).
_FIRST_CORNER = {"square": np.pi / 4, "triangle": -np.pi / 2}


def _shape_mask(kind: str, center, size: float, h: int, w: int) -> np.ndarray:
    """Binary mask of one thing: shape (H, W), bool."""
    canvas = np.zeros((h, w), dtype=np.uint8)
    cx, cy = center
    if kind == "circle":
        cv2.circle(canvas, (int(round(cx)), int(round(cy))), int(round(size)), 1, thickness=-1)
    else:
        corners = 4 if kind == "square" else 3
        # Circumradius giving a similar area for every shape, so size does not tell the class.
        radius = size * (1.25 if kind == "square" else 1.55)
        angles = _FIRST_CORNER[kind] + 2 * np.pi * np.arange(corners) / corners
        pts = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1)
    return canvas.astype(bool)


def _place_things(rng: np.random.Generator, h: int, w: int) -> Tuple[np.ndarray, List[int]]:
    """
    Draw 3..8 things with rejection of heavy occlusions.

    Returns:
        instance map (H, W) int (-1 where no thing), and the contiguous class of each instance.
    """
    inst_map = np.full((h, w), -1, dtype=np.int32)
    classes: List[int] = []
    full_areas: List[int] = []
    geoms: List[Tuple[float, float, float]] = []
    target = int(rng.integers(3, 9))
    for _ in range(target * 4):
        if len(classes) == target:
            break
        size = rng.uniform(9.0, min(h, w) / 5.0)
        if geoms and rng.random() < 0.45:
            # Same class next to an earlier instance: touching or overlapping neighbours.
            j = int(rng.integers(len(geoms)))
            cls = classes[j]
            direction = rng.uniform(0, 2 * np.pi)
            dist = (geoms[j][2] + size) * rng.uniform(0.6, 1.05)
            x0, y0 = geoms[j][0], geoms[j][1]
            center = (x0 + dist * np.cos(direction), y0 + dist * np.sin(direction))
        else:
            cls = int(rng.integers(_NUM_THINGS))
            center = (rng.uniform(size, w - size), rng.uniform(size, h - size))
        kind = SHAPES_CATEGORIES[cls]["name"]
        mask = _shape_mask(kind, center, size, h, w)
        area = int(mask.sum())
        if area < 80:
            continue
        candidate = inst_map.copy()
        candidate[mask] = len(classes)
        visible = np.bincount(candidate.ravel() + 1, minlength=len(classes) + 2)[1:]
        # Every earlier instance must keep at least half of itself visible.
        if any(visible[k] < 0.5 * full_areas[k] for k in range(len(classes))):
            continue
        inst_map = candidate
        classes.append(cls)
        full_areas.append(area)
        geoms.append((center[0], center[1], size))
    return inst_map, classes


def render_image(rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Render one image.

    Returns:
        image (H, W, 3) uint8 BGR; semantic labels (H, W) uint8 (contiguous ids); instance map
        (H, W) int32 with the index of the thing covering each pixel (-1 for stuff).
    """
    h, w = (int(v) for v in rng.integers(_MIN_SIDE, _MAX_SIDE + 1, size=2))
    regions = _stuff_layout(rng, h, w)
    n_regions = int(regions.max()) + 1
    region_class = rng.integers(_NUM_THINGS, len(SHAPES_CATEGORIES), size=n_regions)
    image = np.zeros((h, w, 3), dtype=np.float32)
    for r in range(n_regions):
        kind = SHAPES_CATEGORIES[region_class[r]]["name"]
        shades = _random_shades(rng)
        sel = regions == r
        t = _texture(kind, rng, h, w)[sel]
        if kind == "gradient" and t.size:
            # Span both shades within the region, however small a slice of the ramp it is.
            t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        image[sel] = shades[0] + t[:, None] * (shades[1] - shades[0])
    labels = region_class[regions].astype(np.uint8)

    inst_map, classes = _place_things(rng, h, w)
    for k, cls in enumerate(classes):
        sel = inst_map == k
        image[sel] = rng.integers(20, 256, size=3).astype(np.float32)
        labels[sel] = cls
    image += _NOISE_STD * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, labels, inst_map


# ---------------------------------------------------------------------------------------------
# Writing


def panoptic_segments(labels: np.ndarray, inst_map: np.ndarray):
    """
    Panoptic ids of an image: one segment per thing, one per stuff class present.
    Segment id = category id * 1000 + (thing index + 1, or 0 for stuff).

    Returns:
        ids (H, W) int64 and the list of COCO ``segments_info`` dicts.
    """
    ids = np.zeros(labels.shape, dtype=np.int64)
    infos = []
    selections = [(inst_map == k, k + 1) for k in range(int(inst_map.max()) + 1)]
    stuff = inst_map < 0
    selections += [(stuff & (labels == c), 0) for c in np.unique(labels[stuff])]
    for sel, index in selections:
        category_id = SHAPES_CATEGORIES[int(labels[sel][0])]["id"]
        segment_id = category_id * 1000 + index
        ids[sel] = segment_id
        ys, xs = np.nonzero(sel)
        infos.append(
            {
                "id": segment_id,
                "category_id": category_id,
                "area": int(sel.sum()),
                "bbox": [
                    int(xs.min()),
                    int(ys.min()),
                    int(xs.max() - xs.min() + 1),
                    int(ys.max() - ys.min() + 1),
                ],
                "iscrowd": 0,
            }
        )
    return ids, infos


def _id_to_bgr(ids: np.ndarray) -> np.ndarray:
    """Segment ids as the BGR colours of a COCO panoptic PNG, for ``cv2.imwrite``."""
    return ids_to_rgb(ids)[..., ::-1]


def _write(path: str, array: np.ndarray, params=()) -> None:
    if not cv2.imwrite(path, array, list(params)):
        raise OSError(f"Could not write {path}")


def generate_split(out_dir: str, split: str, seed: int, num_images: int) -> None:
    """
    Write ``num_images`` images of ``split`` (images, semantic PNGs, panoptic PNGs and
    ``panoptic_{split}.json``) under ``out_dir``.
    """
    for sub in ("images", "sem_seg", "panoptic"):
        os.makedirs(os.path.join(out_dir, sub, split), exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, index])
        image, labels, inst_map = render_image(rng)
        ids, infos = panoptic_segments(labels, inst_map)
        stem = f"{index:06d}"
        _write(
            os.path.join(out_dir, "images", split, stem + ".jpg"),
            image,
            (cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY),
        )
        _write(os.path.join(out_dir, "sem_seg", split, stem + ".png"), labels)
        _write(os.path.join(out_dir, "panoptic", split, stem + ".png"), _id_to_bgr(ids))
        h, w = labels.shape
        images.append({"id": index, "file_name": stem + ".jpg", "height": h, "width": w})
        annotations.append({"image_id": index, "file_name": stem + ".png", "segments_info": infos})
    categories = [
        dict(c, supercategory="shape" if c["isthing"] else "texture") for c in SHAPES_CATEGORIES
    ]
    with open(os.path.join(out_dir, f"panoptic_{split}.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def _stamp() -> Dict[str, Any]:
    # What the COMPLETE file records (JSON round trip: tuples become lists).
    return json.loads(json.dumps({"version": GENERATOR_VERSION, "splits": SHAPES_SPLITS}))


def _read_stamp(target: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(target, "COMPLETE")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def ensure_shapes_dataset(root: str) -> str:
    """
    Generate the shapes dataset under ``root`` unless it is already there; return its folder.
    A dataset written by another generator version (or other split sizes) is replaced.

    Generation writes into a temporary folder beside the target and renames it into place, so
    concurrent callers and interrupted runs never expose a partial dataset.
    """
    target = shapes_dir(root)
    stamp = _read_stamp(target)
    if stamp == _stamp():
        return target
    if stamp is None and os.path.exists(target):
        raise RuntimeError(
            f"{target} exists but is not a complete shapes dataset (no COMPLETE file); "
            "delete it to have it generated again."
        )
    if stamp is not None:
        logger.warning("%s was made by generator %s; regenerating.", target, stamp)
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".shapes-tmp-", dir=root)
    try:
        logger.info("Generating the shapes dataset in %s ...", target)
        for split, (seed, num_images) in SHAPES_SPLITS.items():
            generate_split(tmp, split, seed, num_images)
        with open(os.path.join(tmp, "COMPLETE"), "w") as f:
            json.dump(_stamp(), f)
        _move_into_place(tmp, target, replace=stamp is not None)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Shapes dataset ready in %s", target)
    return target


def _move_into_place(tmp: str, target: str, replace: bool) -> None:
    if replace:
        old = tempfile.mkdtemp(prefix=".shapes-tmp-old-", dir=os.path.dirname(tmp))
        os.rename(target, os.path.join(old, "shapes"))
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:
        if _read_stamp(target) != _stamp():
            raise
        # Another process finished first: keep its copy (same seeds, same bytes).
