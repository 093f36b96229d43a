# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
mask_former.Predictor (mask_former.inference) against references built here: detectron2's own
DefaultPredictor on pixel arrays the test knows (its preprocessing is the one to keep), files
whose upright 8-bit pixels the test computes itself (an EXIF-rotated PNG, a 16-bit PNG), the
errors="raise"/"skip" choice of predict and predict_dir, and worker processes giving the
in-process results.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.engine import DefaultPredictor
from PIL import Image

from mask_former import Predictor, load_config
from mask_former.data.io import UnreadableImageError
from mask_former.data.shapes_generator import generate_split
from mask_former.inference import ParallelPredictor, WorkerError, image_to_rgb
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
EXIF_ORIENTATION = 0x0112


def _cfg(config: Path, weights: str, opts=OPTS):
    return load_config(config, list(opts) + ["MODEL.WEIGHTS", weights], cpu_fallback=False)


def _save_seeded_weights(config: Path, path: Path, opts=OPTS) -> str:
    """Weights of a seeded, untrained model, so both predictors load the same ones."""
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(_cfg(config, "", opts))
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def _images(folder: Path):
    """
    RGB uint8 images of SIZES; the first saved as a PNG, the last as a PNG stored turned a
    quarter left with EXIF orientation 6 (view turned a quarter right: upright again).
    """
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in SIZES]
    folder.mkdir(exist_ok=True)
    Image.fromarray(images[0]).save(folder / "a.png")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(np.rot90(images[3]).copy()).save(folder / "d.png", exif=exif)
    return images


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predictor")
    weights = _save_seeded_weights(PANOPTIC_CONFIG, tmp / "weights.pth")
    reference = DefaultPredictor(_cfg(PANOPTIC_CONFIG, weights))  # detectron2's, BGR input
    images = _images(tmp / "images")
    predictor = Predictor(PANOPTIC_CONFIG, weights, opts=OPTS, batch_size=3, precision="float32")
    return {"tmp": tmp, "weights": weights, "reference": reference, "images": images,
            "predictor": predictor}  # fmt: skip


def _reference(setup, rgb: np.ndarray):
    """DefaultPredictor's outputs for an RGB array the test knows."""
    return setup["reference"](np.ascontiguousarray(rgb[:, :, ::-1]))


def _assert_same(result, expected):
    """A Prediction equals DefaultPredictor's output dict (bitwise: same computation)."""
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


def test_paths_arrays_and_pil_images_equal_default_predictor(setup):
    images, folder = setup["images"], setup["tmp"] / "images"
    inputs = [
        str(folder / "a.png"),  # a path
        images[1],  # an RGB array
        Image.fromarray(images[2]),  # a PIL image
        folder / "d.png",  # a pathlib path of an EXIF-rotated PNG
    ]
    # The rotated file reads as the upright pixels the test made (lossless PNG).
    assert np.array_equal(image_to_rgb(inputs[3]), images[3])
    # Two model calls (3 + 1 images); each image alone in its padded-size group.
    results = setup["predictor"].predict(inputs)
    for result, rgb in zip(results, images):
        _assert_same(result, _reference(setup, rgb))
    assert (results[3].height, results[3].width) == (100, 70)  # turned upright
    sources = [str(inputs[0]), "<input 1>", "<input 2>", str(inputs[3])]
    assert [r.source for r in results] == sources


def test_16_bit_png_is_scaled_to_8_bits(setup, tmp_path):
    rng = np.random.default_rng(5)
    levels = rng.integers(0, 65536, (60, 80), dtype=np.uint16)
    levels[0, :3] = [0, 65535, 128]  # the ends of the range, and a value that rounds to 0
    Image.fromarray(levels).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as stored:
        assert stored.mode.startswith("I;16")  # really stored with 16 bits
    grey = np.array([round(int(v) / 257) for v in levels.ravel()], np.uint8).reshape(60, 80)
    assert grey[0, :3].tolist() == [0, 255, 0]
    expected = np.repeat(grey[:, :, None], 3, axis=2)
    assert np.array_equal(image_to_rgb(tmp_path / "deep.png"), expected)
    result = setup["predictor"](tmp_path / "deep.png")
    _assert_same(result, _reference(setup, expected))


def test_class_names_and_bgr_arrays(setup):
    predictor = setup["predictor"]
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
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (72, 96, 3), dtype=np.uint8) for _ in range(3)]
    together = setup["predictor"].predict(images, batch_size=3)  # one group of 3 in the model
    for image, result in zip(images, together):
        alone = _reference(setup, image)
        # Same computation except the batch dimension: equal up to float rounding.
        torch.testing.assert_close(result.outputs["sem_seg"], alone["sem_seg"], atol=1e-5, rtol=0)


def _count_model_calls(predictor, monkeypatch):
    calls = []
    run = predictor._run
    monkeypatch.setattr(predictor, "_run", lambda inputs: calls.append(len(inputs)) or run(inputs))
    return calls


