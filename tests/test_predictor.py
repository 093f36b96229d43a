# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
mask_former.Predictor gives what the demo's predictor (detectron2's DefaultPredictor, as
demo/predictor.py's VisualizationDemo builds it) gives on the same images: for paths, NumPy
arrays and PIL images of different sizes, several per model call; predict_dir streams a folder
and reports an unreadable file instead of stopping.
"""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from mask_former import Predictor, get_mask_former_cfg
from mask_former.data.shapes_generator import generate_split
from tests.paths import REPO_ROOT
from tests.tools.tools_testing import load_script

PANOPTIC_CONFIG = REPO_ROOT / "configs/shapes/maskformer_panoptic_R18_bs8_1200.yaml"
BASELINE_CONFIG = REPO_ROOT / "configs/shapes/per_pixel_baseline_R18_bs8_1200.yaml"
# A shortest-edge resize (80 px, at most 120) so the outputs are resized back to each image's
# size; a zero object-mask threshold so that an untrained model gives panoptic segments.
OPTS = [
    "MODEL.DEVICE", "cpu",
    "INPUT.MIN_SIZE_TEST", "80",
    "INPUT.MAX_SIZE_TEST", "120",
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0",
    "MODEL.MASK_FORMER.TEST.INSTANCE_ON", "True",
]  # fmt: skip
SIZES = [(96, 128), (130, 90), (64, 64), (100, 70)]


def _cfg(config: Path, weights: str, opts=OPTS):
    cfg = get_mask_former_cfg()
    cfg.merge_from_file(str(config))
    cfg.merge_from_list(list(opts) + ["MODEL.WEIGHTS", weights])
    cfg.freeze()
    return cfg


def _save_seeded_weights(config: Path, path: Path, opts=OPTS) -> str:
    """Weights of a seeded, untrained model, so both predictors load the same ones."""
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(_cfg(config, "", opts))
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def _images(folder: Path):
    """RGB uint8 images of SIZES; the first saved as PNG, the last as an EXIF-rotated JPEG."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in SIZES]
    folder.mkdir(exist_ok=True)
    Image.fromarray(images[0]).save(folder / "a.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: shown upright after a 90 degree turn
    Image.fromarray(images[3]).save(folder / "d.jpg", exif=exif, quality=95)
    return images


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predictor")
    weights = _save_seeded_weights(PANOPTIC_CONFIG, tmp / "weights.pth")
    demo = load_script("demo/predictor.py").VisualizationDemo(_cfg(PANOPTIC_CONFIG, weights))
    images = _images(tmp / "images")
    return {"tmp": tmp, "weights": weights, "reference": demo.predictor, "images": images}


def _assert_same(result, expected):
    """A Prediction equals the demo predictor's output dict (bitwise: same computation)."""
    assert torch.equal(result.outputs["sem_seg"], expected["sem_seg"])
    assert torch.equal(result.semantic, expected["sem_seg"].argmax(0))
    ids, segments_info = expected["panoptic_seg"]
    assert torch.equal(result.panoptic, ids)
    assert [(s.id, s.category_id, s.isthing) for s in result.segments] == [
        (s["id"], s["category_id"], s["isthing"]) for s in segments_info
    ]
    instances = expected["instances"]
    assert torch.equal(result.instances.pred_masks, instances.pred_masks)
    assert torch.equal(result.instances.scores, instances.scores)
    assert torch.equal(result.instances.pred_classes, instances.pred_classes)
    assert (result.height, result.width) == tuple(expected["sem_seg"].shape[-2:])


def test_paths_arrays_and_pil_images_of_different_sizes_equal_the_demo(setup):
    demo_module = load_script("demo/demo.py")
    images, folder = setup["images"], setup["tmp"] / "images"
    predictor = Predictor(PANOPTIC_CONFIG, setup["weights"], opts=OPTS, batch_size=3)
    inputs = [
        str(folder / "a.png"),  # a path
        images[1],  # an RGB array
        Image.fromarray(images[2]),  # a PIL image
        folder / "d.jpg",  # a pathlib path of an EXIF-rotated JPEG
    ]
    # Two model calls (3 + 1 images); each image alone in its padded-size group.
    results = predictor.predict(inputs)
    expected = [
        setup["reference"](demo_module.load_image(str(folder / "a.png"))),
        setup["reference"](images[1][:, :, ::-1].copy()),  # the demo works in BGR
        setup["reference"](images[2][:, :, ::-1].copy()),
        setup["reference"](demo_module.load_image(str(folder / "d.jpg"))),
    ]
    for result, want in zip(results, expected):
        _assert_same(result, want)
    assert (results[3].height, results[3].width) == (70, 100)  # turned upright
    sources = [str(inputs[0]), "<input 1>", "<input 2>", str(inputs[3])]
    assert [r.source for r in results] == sources


def test_class_names_and_bgr_arrays(setup):
    predictor = Predictor(PANOPTIC_CONFIG, setup["weights"], opts=OPTS)
    rgb = setup["images"][1]
    result = predictor(rgb)
    names = ["circle", "square", "triangle", "gradient", "stripes", "blotches"]
    assert result.class_names == predictor.class_names == names
    assert result.segments and all(s.class_name == names[s.category_id] for s in result.segments)
    assert all(s.area == int((result.panoptic == s.id).sum()) for s in result.segments)
    assert result.instance_class_names == [names[c] for c in result.instances.pred_classes]
    assert result.semantic.dtype == torch.int64 and result.semantic.device.type == "cpu"
    bgr = predictor(rgb[:, :, ::-1].copy(), channel_order="BGR")
    assert torch.equal(bgr.outputs["sem_seg"], result.outputs["sem_seg"])
    with pytest.raises(TypeError, match="uint8"):
        predictor(rgb.astype(np.float32))


def test_same_size_images_batched_together_match_one_by_one(setup):
    predictor = Predictor(PANOPTIC_CONFIG, setup["weights"], opts=OPTS)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (72, 96, 3), dtype=np.uint8) for _ in range(3)]
    together = predictor.predict(images, batch_size=3)  # one group of 3 in the model
    for image, result in zip(images, together):
        alone = setup["reference"](image[:, :, ::-1].copy())
        # Same computation except the batch dimension: equal up to float rounding.
        torch.testing.assert_close(result.outputs["sem_seg"], alone["sem_seg"], atol=1e-5, rtol=0)


