# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
demo/demo.py on awkward inputs: unreadable files are skipped with one line each and counted in
the exit status; odd image kinds are drawn at their (upright) size; output names never clash;
``--parallel 2`` draws exactly what one process draws.
"""

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.utils.visualizer import Visualizer
from PIL import Image
from tools_testing import load_script

import mask_former
from mask_former import load_config
from mask_former.data.io import read_image
from tests.paths import REPO_ROOT

CONFIG = "configs/shapes/maskformer_panoptic_R18_bs8_1200.yaml"
H, W = 56, 40  # most test images are this size (upright), so the model meets few sizes
# Inputs that are not images, and the reason the demo gives for each.
BAD = {"cut.png": "truncated or corrupt", "empty.jpg": "empty file", "notes.jpg": "not an image"}


def _exif_rotated(path: Path, rng: np.random.Generator) -> None:
    """Stored W x H (landscape) with EXIF orientation 6: upright it is H x W like the rest."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.fromarray(rng.integers(0, 255, (W, H, 3), dtype=np.uint8)).save(path, exif=exif)


def _write_images(folder: Path) -> Dict[str, Tuple[int, int]]:
    """Good images of several kinds in ``folder``; returns name -> upright (height, width)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb[:, :, 0], "L").save(folder / "gray.png")
    rgba = rng.integers(0, 255, (H, W, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    ramp = np.linspace(0, 65535, H * W).reshape(H, W).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "deep.png")  # 16-bit grey ("I;16")
    _exif_rotated(folder / "exif.jpg", rng)
    Image.fromarray(rgb[:1, :1]).save(folder / "dot.png")
    Image.fromarray(rng.integers(0, 255, (3, 2000, 3), dtype=np.uint8)).save(folder / "strip.png")
    Image.fromarray(rgb).save(folder / "a.jpg")
    Image.fromarray(rgb).save(folder / "scan.bmp")  # a format matplotlib cannot write
    Image.fromarray(rgb[::-1]).save(folder / "a.png")  # same stem as a.jpg
    sizes = {name: (H, W) for name in ("gray.png", "rgba.png", "cmyk.jpg", "deep.png")}
    sizes.update({"exif.jpg": (H, W), "a.jpg": (H, W), "a.png": (H, W), "scan.bmp": (H, W)})
    sizes.update({"dot.png": (1, 1), "strip.png": (3, 2000)})
    return sizes


def _write_bad_files(folder: Path) -> None:
    png = (folder / "a.png").read_bytes()
    (folder / "cut.png").write_bytes(png[: len(png) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image, despite its name\n")


def _demo():
    return load_script("demo/demo.py")


def test_odd_images_load_upright_as_8_bit_rgb(tmp_path):
    """The demo reads its inputs with mask_former.data.io.read_image, in RGB."""
    sizes = _write_images(tmp_path / "in")
    assert _demo().read_image is read_image
    for name, (h, w) in sizes.items():
        image = read_image(str(tmp_path / "in" / name), "RGB")
        assert image.shape == (h, w, 3) and image.dtype == np.uint8, name
    deep = read_image(str(tmp_path / "in" / "deep.png"), "RGB")
    # 16 bits scaled to 8, not clipped: the ramp spans the whole range.
    assert deep.min() == 0 and deep.max() == 255 and 120 < deep.mean() < 135
    gray = read_image(str(tmp_path / "in" / "gray.png"), "RGB")
    assert (gray[:, :, 0] == gray[:, :, 2]).all()


def test_unreadable_files_say_why(tmp_path):
    _write_images(tmp_path / "in")
    _write_bad_files(tmp_path / "in")
    demo = _demo()
    for name, reason in BAD.items():
        with pytest.raises(demo.UnreadableImageError, match=f"{name}: {reason}") as error:
            read_image(str(tmp_path / "in" / name), "RGB")
        assert error.value.reason.startswith(reason)
        assert error.value.__cause__ is None  # one line, no chained traceback
    # The demo's reading loop skips and lists them, and reads the others.
    paths = [str(tmp_path / "in" / name) for name in ["a.png", *BAD]]
    skipped = []
    read = list(demo._readable_images(paths, skipped))
    assert [index for index, _ in read] == [0] and skipped == paths[1:]


def test_drawing_names_never_clash():
    names = _demo().drawing_names
    inputs = ["x/a.png", "x/a.jpg", "y/a.png", "z/A.PNG", "z/a-2.png", "z/scan", "z/scan.png"]
    # The first of the same name keeps it; -2 is taken by z/a-2.png, so y/a.png gets -3.
    assert names(inputs) == ["a.png", "a.jpg", "a-3.png", "A-4.PNG", "a-2.png", "scan.png",
                             "scan-2.png"]  # fmt: skip
    assert len({n.casefold() for n in names(inputs)}) == len(inputs)


def test_output_paths_make_the_folder_or_name_the_file(tmp_path):
    demo = _demo()
    image = tmp_path / "a.jpg"
    image.write_bytes(b"")
    out = tmp_path / "new" / "nested"
    assert demo.output_paths(str(out), [str(image)], [str(image)]) == [str(out / "a.jpg")]
    assert out.is_dir()
    single = str(tmp_path / "other" / "vis.png")
    assert demo.output_paths(single, [str(image)], [str(image)]) == [single]
    # A folder given as the input always means an output folder.
    assert demo.output_paths(single, [str(tmp_path)], [str(image)]) == [
        os.path.join(single, "a.jpg")
    ]
    with pytest.raises(demo.DemoError, match="not a folder"):
        demo.output_paths(str(image), [str(tmp_path)], [str(image), str(image) + "2"])


def _random_checkpoint(path: Path) -> None:
    cfg = load_config(REPO_ROOT / CONFIG, device="cpu")
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, path)


def _start_demo(
    root: Path, inputs: List[str], output: Path, threads: int, *extra: str
) -> subprocess.Popen:
    # The subprocess imports the same mask_former as this test.
    env = dict(os.environ, PYTHONPATH=str(Path(mask_former.__file__).parents[1]))
    env["OMP_NUM_THREADS"] = str(threads)
    command = [
        sys.executable, "demo/demo.py", "--config-file", CONFIG,
        "--input", *inputs, "--output", str(output), *extra,
        # Threshold 0: keep every query, so a random model still draws segments; float32 (the
        # demo runs "auto" otherwise): the drawings are compared with DefaultPredictor's.
        "--opts", "MODEL.WEIGHTS", str(root / "model.pth"), "MODEL.DEVICE", "cpu",
        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0",
        "MODEL.MASK_FORMER.TEST.PRECISION", "float32",
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """
    The same inputs (a folder of good and bad images, and a second folder with a clashing
    name) drawn twice at once into new folders: in one process with folder inputs, and by 2
    workers with glob inputs. Returns {"one"/"two": (exit status, stderr, output folder)},
    the inputs' folder and the expected drawings' sizes by name.
    """
    root = tmp_path_factory.mktemp("demo_inputs")
    sizes = _write_images(root / "in")
    _write_bad_files(root / "in")
    (root / "more").mkdir()
    Image.open(root / "in" / "gray.png").save(root / "more" / "a.png")
    Image.open(root / "in" / "gray.png").save(root / "more" / "c.PNG")
    (root / "more" / "notes.txt").write_text("not an image: a folder input skips it by name")
    sizes.update({"a-2.png": (H, W), "c.PNG": (H, W)})  # more/a.png comes after in/a.png
    _random_checkpoint(root / "model.pth")
    outputs = {"one": root / "out" / "one", "two": root / "out" / "two"}
    # One thread per model either way: results then do not hinge on how a sum is split
    # among threads, which decides near-ties between segments of a random model.
    started = {
        "one": _start_demo(root, [str(root / "in"), str(root / "more")], outputs["one"], 1),
        "two": _start_demo(
            root, [str(root / "in" / "*"), str(root / "more" / "*.[pP][nN][gG]")],
            outputs["two"], 2, "--parallel", "2",
        ),
    }  # fmt: skip
    results = {}
    for key, process in started.items():
        try:
            _, stderr = process.communicate(timeout=300)
        finally:
            process.kill()
        results[key] = (process.returncode, stderr, outputs[key])
    return results, root, sizes


def _demo_lines(stderr: str) -> List[str]:
    return [line for line in stderr.splitlines() if re.match(r"\[[\d:]+ demo\]", line)]


@pytest.mark.parametrize("run", ["one", "two"])
def test_bad_files_are_skipped_with_a_line_each_and_counted(runs, run):
    results, root, sizes = runs
    status, stderr, _ = results[run]
    assert status == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = _demo_lines(stderr)
    for name, reason in BAD.items():
        (line,) = [line for line in lines if name in line]
        assert f"WARNING: skipped {root / 'in' / name}: {reason}" in line
    num_inputs = len(sizes) + len(BAD)
    assert lines[-1].endswith(f"ERROR: {len(BAD)} of {num_inputs} images were not drawn "
                              "(see the lines above)")  # fmt: skip


@pytest.mark.parametrize("run", ["one", "two"])
def test_every_readable_image_is_drawn_at_its_upright_size(runs, run):
    results, _, sizes = runs
    _, _, output = results[run]
    assert sorted(os.listdir(output)) == sorted(sizes)  # no clash, no temporary file left
    for name, (h, w) in sizes.items():
        with Image.open(output / name) as drawing:
            assert (drawing.height, drawing.width) == (h, w), name


@pytest.fixture(scope="module")
def reference_drawings(runs):
    """
    What the demo should draw for the lossless inputs in/a.png and more/a.png (drawn as a.png
    and a-2.png), computed without the project's inference code: detectron2's DefaultPredictor
    with the same config, weights and threshold, on the files' pixels decoded by Pillow, drawn
    with detectron2's Visualizer as the original demo draws it.
    """
    _, root, _ = runs
    opts = ["MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0"]
    cfg = load_config(REPO_ROOT / CONFIG, opts, weights=str(root / "model.pth"), device="cpu")
    reference = DefaultPredictor(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    assert metadata.get("stuff_classes")  # the demo's class names and colours
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the demo runs (near-ties between segments)
    try:
        drawings = {}
        for name, source in (
            ("a.png", root / "in" / "a.png"),
            ("a-2.png", root / "more" / "a.png"),
        ):
            rgb = np.asarray(Image.open(source).convert("RGB"))
            panoptic_seg, segments_info = reference(rgb[:, :, ::-1].copy())["panoptic_seg"]
            assert segments_info, name  # something is drawn
            visualizer = Visualizer(rgb, metadata)
            np.random.seed(0)  # the colours the demo picks
            drawings[name] = visualizer.draw_panoptic_seg(panoptic_seg, segments_info).get_image()
    finally:
        torch.set_num_threads(threads)
    return drawings


@pytest.mark.parametrize("run", ["one", "two"])
def test_drawings_are_default_predictors_segments(runs, reference_drawings, run):
    _, root, _ = runs
    output = runs[0][run][2]
    for name, expected in reference_drawings.items():
        drawn = np.asarray(Image.open(output / name).convert("RGB"))
        assert drawn.shape == expected.shape, name
        assert np.array_equal(drawn, expected), (name, np.mean(drawn != expected))
    # Not the input image: segments are painted over it.
    source = np.asarray(Image.open(root / "in" / "a.png").convert("RGB"))
    assert not np.array_equal(reference_drawings["a.png"], source)


def test_two_workers_draw_what_one_process_draws(runs):
    results, _, sizes = runs
    one, two = results["one"][2], results["two"][2]
    for name in sizes:
        with Image.open(one / name) as a, Image.open(two / name) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b)), name
