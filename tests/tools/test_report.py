# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
tools/report.py and mask_former.report: the report of a run folder built here (the tests' tiny
MaskFormer with random weights in the project's checkpoint format, a metrics.json written by
the test, the tiny shapes dataset of the engine tests) has every figure as a valid image and
the values of metrics.json; the confusion matrix and the panoptic counts agree with the ground
truth files and with panopticapi; a missing file is a one-line error and nothing is written;
a report that fails half-way leaves the folder (and an earlier report) as it was.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from panopticapi.evaluation import PQStat, pq_compute_single_core
from PIL import Image

from mask_former.checkpoint import AtomicCheckpointer
from mask_former.data.io import ids_to_rgb
from mask_former.report import (
    FIGURES_DIR,
    REPORT_FILE,
    ReportInputError,
    accumulate_confusion,
    accumulate_panoptic_quality,
    evaluate_validation,
    read_metrics,
    write_report,
)
from mask_former.report import build as report_build
from tests.engine.e2e_helpers import VAL, make_tiny_datasets, register_tiny_shapes, tiny_cfg
from tests.paths import REPO_ROOT

CLASS_NAMES = ["circle", "square", "triangle", "gradient", "stripes", "blotches"]
# Values of the metrics.json written here, as the report must print them (two decimals).
FINAL = {"panoptic_seg/PQ": 41.25, "panoptic_seg/SQ": 77.75, "sem_seg/mIoU": 63.5}
CLASS_IOU = {name: 10.0 + 12.5 * i for i, name in enumerate(CLASS_NAMES)}
FIGURE_NAMES = {"loss", "evaluation", "metrics", "per_class", "confusion", "predictions"}


