# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The web demo's logic without Gradio: the views of a prediction (mask_former/inference/views.py)
on hand-built predictions, and demo/app_core.py (which model to serve, uploads through the
image reader, thresholds, downloads) on a model whose predictions are known
(tests/tools/app_testing.py). The page itself is tested in a browser (tests/browser/).
None of these needs Gradio; demo/app.py says how to install it when it is missing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from app_testing import (
    QUERY_PROBABILITY,
    SEMANTIC_SHARE,
    SHAPES_NAMES,
    STRIPES_COLOUR,
    write_known_model,
)
from detectron2.data import Metadata
from detectron2.structures import Instances
from PIL import Image
from tools_testing import load_script

from mask_former import load_config
from mask_former.data.io import rgb_to_ids
from mask_former.inference import Prediction, Segment, views
from tests.paths import REPO_ROOT

NAMES = ["road", "car", "sky"]  # 0 stuff, 1 thing, 2 stuff


def _prediction(**outputs) -> Prediction:
    """A 2 x 4 prediction with the given outputs ("sem_seg", "panoptic_seg", "instances")."""
    result = Prediction("img.png", 2, 4, NAMES, outputs=outputs)
    if "sem_seg" in outputs:
        result.semantic = outputs["sem_seg"].argmax(0)
    if "panoptic_seg" in outputs:
        ids, info = outputs["panoptic_seg"]
        result.panoptic = ids
        areas = {s["id"]: int((ids == s["id"]).sum()) for s in info}
        result.segments = [
            Segment(
                s["id"], s["category_id"], NAMES[s["category_id"]], s["isthing"], areas[s["id"]]
            )
            for s in info
        ]
    if "instances" in outputs:
        result.instances = outputs["instances"]
    return result


# Scores per class (K=3) of a 2 x 4 image: left half road (0.6 of the pixel's 0.8 in total),
# the right half's top row car, bottom row sky.
SEM = torch.tensor(
    [
        [[0.6, 0.6, 0.1, 0.1], [0.6, 0.6, 0.1, 0.1]],
        [[0.1, 0.1, 0.9, 0.6], [0.1, 0.1, 0.0, 0.0]],
        [[0.1, 0.1, 0.0, 0.3], [0.1, 0.1, 0.9, 0.9]],
    ]
)
PAN = torch.tensor([[1, 1, 2, 2], [1, 1, 0, 0]], dtype=torch.int32)
PAN_INFO = [
    {"id": 1, "category_id": 0, "isthing": False},
    {"id": 2, "category_id": 1, "isthing": True},
]


def test_panoptic_rows_areas_and_scores():
    prediction = _prediction(sem_seg=SEM, panoptic_seg=(PAN, PAN_INFO))
    rows = views.segment_rows(prediction, "panoptic", thing_ids={1})
    assert [r.cells()[:4] for r in rows] == [[1, "road", "stuff", 50.0], [2, "car", "thing", 25.0]]
    # road: 0.6 / 0.8 at its 4 pixels; car: 0.9 / 1.0 and 0.6 / 1.0 at its 2 pixels.
    assert rows[0].score == pytest.approx(0.75)
    assert rows[1].score == pytest.approx(0.75)
    # Without semantic scores a segment has no score (an empty cell).
    bare = views.segment_rows(_prediction(panoptic_seg=(PAN, PAN_INFO)), "panoptic", {1})
    assert [r.score for r in bare] == [None, None] and bare[0].cells()[4] == ""


def test_semantic_rows_classes_by_id():
    rows = views.segment_rows(_prediction(sem_seg=SEM), "semantic", thing_ids={1})
    assert [r.cells()[:4] for r in rows] == [
        [0, "road", "stuff", 50.0],
        [1, "car", "thing", 25.0],  # (0, 2), (0, 3)
        [2, "sky", "stuff", 25.0],
    ]
    assert rows[2].score == pytest.approx(0.9)  # 0.9 / 1.0 at both pixels


