# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The dataset doctor: checks a registered dataset's files and metadata before training, and
counts its classes. ``tools/check_dataset.py`` prints the report; :func:`check_dataset` gives
it as a :class:`DatasetReport`.

What it checks, for the records of the dataset's loader and the folders of its metadata:

- the metadata: class names (``stuff_classes``; ``thing_classes``, an error only for panoptic
  data), ``ignore_label``, colours, ``evaluator_type``, and for panoptic data the two category
  id maps (contiguous ids 0..K-1, things in the thing map) against the JSON's categories;
- every image, label map and panoptic PNG exists and decodes, read as the mappers read it
  (:func:`mask_former.data.io.open_image`: upright per EXIF; an unreadable file is reported
  with the :class:`~mask_former.data.io.UnreadableImageError` message the mappers raise);
  label maps have one channel and their image's size; label values are classes [0, K) or
  the ignore label;
- semantic folders (``image_root`` / ``sem_seg_root`` of a ``load_sem_seg`` dataset): every
  image has its label map and every label map its image. When the counts differ, detectron2's
  ``load_sem_seg`` logs only a warning ("Directory <images> and <labels> has N and M files,
  respectively", then "Will use their intersection of K files") and uses only the images that
  have both; when the counts agree it pairs the files by sorted order, whatever their names;
- panoptic PNGs against the JSON's ``segments_info``: each listed segment is in the PNG (with
  its ``area``), each non-zero PNG id is listed, ids are unique and categories in range;
- the other splits of the dataset (the same name with train/val/test swapped): an absent one
  is a warning, so a datasets root may hold only the split being checked.