def _write_metrics(path: Path) -> None:
    """Two logging periods of a MaskFormer with one deep-supervision layer, two evaluations."""
    records = []
    for iteration, loss in ((9, 4.0), (19, 3.0)):
        losses = {f"loss_{k}{s}": loss / 4 for k in ("ce", "mask", "dice") for s in ("", "_0")}
        records.append({"iteration": iteration, "total_loss": loss, "lr": 1e-4, **losses})
    early = {"panoptic_seg/PQ": 20.5, "sem_seg/mIoU": 30.5}
    per_class = {f"sem_seg/IoU-{name}": value for name, value in CLASS_IOU.items()}
    records.append({"iteration": 10, **early})
    # A metric name that HTML would take for markup.
    records.append({"iteration": 20, **FINAL, **per_class, "custom/a<b>&c": 12.0})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def make_run_folder(root: Path) -> Path:
    """
    A train_net.py output folder under ``root``: config.yaml of the tiny MaskFormer (test set:
    the 2 val images of the tiny shapes dataset, registered here), model_final.pth with random
    weights saved by the project's checkpointer (with last_checkpoint) and a metrics.json.
    """
    make_tiny_datasets(str(root / "datasets"))
    run = root / "run"
    run.mkdir()
    cfg = tiny_cfg(str(run))
    (run / "config.yaml").write_text(cfg.dump())
    torch.manual_seed(0)
    AtomicCheckpointer(build_model(cfg), str(run)).save("model_final")
    _write_metrics(run / "metrics.json")
    return run


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    return make_run_folder(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def report(run_folder):
    """The report of ``run_folder``: (path of report.html, its text)."""
    path = write_report(str(run_folder), targets={"panoptic_seg/PQ": 50.0, "sem_seg/mIoU": 60})
    return Path(path), Path(path).read_text()


def _image_sources(page: str):
    return re.findall(r'<img src="([^"]+)"', page)


def test_every_figure_is_a_valid_image_beside_the_report(run_folder, report):
    path, page = report
    assert path == run_folder / REPORT_FILE
    sources = _image_sources(page)
    assert {Path(s).stem for s in sources} == FIGURE_NAMES
    for source in sources:
        assert source.startswith(FIGURES_DIR + "/")
        file = run_folder / source
        signature = file.read_bytes()[:8]
        assert signature in (b"\x89PNG\r\n\x1a\n",) or signature[:3] == b"\xff\xd8\xff", source
        with Image.open(file) as image:
            image.verify()
        with Image.open(file) as image:
            assert min(image.size) > 100
    assert sorted(os.listdir(run_folder / FIGURES_DIR)) == sorted(Path(s).name for s in sources)
    assert not [n for n in os.listdir(run_folder) if n.startswith(".")]  # no temporary left


def test_report_shows_the_metrics_targets_and_classes(report):
    _, page = report
    assert "<script" not in page and "http" not in page  # nothing fetched from elsewhere
    assert "Evaluation at iteration 20" in page
    for key, value in FINAL.items():
        assert re.search(rf"<td class=name>{re.escape(key)}</td><td>{value:.2f}</td>", page), key
    # PQ 41.25 is below its target 50, mIoU 63.50 reaches 60.
    assert re.search(r"panoptic_seg/PQ</td>.*?&ge; 50</td><td><span class=\"below\">", page)
    assert re.search(r"sem_seg/mIoU</td>.*?&ge; 60</td><td><span class=\"ok\">reached", page)
    for name, iou in CLASS_IOU.items():
        assert re.search(rf"<td class=name>{name}</td><td>\w+</td><td>{iou:.2f}</td>", page)
    assert "circle</td><td>thing" in page and "stripes</td><td>stuff" in page
    assert f"{VAL} (2 of 2 images)" in page
    assert "<td class=name>custom/a&lt;b&gt;&amp;c</td><td>12.00</td>" in page
    assert "a<b>" not in page


def test_validation_counts_agree_with_the_ground_truth_files(run_folder):
    register_tiny_shapes(str(run_folder.parent / "datasets"))
    results = evaluate_validation(
        str(run_folder / "config.yaml"), str(run_folder / "model_final.pth"), num_samples=1
    )
    records = DatasetCatalog.get(VAL)
    labels = [np.asarray(Image.open(r["sem_seg_file_name"])) for r in records]
    pixels = np.bincount(np.concatenate([x[x != 255].ravel() for x in labels]), minlength=6)
    assert results.confusion.shape == (6, 6)
    np.testing.assert_array_equal(results.confusion.sum(axis=1), pixels)
    # Every ground-truth segment is either found (TP) or missed (FN), per class.
    segments = np.bincount(
        [s["category_id"] for r in records for s in r["segments_info"] if not s["iscrowd"]],
        minlength=6,
    )
    found = [results.panoptic[c].tp + results.panoptic[c].fn for c in range(6)]
    np.testing.assert_array_equal(found, segments)
    assert results.class_names == CLASS_NAMES and results.thing_ids == {0, 1, 2}
    assert (results.num_images, results.total_images, len(results.samples)) == (2, 2, 1)
    sample = results.samples[0]
    assert sample.image.shape == sample.ground_truth.shape == sample.prediction.shape
    assert not np.array_equal(sample.ground_truth, sample.image)


def test_confusion_matrix_of_a_hand_made_image():
    gt = np.array([[0, 0, 1], [1, 255, 2]])
    pred = np.array([[0, 1, 1], [2, 0, 2]])
    confusion = np.zeros((3, 3), dtype=np.int64)
    accumulate_confusion(confusion, pred, gt, ignore_label=255)
    # Rows: ground truth 0 (two pixels: one as 0, one as 1), 1 (as 1 and as 2), 2 (as 2).
    np.testing.assert_array_equal(confusion, [[1, 1, 0], [0, 1, 1], [0, 0, 1]])
    with pytest.raises(
        ValueError, match=r"img\.png: the prediction has class ids 1\.\.3, outside 0\.\.2"
    ):
        accumulate_confusion(confusion, pred + 1, gt, ignore_label=255, source="img.png")


def _panopticapi_counts(tmp_path, gt_ids, gt_segments, pred_ids, pred_segments) -> PQStat:
    """What panopticapi's own evaluation counts for one image written as COCO panoptic PNGs."""
    for folder, ids in (("gt", gt_ids), ("pred", pred_ids)):
        (tmp_path / folder).mkdir()
        Image.fromarray(ids_to_rgb(ids)).save(tmp_path / folder / "0.png")
    categories = {c: {"id": c, "isthing": 1} for c in (0, 1)}
    gt_ann = {"image_id": 0, "file_name": "0.png", "segments_info": gt_segments}
    pred_ann = {"image_id": 0, "file_name": "0.png", "segments_info": pred_segments}
    pairs = [(gt_ann, pred_ann)]
    return pq_compute_single_core(
        0, pairs, str(tmp_path / "gt"), str(tmp_path / "pred"), categories
    )


def test_panoptic_counts_of_a_hand_made_image_agree_with_panopticapi(tmp_path):
    # Ground truth: segment 1 (class 0) on rows 0-1; segment 2 (class 1) on rows 2-3, columns
    # 0-1; void on rows 2-3, columns 2-3; segment 3 (crowd, class 1) nowhere in the image.
    gt_ids = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]])
    # Prediction: 5 (class 0) matches 1 with IoU 6/8; 6 (class 1) overlaps 2 by 2 of 6 pixels
    # (IoU 1/3: a false positive, and 2 is missed); 7 (class 1) is 4/6 void: not counted.
    pred_ids = np.array([[5, 5, 5, 6], [5, 5, 5, 6], [6, 7, 7, 7], [6, 7, 7, 7]])
    gt_classes, pred_classes = {1: 0, 2: 1, 3: 1}, {5: 0, 6: 1, 7: 1}
    stat = PQStat()
    accumulate_panoptic_quality(stat, pred_ids, pred_classes, gt_ids, gt_classes, gt_crowd=[3])
    assert (stat[0].tp, stat[0].fp, stat[0].fn) == (1, 0, 0)
    assert stat[0].iou == pytest.approx(0.75)
    assert (stat[1].tp, stat[1].fp, stat[1].fn, stat[1].iou) == (0, 1, 1, 0.0)

    def segments(classes, crowd=()):
        return [{"id": i, "category_id": c, "iscrowd": int(i in crowd)} for i, c in classes.items()]

    gt_segments = [dict(s, area=int((gt_ids == s["id"]).sum())) for s in segments(gt_classes, [3])]
    reference = _panopticapi_counts(tmp_path, gt_ids, gt_segments, pred_ids, segments(pred_classes))
    for c in (0, 1):
        ours, theirs = stat[c], reference[c]
        assert (ours.tp, ours.fp, ours.fn) == (theirs.tp, theirs.fp, theirs.fn)
        assert ours.iou == pytest.approx(theirs.iou)


