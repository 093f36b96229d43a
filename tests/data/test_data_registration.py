# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Dataset names, roots, idempotent registration and the category tables."""

import importlib
import os

from data_testutils import unique_prefix
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

import mask_former.data.datasets as registrations
from mask_former.data.datasets import categories, register_all

DEFAULT_NAMES = [
    "ade20k_sem_seg_train",
    "ade20k_sem_seg_val",
    "ade20k_full_sem_seg_train",
    "ade20k_full_sem_seg_val",
    "ade20k_panoptic_train",
    "ade20k_panoptic_val",
    "coco_2017_train_stuff_10k_sem_seg",
    "coco_2017_test_stuff_10k_sem_seg",
    "mapillary_vistas_sem_seg_train",
    "mapillary_vistas_sem_seg_val",
    "cityscapes_fine_sem_seg_train",
    "cityscapes_fine_sem_seg_val",
    "coco_2017_train_panoptic",
    "coco_2017_val_panoptic",
    "shapes_sem_seg_train",
    "shapes_sem_seg_val",
    "shapes_panoptic_train",
    "shapes_panoptic_val",
]


def test_importing_registers_the_original_names():
    registered = set(DatasetCatalog.list())
    assert set(DEFAULT_NAMES) <= registered


def test_default_metadata():
    expect = {  # name: (classes, ignore_label, evaluator_type)
        "ade20k_sem_seg_val": (150, 255, "sem_seg"),
        "ade20k_full_sem_seg_val": (847, 65535, "sem_seg"),
        "ade20k_panoptic_val": (150, 255, "ade20k_panoptic_seg"),
        "coco_2017_test_stuff_10k_sem_seg": (171, 255, "sem_seg"),
        "mapillary_vistas_sem_seg_val": (65, 65, "sem_seg"),
        "cityscapes_fine_sem_seg_val": (19, 255, "cityscapes_sem_seg"),
        "coco_2017_val_panoptic": (133, 255, "coco_panoptic_seg"),
        "shapes_panoptic_val": (6, 255, "coco_panoptic_seg"),
        "shapes_sem_seg_val": (6, 255, "sem_seg"),
    }
    for name, (k, ignore, evaluator) in expect.items():
        meta = MetadataCatalog.get(name)
        assert len(meta.stuff_classes) == k, name
        assert len(meta.stuff_colors) == k, name
        assert meta.ignore_label == ignore, name
        assert meta.evaluator_type == evaluator, name
    ade_pan = MetadataCatalog.get("ade20k_panoptic_val")
    assert len(ade_pan.thing_dataset_id_to_contiguous_id) == 100
    assert len(ade_pan.stuff_dataset_id_to_contiguous_id) == 150
    assert ade_pan.label_divisor == 1000 and ade_pan.sem_seg_root.endswith(
        os.path.join("annotations_detectron2", "validation")
    )
    assert MetadataCatalog.get("ade20k_sem_seg_val").stuff_colors[2] == [6, 230, 230]  # sky
    assert MetadataCatalog.get("cityscapes_fine_sem_seg_val").stuff_colors[0] == [128, 64, 128]


def test_registration_is_idempotent_and_follows_the_root(tmp_path):
    prefix = unique_prefix()
    first = register_all(str(tmp_path / "a"), prefix)
    assert len(first) == len(DEFAULT_NAMES) + 1  # + cityscapes test split
    assert register_all(str(tmp_path / "a"), prefix) == []
    # Re-importing the package registers the default names again: no error.
    importlib.reload(registrations)
    # A new root replaces the registrations (detectron2 reads its root only once).
    second = register_all(str(tmp_path / "b"), prefix)
    assert sorted(second) == sorted(first)
    meta = MetadataCatalog.get(prefix + "ade20k_full_sem_seg_train")
    assert meta.image_root.startswith(str(tmp_path / "b"))


def test_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    prefix = unique_prefix()
    register_all(name_prefix=prefix)
    meta = MetadataCatalog.get(prefix + "mapillary_vistas_sem_seg_val")
    assert meta.image_root == os.path.join(
        str(tmp_path), "mapillary_vistas", "validation", "images"
    )


def test_category_tables():
    full = categories.ade20k_full_categories()
    assert len(full) == 847 and [c["train_id"] for c in full] == list(range(847))
    assert full[0]["name"] == "wall" and full[0]["ade_full_id"] == 2978
    ade = categories.ade20k_150_categories()
    assert [c["name"] for c in ade] == ADE20K_SEM_SEG_CATEGORIES
    assert sum(c["isthing"] for c in ade) == 100
    coco = categories.coco_stuff_171_categories()
    assert len(coco) == 171 and sum(c["isthing"] for c in coco) == 80
    assert coco[0]["id"] == 1 and coco[-1]["id"] == 182 and coco[-1]["name"] == "wood"
    assert all(len(c["color"]) == 3 for c in coco)
    vistas = categories.mapillary_vistas_categories()
    assert len(vistas) == 65 and vistas[0]["readable"] == "Bird"
    # Accessors hand out copies: editing one does not change the next.
    full[0]["name"] = "changed"
    assert categories.ade20k_full_categories()[0]["name"] == "wall"