Shape shorthand: H, W image height and width; K classes.
"""

import functools
import json
import os
from collections import Counter
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from .checks import dataset_num_classes
from .doctor_report import ERROR, WARNING, DatasetReport, Issue
from .io import UnreadableImageError, list_images, open_image, rgb_to_ids
from .mappers.reading import FILE_ROLES

__all__ = ["ERROR", "WARNING", "Issue", "DatasetReport", "check_dataset", "sibling_splits"]

_SPLIT_WORDS = ("train", "val", "test", "training", "validation", "trainval", "minival")
# Metadata keys that name a file or folder of ground truth or images.
_PATH_KEYS = ("image_root", "sem_seg_root", "panoptic_root", "panoptic_json", "image_dir", "gt_dir")


# ---------------------------------------------------------------------------------------------
# Metadata


def sibling_splits(name: str, registered: Iterable[str]) -> List[str]:
    """The registered names that differ from ``name`` only in split words (train, val, ...)."""

    def key(n: str) -> Tuple[str, ...]:
        return tuple("*" if part in _SPLIT_WORDS else part for part in n.split("_"))

    return sorted(n for n in registered if n != name and key(n) == key(name) and "*" in key(n))


def _check_siblings(report: DatasetReport) -> None:
    for sibling in sibling_splits(report.name, DatasetCatalog.list()):
        meta = MetadataCatalog.get(sibling).as_dict()
        absent = [f"{k} {meta[k]}" for k in _PATH_KEYS if k in meta and not os.path.exists(meta[k])]
        if absent:
            report.add(
                WARNING,
                "other split absent",
                f"{sibling}: {absent[0]} does not exist (fine unless you train or evaluate on it)",
            )


def _check_classes(report: DatasetReport, meta: Dict[str, Any], panoptic: bool) -> None:
    found = dataset_num_classes(report.name)
    if found is None:
        report.add(ERROR, "metadata", "neither 'stuff_classes' nor 'thing_classes' is set")
        return
    report.class_names = list(meta.get("stuff_classes") or meta["thing_classes"])
    k = len(report.class_names)
    duplicates = [n for n, c in Counter(report.class_names).items() if c > 1]
    if duplicates:
        report.add(WARNING, "metadata", f"class names occur more than once: {duplicates}")
    if "thing_classes" not in meta and panoptic:
        report.add(ERROR, "metadata", "no 'thing_classes' (panoptic drawings name things by it)")
    elif "thing_classes" not in meta:
        report.add(WARNING, "metadata", "no 'thing_classes' (fine for semantic segmentation)")
    for key in ("stuff_colors", "thing_colors"):
        names = meta.get(key.replace("colors", "classes"))
        if key in meta and names is not None and len(meta[key]) != len(names):
            report.add(WARNING, "metadata", f"{key} has {len(meta[key])} colours for {len(names)}")
    ignore = meta.get("ignore_label")
    if ignore is None:
        report.add(ERROR, "metadata", "no 'ignore_label' (the mappers and SemSegEvaluator need it)")
    elif 0 <= int(ignore) < k:
        report.add(ERROR, "metadata", f"ignore_label {ignore} is also a class id (0..{k - 1})")
    if meta.get("evaluator_type") is None:
        report.add(WARNING, "metadata", "no 'evaluator_type': train_net.py cannot evaluate it")


def _check_id_maps(report: DatasetReport, meta: Dict[str, Any]) -> None:
    """The two dataset-id -> contiguous-id maps of panoptic data: contiguous 0..K-1."""
    things = meta.get("thing_dataset_id_to_contiguous_id")
    stuff = meta.get("stuff_dataset_id_to_contiguous_id")
    if things is None or stuff is None:
        report.add(ERROR, "metadata", "panoptic data needs both *_dataset_id_to_contiguous_id maps")
        return
    report.thing_ids = set(things.values())
    k = len(report.class_names)
    for dataset_id in set(things) & set(stuff):
        if things[dataset_id] != stuff[dataset_id]:
            report.add(ERROR, "metadata", f"category {dataset_id} maps to two contiguous ids")
    contiguous, expected = Counter({**stuff, **things}.values()), set(range(k))
    error = functools.partial(report.add_listed, ERROR, "metadata")
    error(f"contiguous ids 0..{k - 1} that no category has", sorted(expected - set(contiguous)))
    error(f"contiguous ids outside 0..{k - 1}", sorted(set(contiguous) - expected))
    error("contiguous ids of several categories", [c for c, n in contiguous.items() if n > 1])
    names = meta.get("thing_classes", [])
    if report.thing_ids and max(report.thing_ids) >= len(names):
        report.add(
            ERROR, "metadata", f"thing ids go up to {max(report.thing_ids)}: {len(names)} names"
        )


def _check_json_categories(report: DatasetReport, meta: Dict[str, Any], data: Dict) -> None:
    things = meta.get("thing_dataset_id_to_contiguous_id") or {}
    stuff = meta.get("stuff_dataset_id_to_contiguous_id") or {}
    for cat in data.get("categories", []):
        where = f"category {cat.get('id')} ({cat.get('name')!r}) of {meta['panoptic_json']}"
        if cat["id"] not in things and cat["id"] not in stuff:
            report.add(ERROR, "metadata", f"{where} is in neither id map")
            continue
        if "isthing" in cat and bool(cat["isthing"]) != (cat["id"] in things):
            report.add(
                ERROR, "metadata", f"{where}: isthing {cat['isthing']} but the maps disagree"
            )
        index = things.get(cat["id"], stuff.get(cat["id"]))
        if index < len(report.class_names) and report.class_names[index] != cat.get("name"):
            name = report.class_names[index]
            report.add(WARNING, "metadata", f"{where} is named {name!r} in the metadata")


def _check_panoptic_json(report: DatasetReport, meta: Dict[str, Any]) -> None:
    path = meta["panoptic_json"]
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        report.add(ERROR, "panoptic JSON", f"{path}: cannot be read ({e})")
        return
    _check_json_categories(report, meta, data)
    image_ids = {img["id"] for img in data.get("images", [])}
    annotated = [ann["image_id"] for ann in data.get("annotations", [])]
    warn = functools.partial(report.add_listed, WARNING, "panoptic JSON")
    warn(f"{path}: annotations of no image (image_id)", sorted(set(annotated) - image_ids, key=str))
    warn(f"{path}: images without annotation (id)", sorted(image_ids - set(annotated), key=str))
    twice = [i for i, n in Counter(annotated).items() if n > 1]
    report.add_listed(ERROR, "panoptic JSON", f"{path}: image_ids annotated twice", twice)


# ---------------------------------------------------------------------------------------------
# Files


def _open(report: DatasetReport, record: Dict[str, Any], field: str) -> Optional[Image.Image]:
    """
    The decoded, upright image of the file ``record[field]`` (as the mappers read it), or
    None with an error: "missing file", or "unreadable file" with the mappers' message.
    """
    path, what = record[field], FILE_ROLES[field]
    try:
        return open_image(path, what)
    except UnreadableImageError as e:
        if e.reason == "no such file":
            report.add(
                ERROR, "missing file", f"{what} {path} does not exist", path=path, field=field
            )
        else:
            report.add(ERROR, "unreadable file", str(e), path=path, field=field)
    return None


def _check_image(report: DatasetReport, record: Dict[str, Any]) -> Optional[Tuple[int, int]]:
    """The upright (H, W) of the record's image, or None if it cannot be read."""
    image = _open(report, record, "file_name")
    if image is None:
        return None
    size = (image.height, image.width)
    if "height" in record and "width" in record and (record["height"], record["width"]) != size:
        report.add(
            ERROR,
            "size mismatch",
            f"image {record['file_name']} is {size[1]}x{size[0]} (WxH) but its record says "
            f"{record['width']}x{record['height']}",
            path=record["file_name"],
            field="file_name",
        )
    return size


