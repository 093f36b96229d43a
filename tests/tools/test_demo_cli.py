# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""demo/demo.py: drawings for a directory of images, input expansion, errors, thresholds."""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Instances
from tools_testing import REPO_ROOT, load_script

import mask_former
from mask_former import get_mask_former_cfg

CONFIG = "configs/shapes/maskformer_panoptic_R18_bs8_1200.yaml"


def _write_images(folder: Path):
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a.png": (96, 128), "b.jpg": (130, 90), "c.PNG": (64, 64)}
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image: skipped by extension")
    return sizes


def _random_checkpoint(path: Path):
    cfg = get_mask_former_cfg()
    cfg.merge_from_file(str(REPO_ROOT / CONFIG))
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, path)


def test_demo_writes_a_drawing_per_image_of_a_directory(tmp_path):
    sizes = _write_images(tmp_path / "in")
    _random_checkpoint(tmp_path / "model.pth")
    # The subprocess imports the same mask_former as this test.
    env = dict(os.environ, PYTHONPATH=str(Path(mask_former.__file__).parents[1]))
    command = [
        sys.executable, "demo/demo.py", "--config-file", CONFIG,
        "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
        # 0: keep every query, so a random model still draws segments.
        "--confidence-threshold", "0",
        "--opts", "MODEL.WEIGHTS", str(tmp_path / "model.pth"), "MODEL.DEVICE", "cpu",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "out")) == sorted(sizes)
    for name, (h, w) in sizes.items():
        drawing = cv2.imread(str(tmp_path / "out" / name))
        original = cv2.imread(str(tmp_path / "in" / name))
        assert drawing.shape == (h, w, 3)
        # Segments are painted over the image.
        assert np.abs(drawing.astype(int) - original.astype(int)).mean() > 5


def _demo_module():
    return load_script("demo/demo.py")


def test_inputs_expand_from_files_folders_and_globs(tmp_path):
    demo = _demo_module()
    _write_images(tmp_path / "in")
    folder = [os.path.basename(p) for p in demo.expand_inputs([str(tmp_path / "in")])]
    assert folder == ["a.png", "b.jpg", "c.PNG"]
    globbed = demo.expand_inputs([str(tmp_path / "in" / "*.png"), str(tmp_path / "in" / "b.jpg")])
    assert [os.path.basename(p) for p in globbed] == ["a.png", "b.jpg"]
    with pytest.raises(FileNotFoundError, match="missing/\\*.jpg"):
        demo.expand_inputs([str(tmp_path / "missing" / "*.jpg")])


def test_unreadable_image_error_names_the_file(tmp_path):
    demo = _demo_module()
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG but truncated")
    with pytest.raises(ValueError, match="Cannot read image .*broken.png"):
        demo.load_image(str(bad))


def test_confidence_threshold_is_applied(tmp_path):
    demo = _demo_module()
    parser = demo.get_parser()
    args = parser.parse_args(["--config-file", str(REPO_ROOT / CONFIG), "--input", "x.png",
                              "--confidence-threshold", "0.35"])  # fmt: skip
    assert demo.setup_cfg(args).MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD == 0.35
    args = parser.parse_args(["--config-file", str(REPO_ROOT / CONFIG), "--input", "x.png"])
    assert demo.setup_cfg(args).MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD == 0.8  # config's

    predictor = load_script("demo/predictor.py")
    instances = Instances((4, 4), scores=torch.tensor([0.9, 0.2, 0.5, 0.49]))
    kept = predictor._filter_instances({"instances": instances}, 0.5)["instances"]
    assert kept.scores.tolist() == pytest.approx([0.9, 0.5])


def test_exactly_one_source_is_required():
    demo = _demo_module()
    with pytest.raises(SystemExit):
        demo.main(["--input", "a.png", "--webcam"])
    with pytest.raises(SystemExit):
        demo.main([])


def test_metadata_falls_back_to_generic_class_names():
    predictor = load_script("demo/predictor.py")
    cfg = get_cfg()
    cfg.DATASETS.TEST = ("_test_demo_unregistered",)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    generic = predictor.demo_metadata(cfg)
    assert generic.stuff_classes == generic.thing_classes == ["class 0", "class 1", "class 2"]
    MetadataCatalog.get("_test_demo_named").set(stuff_classes=["sky", "road", "car"])
    cfg.DATASETS.TEST = ("_test_demo_named",)
    assert predictor.demo_metadata(cfg).stuff_classes == ["sky", "road", "car"]
    MetadataCatalog.remove("_test_demo_named")


def test_output_names(tmp_path):
    demo = _demo_module()
    out = str(tmp_path / "vis")
    assert demo.output_file(out + ".png", "in/a.jpg", many=False) == out + ".png"
    assert demo.output_file(out, "in/a.jpg", many=False) == os.path.join(out, "a.jpg")
    assert os.path.isdir(out)
    assert demo.output_file(out, "in/b.png", many=True) == os.path.join(out, "b.png")


def test_video_frames_are_drawn_into_a_video(tmp_path):
    demo = _demo_module()
    writer = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5,
                             (96, 64))  # fmt: skip
    rng = np.random.default_rng(0)
    for _ in range(3):
        writer.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    writer.release()
    args = demo.get_parser().parse_args(
        ["--config-file", str(REPO_ROOT / CONFIG), "--video-input", str(tmp_path / "clip.mp4"),
         "--confidence-threshold", "0", "--opts", "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"]
    )  # fmt: skip
    torch.manual_seed(0)
    visualization = demo.VisualizationDemo(demo.setup_cfg(args))
    out = tmp_path / "out"
    out.mkdir()
    demo.run_on_video(visualization, str(tmp_path / "clip.mp4"), str(out))
    (written,) = os.listdir(out)  # no temporary file left
    video = cv2.VideoCapture(str(out / written))
    assert written.startswith("clip.")
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert (video.get(cv2.CAP_PROP_FRAME_WIDTH), video.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (96, 64)
    video.release()
    with pytest.raises(ValueError, match="Cannot read video .*missing.mp4"):
        demo.run_on_video(visualization, str(tmp_path / "missing.mp4"), str(out))