def _instances(scores, classes, masks) -> Instances:
    result = Instances((2, 4))
    result.scores = torch.tensor(scores)
    result.pred_classes = torch.tensor(classes)
    result.pred_masks = torch.tensor(masks, dtype=torch.float32)
    return result


def test_instance_rows_and_id_map_higher_score_on_top():
    low = [[1, 1, 1, 0], [0, 0, 0, 0]]
    high = [[0, 1, 1, 1], [0, 0, 0, 1]]
    prediction = _prediction(instances=_instances([0.3, 0.8], [1, 2], [low, high]))
    rows = views.segment_rows(prediction, "instance", thing_ids={1})
    assert [r.cells() for r in rows] == [
        [1, "car", "thing", 37.5, 0.3],
        [2, "sky", "stuff", 50.0, 0.8],
    ]
    ids = views.id_map(prediction, "instance")
    np.testing.assert_array_equal(ids, [[1, 2, 2, 2], [0, 0, 0, 2]])
    # Filtered as the page filters them: the low-score instance disappears.
    kept = prediction.with_instances_above(0.5)
    assert [r.id for r in views.segment_rows(kept, "instance", {1})] == [1]
    np.testing.assert_array_equal(views.class_map(prediction), [[1, 2, 2, 2], [-1, -1, -1, 2]])


def test_id_map_images_encode_the_ids(tmp_path):
    prediction = _prediction(sem_seg=SEM, panoptic_seg=(PAN, PAN_INFO))
    views.id_map_image(views.id_map(prediction, "panoptic"), "panoptic").save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as image:
        assert image.mode == "RGB"
        np.testing.assert_array_equal(rgb_to_ids(np.asarray(image)), PAN.numpy())
    semantic = views.id_map_image(views.id_map(prediction, "semantic"), "semantic")
    assert semantic.mode == "L"
    np.testing.assert_array_equal(np.asarray(semantic), [[0, 0, 1, 1], [0, 0, 2, 2]])
    many = views.id_map_image(np.array([[0, 300]]), "semantic")
    many.save(tmp_path / "s.png")
    with Image.open(tmp_path / "s.png") as image:
        np.testing.assert_array_equal(np.asarray(image), [[0, 300]])
    with pytest.raises(ValueError, match="65535"):
        views.id_map_image(np.array([[70000]]), "instance")


def test_class_map_colours_and_legend():
    # Panoptic only: classes from the segments, void is -1 (black) and not in the legend.
    prediction = _prediction(panoptic_seg=(PAN, PAN_INFO))
    classes = views.class_map(prediction)
    np.testing.assert_array_equal(classes, [[0, 0, 1, 1], [0, 0, -1, -1]])
    colours = np.array([[10, 20, 30], [200, 0, 0], [0, 0, 250]], dtype=np.uint8)
    rgb = views.colourise(classes, colours)
    assert rgb[0, 0].tolist() == [10, 20, 30] and rgb[0, 2].tolist() == [200, 0, 0]
    assert rgb[1, 3].tolist() == [0, 0, 0]
    entries = views.legend(classes, NAMES, colours)
    assert [(e.name, e.colour, e.area_percent) for e in entries] == [
        ("road", (10, 20, 30), 50.0),
        ("car", (200, 0, 0), 25.0),
    ]


def test_class_colours_from_metadata_or_a_fixed_map():
    given = Metadata(name="_app_colours").set(stuff_colors=[[1, 2, 3], [4, 5, 6]])
    assert views.class_colours(given, 2).tolist() == [[1, 2, 3], [4, 5, 6]]
    fixed = views.class_colours(Metadata(name="_app_no_colours"), 100)
    assert fixed.shape == (100, 3) and len({tuple(c) for c in fixed[:50]}) > 40