def _name(names: Sequence[str], class_id: int) -> str:
    return names[class_id] if 0 <= class_id < len(names) else f"class {class_id}"


def _size_matches(report: DatasetReport, record: Dict, field: str, shape, size) -> bool:
    if size is None or tuple(shape[:2]) == tuple(size):
        return True
    path, image_path = record[field], record["file_name"]
    report.add(
        ERROR,
        "size mismatch",
        f"{path} is {shape[1]}x{shape[0]} (WxH) but its image {image_path} is {size[1]}x{size[0]}",
        path=path,
        field=field,
    )
    return False


def _check_sem_seg(report: DatasetReport, record: Dict, size, ignore) -> None:
    path = record["sem_seg_file_name"]
    image = _open(report, record, "sem_seg_file_name")
    if image is None:
        return
    labels, file = np.asarray(image), {"path": path, "field": "sem_seg_file_name"}
    if labels.ndim != 2:
        message = f"label map {path} has shape {labels.shape}: one channel"
        report.add(ERROR, "label format", message, **file)
        return
    if not _size_matches(report, record, "sem_seg_file_name", labels.shape, size):
        return
    values, pixels = np.unique(labels, return_counts=True)
    k = len(report.class_names)
    report.add_listed(
        ERROR,
        "label out of range",
        f"label map {path} has values outside the classes [0, {k}) and not the ignore label "
        f"{ignore}",
        [int(v) for v in values if not 0 <= v < k and v != ignore],
        **file,
    )
    for value, n in zip(values.tolist(), pixels.tolist()):
        if value == ignore:
            report.ignore_pixels += n
        elif 0 <= value < k:
            report.pixels[value] += n
            report.images[value] += 1


