# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""demo/demo.py and mask_former.inference.drawing: input expansion, errors, thresholds, drawings."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances
from detectron2.utils.visualizer import Visualizer
from tools_testing import load_script

from mask_former import get_mask_former_cfg, load_config
from mask_former.data import io
from mask_former.inference import Prediction, class_metadata
from mask_former.inference import drawing as drawing_module
from mask_former.inference import workers as workers_module
from tests.paths import REPO_ROOT

CONFIG = "configs/shapes/maskformer_panoptic_R18_bs8_1200.yaml"


def _write_images(folder: Path):
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a.png": (96, 128), "b.jpg": (130, 90), "c.PNG": (64, 64)}
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image: skipped by extension")
    return sizes


# The command-line run on a folder of images (and of bad ones, with --parallel) is tested in
# test_demo_inputs.py.


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
    assert demo.UnreadableImageError is io.UnreadableImageError  # one error for bad images
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG but truncated")
    with pytest.raises(ValueError, match="Cannot read image .*broken.png"):
        io.read_image(str(bad))
    skipped = []
    assert list(demo._readable_images([str(bad)], skipped)) == [] and skipped == [str(bad)]


def test_confidence_threshold_filters_instances_only(tmp_path):
    demo = _demo_module()
    parser = demo.get_parser()
    base = ["--config-file", str(REPO_ROOT / CONFIG), "--input", "x.png"]
    args = parser.parse_args(base + ["--confidence-threshold", "0.35"])
    # The panoptic threshold stays the config's (0.8): the original demo never changed it.
    assert demo.setup_cfg(args).MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD == 0.8
    opts = ["--opts", "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.3"]
    args = parser.parse_args(base + ["--confidence-threshold", "0.35"] + opts)
    assert demo.setup_cfg(args).MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD == 0.3
    help_text = " ".join(parser.format_help().split())
    assert "only filters the drawn instances" in help_text
    assert "does not change panoptic or semantic inference" in help_text

    instances = Instances((4, 4), scores=torch.tensor([0.9, 0.2, 0.5, 0.49]))
    prediction = Prediction("x", instances=instances, outputs={"instances": instances})
    kept = prediction.with_instances_above(0.5)
    assert kept.instances.scores.tolist() == pytest.approx([0.9, 0.5])
    assert kept.outputs["instances"].scores.tolist() == pytest.approx([0.9, 0.5])
    assert len(prediction.instances) == 4  # a copy: the prediction itself keeps them


@pytest.fixture(scope="module")
def stub_demo():
    """A PredictionVisualizer of the tiny config whose model is replaced by fixed outputs."""
    cfg = load_config(REPO_ROOT / CONFIG, device="cpu")
    visualization = drawing_module.PredictionVisualizer(cfg)
    h, w = 48, 64
    sem_seg = torch.zeros(6, h, w)
    sem_seg[0, :, : w // 2] = sem_seg[4, :, w // 2 :] = 1.0  # two regions
    masks = torch.zeros(1, h, w)
    masks[0, 10:30, 20:40] = 1.0
    instances = Instances((h, w), pred_masks=masks, scores=torch.tensor([0.9]))
    instances.pred_classes = torch.tensor([3])
    instances.pred_boxes = Boxes(torch.zeros(1, 4))
    outputs = {"sem_seg": sem_seg, "instances": instances}
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return visualization, outputs, image


class _Frames:
    """A stand-in for cv2.VideoCapture over a list of frames."""

    def __init__(self, frames):
        self.frames = list(frames)

    def isOpened(self):
        return bool(self.frames)

    def read(self):
        return True, self.frames.pop(0)


def _prediction(outputs):
    return Prediction("x", instances=outputs.get("instances"), outputs=dict(outputs))


def _drawings(visualization, image, outputs):
    """The image (``image`` as RGB) and video (``image`` as a BGR frame) drawings of ``outputs``."""
    visualization.predictor = lambda image, channel_order: _prediction(outputs)
    _, drawn = visualization.run_on_image(image)
    (frame,) = visualization.run_on_video(_Frames([image[:, :, ::-1].copy()]))
    return drawn.get_image(), frame[:, :, ::-1]


def test_sem_seg_and_instances_are_both_drawn(stub_demo):
    visualization, outputs, image = stub_demo
    both = _drawings(visualization, image, outputs)
    sem_seg_only = _drawings(visualization, image, {"sem_seg": outputs["sem_seg"]})
    instances_only = _drawings(visualization, image, {"instances": outputs["instances"]})
    for i, kind in enumerate(["image", "video"]):
        inside = (slice(10, 30), slice(20, 40))  # the instance's mask
        assert not np.array_equal(both[i][inside], sem_seg_only[i][inside]), kind
        assert not np.array_equal(both[i], instances_only[i]), kind
    # The image is drawn as the original demo draws it: sem_seg, then instances on top.
    visualizer = Visualizer(image, visualization.metadata)
    np.random.seed(0)  # the demo seeds the Visualizer's colours so
    visualizer.draw_sem_seg(outputs["sem_seg"].argmax(dim=0))
    expected = visualizer.draw_instance_predictions(outputs["instances"]).get_image()
    assert np.array_equal(both[0], expected)


def test_video_frames_keep_their_order_through_a_worker_pool(stub_demo):
    """With workers, frames are predicted a few at once and each is drawn with its own result."""
    visualization = stub_demo[0]

    def segment(frame, channel_order="BGR"):  # a sem_seg that depends on the frame
        assert channel_order == "BGR"  # video frames are OpenCV's
        labels = torch.as_tensor(frame[:, :, 0] > 127).long()
        sem_seg = torch.nn.functional.one_hot(labels, 6).permute(2, 0, 1).float()
        return _prediction({"sem_seg": sem_seg})

    class InlinePool(workers_module.ParallelPredictor):  # the pool's interface, no processes
        default_buffer_size = 3

        def __init__(self):
            self.queue, self.most_in_flight = [], 0

        def put(self, image, channel_order="RGB"):
            self.queue.append((image, channel_order))
            self.most_in_flight = max(self.most_in_flight, len(self.queue))

        def get(self):
            return segment(*self.queue.pop(0))

    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (32, 48, 3), dtype=np.uint8) for _ in range(7)]
    visualization.predictor = segment
    expected = list(visualization.run_on_video(_Frames(frames)))
    visualization.predictor = pool = InlinePool()
    drawn = list(visualization.run_on_video(_Frames(frames)))
    assert pool.most_in_flight == 3
    assert len(drawn) == 7 and all(np.array_equal(a, b) for a, b in zip(drawn, expected))