def test_enabled_tasks_and_task_view():
    config = "configs/shapes/maskformer_panoptic_R18_bs8_1200.yaml"
    assert views.enabled_tasks(load_config(REPO_ROOT / config)) == ["panoptic", "semantic"]
    with_instances = load_config(REPO_ROOT / config, ["MODEL.MASK_FORMER.TEST.INSTANCE_ON", "True"])
    assert views.enabled_tasks(with_instances) == ["panoptic", "semantic", "instance"]
    baseline = load_config(REPO_ROOT / "configs/shapes/per_pixel_baseline_R18_bs8_1200.yaml")
    assert views.enabled_tasks(baseline) == ["semantic"]
    prediction = _prediction(sem_seg=SEM, panoptic_seg=(PAN, PAN_INFO))
    assert list(views.task_view(prediction, "semantic").outputs) == ["sem_seg"]
    with pytest.raises(ValueError, match="no instance output"):
        views.task_view(prediction, "instance")


# ---------------------------------------------------------------------------------------------
# demo/app_core.py


@pytest.fixture(scope="module")
def core():
    return load_script("demo/app_core.py")


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """(config, weights) of the known model in a `make demo`-like run folder."""
    return write_known_model(tmp_path_factory.mktemp("runs") / "demo_20240101_000000")


@pytest.fixture(scope="module")
def served(core, known):
    return core.AppModel(str(known[0]), str(known[1]))


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_latest_demo_run_and_resolve_model(core, known, tmp_path):
    runs = known[0].parent.parent
    newer_unfinished = runs / "demo_20990101_000000"  # no model_final.pth: not finished
    newer_unfinished.mkdir()
    (newer_unfinished / "config.yaml").write_text("")
    assert core.latest_demo_run(str(runs)) == str(known[0].parent)
    assert core.resolve_model(None, None, str(runs)) == (str(known[0]), str(known[1]))
    assert core.resolve_model(None, str(known[1]), str(tmp_path)) == (str(known[0]), str(known[1]))
    assert core.resolve_model("c.yaml", None, str(runs)) == ("c.yaml", None)
    with pytest.raises(core.AppError, match=r"No trained model.*Run `make demo` first"):
        core.resolve_model(None, None, str(tmp_path))
    with pytest.raises(core.AppError, match="no config.yaml beside it"):
        core.resolve_model(None, str(tmp_path / "w.pth"), str(runs))


def test_named_uploads_keep_repeated_names_apart(core):
    paths = ["/a/x.png", "/b/x.png", "/c/y.png", "/d/x.png"]
    assert [name for name, _ in core.named_uploads(paths)] == [
        "x.png",
        "x.png (2)",
        "y.png",
        "x.png (3)",
    ]
    assert [path for _, path in core.named_uploads(paths)] == paths


def test_shapes_val_images_listed_when_generated(core, tmp_path):
    assert core.shapes_val_images(str(tmp_path)) == []
    folder = tmp_path / "shapes" / "images" / "val"
    folder.mkdir(parents=True)
    for name in ("000002.jpg", "000000.jpg", "000001.jpg", "notes.txt"):
        (folder / name).write_bytes(b"")
    found = core.shapes_val_images(str(tmp_path), limit=2)
    assert [os.path.basename(p) for p in found] == ["000000.jpg", "000001.jpg"]


def test_bad_uploads_get_the_readers_reason_under_their_own_name(core, tmp_path):
    (tmp_path / "notes.png").write_text("not pixels")
    (tmp_path / "empty.jpg").write_bytes(b"")
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    expected = {
        "notes.png": "Cannot read image my notes.png: not an image (unknown format)",
        "empty.jpg": "Cannot read image empty.jpg: empty file (0 bytes)",
        "cut.png": "Cannot read image cut.png: truncated or corrupt",
    }
    for name, message in expected.items():
        shown = "my notes.png" if name == "notes.png" else name
        with pytest.raises(core.UnreadableImageError) as e:
            core.read_upload(str(tmp_path / name), shown)
        assert str(e.value).startswith(message) and str(tmp_path) not in str(e.value)