def _check_pan_seg(report: DatasetReport, record: Dict, size) -> None:
    path = record["pan_seg_file_name"]
    image = _open(report, record, "pan_seg_file_name")
    if image is None:
        return
    rgb = np.asarray(image.convert("RGB"))
    if not _size_matches(report, record, "pan_seg_file_name", rgb.shape, size):
        return
    ids, pixels = np.unique(rgb_to_ids(rgb), return_counts=True)
    area = dict(zip(ids.tolist(), pixels.tolist()))
    segments = record.get("segments_info", [])
    listed = Counter(s["id"] for s in segments)
    names = report.class_names
    file = {"path": path, "field": "pan_seg_file_name"}
    error = functools.partial(report.add_listed, ERROR, "panoptic mismatch", **file)
    error(f"{path}: segment ids listed twice", [i for i, n in listed.items() if n > 1])
    absent = [s for s in segments if s["id"] not in area]
    error(
        f"{path}: JSON segments not in the PNG",
        [f"{s['id']} ({_name(names, s['category_id'])})" for s in absent],
    )
    error(
        f"{path}: PNG ids the JSON does not list", [i for i in area if i != 0 and i not in listed]
    )
    wrong = [
        s["id"]
        for s in segments
        if s["id"] in area and s.get("area", area[s["id"]]) != area[s["id"]]
    ]
    report.add_listed(WARNING, "panoptic area", f"{path}: JSON area differs from the PNG", wrong)
    _count_segments(report, path, segments, area, semantic="sem_seg_file_name" in record)


def _count_segments(report: DatasetReport, path, segments, area, semantic: bool) -> None:
    """Segments per class; pixels and images too unless a semantic label map counts them."""
    k = len(report.class_names)
    report.segments = report.segments if report.segments is not None else Counter()
    seen = set()
    for s in segments:
        category = s["category_id"]
        if not 0 <= category < k:
            message = f"{path}: segment {s['id']} has class {category}"
            report.add(ERROR, "label out of range", message, path=path, field="pan_seg_file_name")
            continue
        report.segments[category] += 1
        if not semantic:
            report.pixels[category] += area.get(s["id"], 0)
            seen.add(category)
    if not semantic:
        report.ignore_pixels += area.get(0, 0)
        report.images.update(seen)


# ---------------------------------------------------------------------------------------------
# Folders


def _files_by_stem(folder: str, ext: str) -> Dict[str, str]:
    return {
        os.path.splitext(f)[0]: os.path.join(folder, f)
        for f in sorted(os.listdir(folder))
        if f.endswith(ext) and os.path.isfile(os.path.join(folder, f))
    }


def _ext(records: List[Dict], field: str, default: str) -> str:
    return os.path.splitext(records[0][field])[1] if records else default


def _load_sem_seg_does(images: Dict[str, str], labels: Dict[str, str]) -> str:
    """What detectron2's ``load_sem_seg`` does with folders where an image lacks its label map."""
    if len(images) == len(labels):
        return (
            "the folders hold as many files, so detectron2's load_sem_seg pairs the files by "
            "sorted order, this image with another label map"
        )
    return (
        "detectron2's load_sem_seg leaves it out: it logs a warning that the folders 'has "
        f"{len(images)} and {len(labels)} files, respectively' and uses only the images that "
        "have both"
    )


def _check_semantic_folders(report: DatasetReport, meta: Dict, records: List[Dict]) -> List[Dict]:
    """
    Images without label maps (an error: load_sem_seg leaves them out, with only a warning
    that gives the two folders' file counts) and label maps without images in the folders of
    a ``load_sem_seg`` dataset.

    Returns:
        the records that pair each image with the label map of its name (what the files
        mean; load_sem_seg pairs them by sorted order when the counts agree), to check.
    """
    image_root, gt_root = meta["image_root"], meta["sem_seg_root"]
    if not (os.path.isdir(image_root) and os.path.isdir(gt_root)):
        return records
    images = _files_by_stem(image_root, _ext(records, "file_name", ".jpg"))
    labels = _files_by_stem(gt_root, _ext(records, "sem_seg_file_name", ".png"))
    for stem in sorted(set(images) - set(labels)):
        report.add(
            ERROR,
            "image without label",
            f"{images[stem]} has no label map in {gt_root} ({_load_sem_seg_does(images, labels)})",
            path=images[stem],
            field="file_name",
        )
    for stem in sorted(set(labels) - set(images)):
        report.add(WARNING, "label without image", f"{labels[stem]} has no image in {image_root}")
    stem = lambda path: os.path.splitext(os.path.basename(path))[0]  # noqa: E731
    mispaired = [r for r in records if stem(r["file_name"]) != stem(r["sem_seg_file_name"])]
    if mispaired:
        report.add(
            ERROR,
            "image/label pairing",
            f"load_sem_seg pairs {len(mispaired)} of {len(records)} images with the label map of "
            f"another name, e.g. {mispaired[0]['file_name']} with "
            f"{mispaired[0]['sem_seg_file_name']} (it pairs by sorted order when the counts "
            "agree); the doctor checks the files paired by name",
        )
    return [
        {"file_name": images[s], "sem_seg_file_name": labels[s]}
        for s in sorted(set(images) & set(labels))
    ]