def _bad_folder(setup, folder: Path) -> Path:
    """b.PNG, bad.png (truncated), c.bmp and notes.txt (not listed) in a new ``folder``."""
    folder.mkdir()
    for name in ("b.PNG", "c.bmp"):  # lossless: their pixels are images[2]
        cv2.imwrite(str(folder / name), setup["images"][2][:, :, ::-1])
    png = (folder / "b.PNG").read_bytes()
    (folder / "bad.png").write_bytes(png[: len(png) // 2])
    (folder / "notes.txt").write_text("not an image: not listed")
    return folder


def test_predict_raises_before_any_model_call_or_skips(setup, tmp_path, monkeypatch):
    folder = _bad_folder(setup, tmp_path / "dir")
    predictor = setup["predictor"]
    calls = _count_model_calls(predictor, monkeypatch)
    inputs = [folder / "b.PNG", folder / "bad.png", setup["images"][1]]
    with pytest.raises(UnreadableImageError, match="bad.png: truncated or corrupt") as error:
        predictor.predict(inputs)  # errors="raise", the default
    assert error.value.path == str(folder / "bad.png") and calls == []
    results = predictor.predict(inputs, errors="skip", batch_size=3)
    assert calls == [2]  # the two readable images, in one call
    assert [r.ok for r in results] == [True, False, True]
    assert "bad.png" in results[1].error and results[1].semantic is None
    assert results[1].source == str(folder / "bad.png")
    _assert_same(results[0], _reference(setup, setup["images"][2]))
    _assert_same(results[2], _reference(setup, setup["images"][1]))
    with pytest.raises(ValueError, match="errors must be one of"):
        predictor.predict(inputs, errors="ignore")


def test_predict_dir_skips_or_raises(setup, tmp_path, monkeypatch):
    folder = _bad_folder(setup, tmp_path / "dir")
    predictor = setup["predictor"]
    logged = []
    monkeypatch.setattr(
        "mask_former.inference.predictor.logger.warning", lambda *a: logged.append(a[0] % a[1:])
    )
    results = list(predictor.predict_dir(folder, progress=False, batch_size=2))  # "skip"
    assert [Path(r.source).name for r in results] == ["b.PNG", "bad.png", "c.bmp"]
    bad = results[1]
    assert not bad.ok and "bad.png" in bad.error and bad.semantic is None
    assert len(logged) == 1
    assert logged[0].startswith(f"skipped {folder / 'bad.png'}: truncated or corrupt")
    expected = _reference(setup, setup["images"][2])
    for result in (results[0], results[2]):
        assert result.ok
        _assert_same(result, expected)
    calls = _count_model_calls(predictor, monkeypatch)
    stream = predictor.predict_dir(folder, progress=False, batch_size=2, errors="raise")
    with pytest.raises(UnreadableImageError, match="bad.png"):
        next(stream)  # bad.png is in the first batch: no model call
    assert calls == []


def test_per_pixel_baseline_batches_by_image_size(tmp_path):
    opts = ["MODEL.DEVICE", "cpu"]
    weights = _save_seeded_weights(BASELINE_CONFIG, tmp_path / "baseline.pth", opts)
    reference = DefaultPredictor(_cfg(BASELINE_CONFIG, weights, opts))
    predictor = Predictor(BASELINE_CONFIG, weights, opts=opts, precision="float32")
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(64, 96), (96, 64)]]
    for image, result in zip(images, predictor.predict(images)):
        expected = reference(image[:, :, ::-1].copy())
        assert torch.equal(result.outputs["sem_seg"], expected["sem_seg"])
        assert result.panoptic is None and result.instances is None


def test_two_worker_processes_give_the_in_process_predictions(setup):
    cfg = _cfg(PANOPTIC_CONFIG, setup["weights"])
    images = setup["images"]
    threads = torch.get_num_threads()
    # One thread per model everywhere (each worker gets 2 // 2), so that sums are split alike.
    torch.set_num_threads(2)
    try:
        with ParallelPredictor(cfg, 2) as pool:
            assert pool.num_workers == 2
            for rgb in images:
                pool.put(rgb)
            pool.put(images[0][:, :, ::-1].copy(), "BGR")
            results = [pool.get() for _ in range(len(images) + 1)]  # in the order put
            assert len(pool) == 0
            pool.put(images[1].astype(np.float32))  # fails in the worker
            with pytest.raises(WorkerError, match="failed on image 5:(.|\n)*uint8"):
                pool.get()
            pool.put(images[2])  # the workers go on
            assert torch.equal(pool.get().outputs["sem_seg"], results[2].outputs["sem_seg"])
            pool.put(images[0])
            pool.discard_pending()  # its result is dropped when it comes back
            assert len(pool) == 0
        assert pool.num_workers == 0  # shut down
        torch.set_num_threads(1)
        expected = [_reference(setup, rgb) for rgb in images + [images[0]]]
    finally:
        torch.set_num_threads(threads)
    for result, want in zip(results, expected):
        _assert_same(result, want)
        assert result.outputs["sem_seg"].device.type == "cpu"


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


def test_predictor_and_demo_infer_in_auto_precision_unless_told(setup):
    # "auto" (bfloat16 where the CPU computes it natively) for the Predictor and the demo;
    # precision=None keeps the config's value (float32, evaluation's default); opts win.
    weights = setup["weights"]
    precision_of = lambda p: p.cfg.MODEL.MASK_FORMER.TEST.PRECISION  # noqa: E731
    assert precision_of(Predictor(PANOPTIC_CONFIG, weights)) == "auto"
    assert precision_of(Predictor(PANOPTIC_CONFIG, weights, precision=None)) == "float32"
    key = "MODEL.MASK_FORMER.TEST.PRECISION"
    assert precision_of(Predictor(PANOPTIC_CONFIG, weights, opts=[key, "bfloat16"])) == "bfloat16"
    demo = load_script("demo/demo.py")
    argv = ["--config-file", str(PANOPTIC_CONFIG), "--input", "x.png", "--opts"]
    assert demo.setup_cfg(demo.get_parser().parse_args(argv)).MODEL.MASK_FORMER.TEST.PRECISION == (
        "auto"
    )
    told = demo.setup_cfg(demo.get_parser().parse_args(argv + [key, "float32"]))
    assert told.MODEL.MASK_FORMER.TEST.PRECISION == "float32"