def test_predict_known_model_and_thresholds(core, served, image_file, tmp_path):
    (tmp_path / "broken.jpg").write_text("x")
    uploads = [("photo.png", str(image_file)), ("broken.jpg", str(tmp_path / "broken.jpg"))]
    results = served.predict(uploads)
    assert served.tasks == ["panoptic", "semantic"] and served.has_thresholds
    assert results[1].prediction is None and "broken.jpg: not an image" in results[1].error
    status = core.status_html(results)
    assert "Cannot read image broken.jpg: not an image" in status and "1 of 2" in status
    rows = views.segment_rows(results[0].prediction, "panoptic", served.thing_ids)
    assert [r.cells()[:4] for r in rows] == [[1, "stripes", "stuff", 100.0]]
    assert rows[0].score == pytest.approx(SEMANTIC_SHARE, abs=1e-3)
    # Above the queries' class probability (0.901) no query is kept; at the config's 0.8 again.
    assert QUERY_PROBABILITY < 0.95
    above = served.predict(uploads[:1], object_mask_threshold=0.95)
    assert above[0].prediction.segments == []
    again = served.predict(uploads[:1], object_mask_threshold=0.8, overlap_threshold=0.6)
    assert len(again[0].prediction.segments) == 1
    with pytest.raises(ValueError, match="overlap threshold must be in"):
        served.predict(uploads[:1], overlap_threshold=1.5)


def test_render_views_and_downloads(core, served, image_file, tmp_path):
    (result,) = served.predict([("photo.png", str(image_file))])
    view = core.render(served, result, "panoptic", str(tmp_path / "out"))
    assert view.overlay.shape == (40, 56, 3) and view.overlay.dtype == np.uint8
    assert np.abs(view.overlay.astype(int) - result.rgb).mean() > 10  # drawn over the image
    assert (view.class_map == STRIPES_COLOUR).all()
    assert [(e.name, e.area_percent) for e in view.legend] == [("stripes", 100.0)]
    assert view.table == [[1, "stripes", "stuff", 100.0, round(SEMANTIC_SHARE, 3)]]
    png, document = view.files
    assert os.path.basename(png) == "photo_panoptic_ids.png"
    with Image.open(png) as image:
        assert (rgb_to_ids(np.asarray(image)) == 1).all()
    saved = json.loads(Path(document).read_text())
    assert saved["image"] == "photo.png" and saved["task"] == "panoptic"
    assert saved["id_map"]["file"] == "photo_panoptic_ids.png"
    assert saved["settings"] == {"object_mask_threshold": 0.8, "overlap_threshold": 0.6}
    assert saved["segments"][0]["class"] == "stripes" and saved["segments"][0]["area"] == 40 * 56
    semantic = core.render(served, result, "semantic", str(tmp_path / "out"))
    with Image.open(semantic.files[0]) as image:
        assert (np.asarray(image) == SHAPES_NAMES.index("stripes")).all()
    assert "stripes (100.0%)" in core.legend_html(semantic.legend)
    with pytest.raises(ValueError, match="one of the model's"):
        core.render(served, result, "instance", str(tmp_path / "out"))


def _run_app(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "demo/app.py", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_app_without_a_model_says_what_to_run(tmp_path):
    proc = _run_app("--runs-dir", str(tmp_path))
    assert proc.returncode == 1
    assert "No trained model to serve" in proc.stderr and "make demo" in proc.stderr


def test_app_without_gradio_says_make_app(known, tmp_path):
    # A gradio that cannot be imported, found before any installed one.
    (tmp_path / "gradio").mkdir()
    (tmp_path / "gradio" / "__init__.py").write_text("raise ImportError('no gradio here')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = _run_app("--config-file", str(known[0]), "--weights", str(known[1]), env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "needs Gradio" in proc.stderr and "make app" in proc.stderr


def test_importing_the_package_and_app_core_never_imports_gradio():
    code = (
        "import sys, runpy; import mask_former, mask_former.inference.views; "
        "sys.path.insert(0, 'demo'); import app_core; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('gradio', 'fastapi')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
