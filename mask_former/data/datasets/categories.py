# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Category tables of the model-zoo datasets, read from the JSON files shipped next to this module
(package data). The tables are data, kept apart from the registration logic; every accessor
returns a fresh copy so callers may modify what they get.

| file                       | entries | fields                                                  |
|----------------------------|---------|---------------------------------------------------------|
| ade20k_full_847.json       | 847     | name, ade_full_id, train_id                             |
| ade20k_panoptic_150.json   | 150     | id (0..149), name, isthing, color                       |
| coco_stuff_171.json        | 171     | id (COCO id), name, isthing, color (things only)        |
| mapillary_vistas_65.json   | 66      | name, readable, color, instances, evaluate (last: void) |
"""

import copy
import functools
import json
from pathlib import Path
from typing import Any, Dict, List

__all__ = [
    "load_table",
    "ade20k_full_categories",
    "ade20k_150_categories",
    "coco_stuff_171_categories",
    "mapillary_vistas_categories",
]

_TABLE_DIR = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=None)
def _read_table(file_name: str) -> List[Dict[str, Any]]:
    path = _TABLE_DIR / file_name
    if not path.is_file():
        raise FileNotFoundError(
            f"Category table {path} is missing: it is package data of mask_former "
            "(setup.py package_data); reinstall the package."
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_table(file_name: str) -> List[Dict[str, Any]]:
    """Return a copy of the category table ``file_name`` (a JSON list of dicts)."""
    return copy.deepcopy(_read_table(file_name))


def _fallback_color(category_id: int) -> List[int]:
    # Some source tables give no colour; a colour hashed from the id (Knuth's multiplicative
    # hash) keeps the visualisation stable from run to run, and is cheap at import time.
    h = (category_id * 2654435761 + 0x9E3779B9) & 0xFFFFFFFF
    return [(h >> 24) & 255, (h >> 12) & 255, h & 255]


def ade20k_full_categories() -> List[Dict[str, Any]]:
    """
    The 847 ADE20K-full classes in train-id order: dicts with name, ade_full_id, train_id, and
    a fixed colour seeded by the class's ADE id (the table has no colours).
    """
    table = load_table("ade20k_full_847.json")
    for entry in table:
        entry["color"] = _fallback_color(entry["ade_full_id"])
    return table


def ade20k_150_categories() -> List[Dict[str, Any]]:
    """
    The 150 ADE20K (SceneParsing) classes in label order (the order of detectron2's
    ``ADE20K_SEM_SEG_CATEGORIES``): dicts with id (0..149), name, isthing, color.
    """
    return load_table("ade20k_panoptic_150.json")


def coco_stuff_171_categories() -> List[Dict[str, Any]]:
    """
    The 171 COCO-stuff classes in contiguous-id order: dicts with id (COCO id), name, isthing,
    color. Entries without a colour (the stuff classes) get a fixed colour seeded by their id.
    """
    table = load_table("coco_stuff_171.json")
    for entry in table:
        entry.setdefault("isthing", 0)
        entry.setdefault("color", _fallback_color(entry["id"]))
    return table


def mapillary_vistas_categories() -> List[Dict[str, Any]]:
    """
    The 65 evaluated Mapillary Vistas v1.2 classes in label order (label value = index), with
    name, readable, color, instances. The unlabeled class (label 65, the ignore value) is left
    out.
    """
    return [entry for entry in load_table("mapillary_vistas_65.json") if entry["evaluate"]]