def _check_panoptic_folders(report: DatasetReport, meta: Dict, records: List[Dict]) -> None:
    """Images and PNGs in the dataset's folders that no record uses."""
    for key, field in (("image_root", "file_name"), ("panoptic_root", "pan_seg_file_name")):
        folder = meta.get(key)
        if folder is None or not os.path.isdir(folder):
            continue
        used = {os.path.normpath(r[field]) for r in records if field in r}
        for path in list_images(folder):
            if os.path.normpath(path) not in used:
                report.add(
                    WARNING, "unused file", f"{path} is in no record of {meta['panoptic_json']}"
                )


# ---------------------------------------------------------------------------------------------
# The whole check


def _load_records(report: DatasetReport) -> List[Dict[str, Any]]:
    try:
        records = DatasetCatalog.get(report.name)
    except Exception as e:  # the loader's own error (missing folder, bad JSON, assert, ...)
        report.add(ERROR, "loader failed", f"{type(e).__name__}: {e}")
        return []
    if not records:
        report.add(ERROR, "loader failed", "the loader returned no records")
    return list(records)


def _check_paths(report: DatasetReport, meta: Dict[str, Any]) -> None:
    report.paths = {k: meta[k] for k in _PATH_KEYS if k in meta}
    for key, path in report.paths.items():
        if not os.path.exists(path):
            report.add(ERROR, "missing file", f"metadata {key} {path} does not exist")


def check_dataset(
    name: str,
    *,
    max_images: Optional[int] = None,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
) -> DatasetReport:
    """
    Check the registered dataset ``name`` (see the module docstring).

    Args:
        max_images: check the files of only the first N records (folders and metadata are
            still checked in full).
        progress: wraps the iteration over records (e.g. ``tqdm.tqdm``), or None.

    Raises:
        KeyError: ``name`` is not registered.
    """
    if name not in DatasetCatalog.list():
        raise KeyError(name)
    meta = MetadataCatalog.get(name).as_dict()
    report = DatasetReport(name, meta.get("evaluator_type"))
    _check_paths(report, meta)
    records = _load_records(report)
    report.num_records = len(records)
    panoptic = "panoptic_json" in meta or any("pan_seg_file_name" in r for r in records[:1])
    _check_classes(report, meta, panoptic)
    if panoptic:
        _check_id_maps(report, meta)
        if "panoptic_json" in meta and os.path.isfile(meta["panoptic_json"]):
            _check_panoptic_json(report, meta)
            _check_panoptic_folders(report, meta, records)
    elif "image_root" in meta and "sem_seg_root" in meta:
        records = _check_semantic_folders(report, meta, records)
    _check_siblings(report)
    if report.class_names:
        _check_files(report, records[:max_images], meta.get("ignore_label"), progress)
    return report


def _check_files(report: DatasetReport, records: Sequence[Dict], ignore, progress) -> None:
    for record in progress(records) if progress else records:
        size = _check_image(report, record)
        if "sem_seg_file_name" in record:
            _check_sem_seg(report, record, size, ignore)
        if "pan_seg_file_name" in record:
            _check_pan_seg(report, record, size)
    report.num_checked = len(records)
