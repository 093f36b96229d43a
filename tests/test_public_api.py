# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""The original MaskFormer's public names import from the package, also in a fresh interpreter."""

import subprocess
import sys

from detectron2.config import get_cfg
from detectron2.projects.deeplab import add_deeplab_config

from tests.paths import REPO_ROOT

ORIGINAL_NAMES = (
    "MaskFormer",
    "SemanticSegmentorWithTTA",
    "MaskFormerSemanticDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "DETRPanopticDatasetMapper",
    "add_mask_former_config",
)


def test_original_names_are_the_project_classes():
    import mask_former
    from mask_former import data, engine, modeling

    assert set(ORIGINAL_NAMES) <= set(mask_former.__all__)
    assert mask_former.MaskFormer is modeling.MaskFormer
    assert mask_former.SemanticSegmentorWithTTA is engine.SemanticSegmentorWithTTA
    for mapper in ORIGINAL_NAMES[2:5]:
        assert getattr(mask_former, mapper) is getattr(data, mapper)


def test_add_mask_former_config_extends_a_deeplab_config():
    from mask_former import add_mask_former_config

    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_mask_former_config(cfg)
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 100


def test_fresh_interpreter_imports_the_original_names():
    # A new process: no module imported earlier in this session can hide an import cycle.
    code = f"from mask_former import {', '.join(ORIGINAL_NAMES)}"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