def test_a_prediction_on_a_crowd_region_of_its_class_is_not_a_false_positive():
    gt_ids = np.full((2, 2), 3)
    stat = PQStat()
    accumulate_panoptic_quality(stat, np.full((2, 2), 1), {1: 1}, gt_ids, {3: 1}, gt_crowd=[3])
    accumulate_panoptic_quality(stat, np.full((2, 2), 1), {1: 0}, gt_ids, {3: 1}, gt_crowd=[3])
    assert (stat[1].tp, stat[1].fp, stat[1].fn) == (0, 0, 0)  # crowd of its class: ignored
    assert (stat[0].tp, stat[0].fp, stat[0].fn) == (0, 1, 0)  # crowd of another class


def test_metrics_json_cut_off_last_line_is_skipped_other_bad_lines_named(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(
        '{"iteration": 4, "total_loss": 2.0}\n{"iteration": 9, "sem_seg/mIoU": 5}\n{"it'
    )
    metrics = read_metrics(str(path))
    assert metrics.series("total_loss") == ([4], [2.0])
    assert metrics.final == {"sem_seg/mIoU": 5.0} and metrics.last_iteration == 9
    path.write_text('{"iteration": 4, "total_loss": 2.0}\nnot json\n{"iteration": 9}\n')
    with pytest.raises(ReportInputError, match=rf"{re.escape(str(path))}:2 is not a JSON record"):
        read_metrics(str(path))


RUN_FILES = ("config.yaml", "metrics.json", "model_final.pth", "last_checkpoint")


def _copy_run(run_folder: Path, target: Path, leave_out=()) -> Path:
    """A copy of the run's files (without its report), less ``leave_out``."""
    target.mkdir()
    for name in RUN_FILES:
        if name not in leave_out:
            shutil.copy(run_folder / name, target / name)
    return target


@pytest.mark.parametrize(
    "leave_out, named",
    [
        (("config.yaml",), "config.yaml"),
        (("metrics.json",), "metrics.json"),
        (("model_final.pth", "last_checkpoint"), "model_final.pth"),
    ],
)
def test_missing_file_is_a_one_line_error_and_nothing_is_written(
    tool, run_folder, tmp_path, capsys, leave_out, named
):
    folder = _copy_run(run_folder, tmp_path / "run", leave_out)
    assert tool("report").main([str(folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("report.py: error: ")
    assert str(folder / named) in err and "not exist" in err
    assert sorted(os.listdir(folder)) == sorted(set(RUN_FILES) - set(leave_out))


def test_tool_on_an_empty_folder_exits_1_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools/report.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"report.py: error: {tmp_path / 'config.yaml'} does not exist: the run's config "
        f"(is {tmp_path} a train_net.py output folder?)"
    )
    assert os.listdir(tmp_path) == []


def test_a_report_failing_half_way_leaves_the_earlier_one(
    run_folder, report, tmp_path, monkeypatch
):
    folder = _copy_run(run_folder, tmp_path / "run")
    shutil.copy(report[0], folder / REPORT_FILE)
    shutil.copytree(run_folder / FIGURES_DIR, folder / FIGURES_DIR)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    saved = []

    def failing_save(fig, path, dpi=100):
        if saved:
            raise OSError("disk full")
        saved.append(path)
        fig.savefig(path, format="png")

    monkeypatch.setattr(report_build.figures, "save_figure", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_report(str(folder), num_samples=1)
    assert saved  # it failed after writing a figure
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before
    assert not [n for n in os.listdir(folder) if n.startswith(".")]