def test_exactly_one_source_is_required():
    demo = _demo_module()
    with pytest.raises(SystemExit):
        demo.main(["--input", "a.png", "--webcam"])
    with pytest.raises(SystemExit):
        demo.main([])


def test_metadata_falls_back_to_generic_class_names(monkeypatch):
    warned = []
    monkeypatch.setattr(
        "mask_former.inference.results.logger.warning", lambda *a: warned.append(a[0] % a[1:])
    )
    cfg = get_cfg()
    cfg.DATASETS.TEST = ("_test_demo_unregistered",)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    generic = class_metadata(cfg)
    assert generic.stuff_classes == generic.thing_classes == ["class 0", "class 1", "class 2"]
    assert len(warned) == 1
    assert "'_test_demo_unregistered' is not registered" in warned[0]
    assert "using generic names" in warned[0]
    # Precedence: the checkpoint's class names come before generic ones...
    saved = {"stuff_classes": ["x", "y", "z"]}
    assert class_metadata(cfg, saved, "model.pth").stuff_classes == ["x", "y", "z"]
    assert len(warned) == 1
    MetadataCatalog.get("_test_demo_named").set(stuff_classes=["sky", "road", "car"])
    cfg.DATASETS.TEST = ("_test_demo_named",)
    assert class_metadata(cfg).stuff_classes == ["sky", "road", "car"]
    # ... and a registered test dataset's before the checkpoint's.
    assert class_metadata(cfg, saved, "model.pth").stuff_classes == ["sky", "road", "car"]
    assert len(warned) == 1  # no warning for a named set
    MetadataCatalog.remove("_test_demo_named")


def test_output_names(tmp_path):
    demo = _demo_module()
    out = str(tmp_path / "vis")
    image = str(tmp_path / "a.jpg")
    Path(image).write_bytes(b"")
    assert demo.output_paths(out + ".png", [image], [image]) == [out + ".png"]
    assert demo.output_paths(out, [image], [image]) == [os.path.join(out, "a.jpg")]
    assert os.path.isdir(out)
    many = [image, str(tmp_path / "b.png")]
    assert demo.output_paths(out, many, many) == [os.path.join(out, n) for n in ("a.jpg", "b.png")]


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
    visualization = demo.PredictionVisualizer(demo.setup_cfg(args))
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


@pytest.mark.parametrize("cuda", [True, False], ids=["with_cuda", "without_cuda"])
def test_parallel_workers_one_per_gpu_or_two_on_the_cpu(monkeypatch, cuda):
    """`--parallel` without N, and the workers' devices (CUDA monkeypatched: no GPU is used)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3 if cuda else 0)
    cfg = get_mask_former_cfg()
    cfg.MODEL.DEVICE = "cuda"
    cfg.freeze()
    assert workers_module.default_num_workers(cfg) == (3 if cuda else 2)
    devices = [c.MODEL.DEVICE for c in workers_module.worker_configs(cfg, 4)]
    assert devices == (["cuda:0", "cuda:1", "cuda:2", "cuda:0"] if cuda else ["cuda"] * 4)
    assert cfg.MODEL.DEVICE == "cuda"  # the caller's config is left alone
    cpu = cfg.clone()
    cpu.defrost()
    cpu.MODEL.DEVICE = "cpu"
    assert workers_module.default_num_workers(cpu) == 2  # a CPU config, GPUs or not
    assert [c.MODEL.DEVICE for c in workers_module.worker_configs(cpu, 2)] == ["cpu"] * 2