def test_predict_dir_streams_and_reports_a_bad_file(setup, tmp_path, caplog):
    demo_module = load_script("demo/demo.py")
    folder = tmp_path / "dir"
    folder.mkdir()
    for name in ("b.PNG", "c.jpg"):
        cv2.imwrite(str(folder / name), setup["images"][2][:, :, ::-1])
    (folder / "bad.png").write_bytes(b"\x89PNG but truncated")
    (folder / "notes.txt").write_text("not an image: not listed")
    predictor = Predictor(PANOPTIC_CONFIG, setup["weights"], opts=OPTS, batch_size=2)
    with caplog.at_level(logging.WARNING, logger="mask_former.predictor"):
        results = list(predictor.predict_dir(folder, progress=False))
    assert [Path(r.source).name for r in results] == ["b.PNG", "bad.png", "c.jpg"]
    bad = results[1]
    assert not bad.ok and "bad.png" in bad.error and bad.semantic is None
    assert "bad.png" in caplog.text
    for result in (results[0], results[2]):
        assert result.ok
        _assert_same(result, setup["reference"](demo_module.load_image(result.source)))


def test_per_pixel_baseline_batches_by_image_size(tmp_path):
    opts = ["MODEL.DEVICE", "cpu"]
    weights = _save_seeded_weights(BASELINE_CONFIG, tmp_path / "baseline.pth", opts)
    demo = load_script("demo/predictor.py").VisualizationDemo(_cfg(BASELINE_CONFIG, weights, opts))
    reference = demo.predictor
    predictor = Predictor(BASELINE_CONFIG, weights, opts=opts)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(64, 96), (96, 64)]]
    for image, result in zip(images, predictor.predict(images)):
        expected = reference(image[:, :, ::-1].copy())
        assert torch.equal(result.outputs["sem_seg"], expected["sem_seg"])
        assert result.panoptic is None and result.instances is None


def test_the_readme_example_runs(tmp_path):
    """The "Python API" example of README.md, in a folder laid out like the repository."""
    section = (REPO_ROOT / "README.md").read_text().split("## Python API", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    (tmp_path / "configs").symlink_to(REPO_ROOT / "configs")
    main_config = REPO_ROOT / "configs/shapes/maskformer_panoptic_R18_main.yaml"
    (tmp_path / "output/demo_test").mkdir(parents=True)
    _save_seeded_weights(
        main_config, tmp_path / "output/demo_test/model_final.pth", ["MODEL.DEVICE", "cpu"]
    )
    generate_split(str(tmp_path / "datasets/shapes"), "val", seed=5, num_images=3)
    (tmp_path / "datasets/shapes/images/val/000002.jpg").write_bytes(b"")  # reported, not fatal
    (tmp_path / "example.py").write_text(example)
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "datasets")}
    result = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Cannot read image datasets/shapes/images/val/000002.jpg: empty file" in result.stdout
    assert "torch.Size([" in result.stdout
