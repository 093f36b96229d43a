# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""The original MaskFormer's public names import from the package, also in a fresh interpreter."""

import re
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


# Documented import paths of the inference code, which lives in mask_former.inference.
PREDICTOR_NAMES = (
    "Predictor", "Prediction", "Segment", "UnreadableImageError", "IMAGE_EXTENSIONS",
    "image_to_rgb", "read_image_file", "list_images", "build_predictor_cfg", "predictor_metadata",
)  # fmt: skip
EXPORT_NAMES = (
    "ExportableMaskFormer", "export_onnx", "last_layer_only", "padded_size", "raw_mask_logits",
    "semantic_scores",
)  # fmt: skip
ONNX_HELPERS = (
    "MissingPackageError", "import_onnx_packages", "onnx_session", "onnx_latency",
    "verify_export", "export",
)  # fmt: skip


def test_documented_inference_paths_are_the_package_objects():
    import mask_former
    from mask_former import export, inference, predictor
    from mask_former.data import io
    from mask_former.inference import export as onnx_export
    from mask_former.inference import exportable, results

    for name in PREDICTOR_NAMES:
        assert hasattr(predictor, name), name
    assert mask_former.Predictor is predictor.Predictor is inference.Predictor
    assert predictor.Prediction is results.Prediction and predictor.Segment is results.Segment
    assert predictor.UnreadableImageError is io.UnreadableImageError
    assert predictor.IMAGE_EXTENSIONS == io.IMAGE_EXTENSIONS
    assert predictor.list_images is io.list_images
    assert predictor.predictor_metadata is results.class_metadata
    for name in EXPORT_NAMES:
        assert getattr(export, name) is getattr(
            exportable if name != "export_onnx" else onnx_export, name
        ), name
    for name in ONNX_HELPERS:
        assert callable(getattr(onnx_export, name)), name


def test_importing_mask_former_imports_no_onnx_and_no_default_predictor():
    code = (
        "import sys, mask_former, mask_former.export, mask_former.inference.export\n"
        "from mask_former.inference import PredictionVisualizer\n"
        "bad = [m for m in ('onnx', 'onnxruntime') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    # The demo and the package predict with mask_former.inference.Predictor only.
    sources = list((REPO_ROOT / "mask_former").rglob("*.py")) + [REPO_ROOT / "demo/demo.py"]
    uses = re.compile(r"import .*DefaultPredictor|DefaultPredictor\(|engine\.DefaultPredictor")
    users = [str(p) for p in sources if uses.search(p.read_text())]
    assert users == []
    assert not (REPO_ROOT / "demo/predictor.py").exists()
    assert not (REPO_ROOT / "demo/async_predictor.py").exists()
