# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""dev/compare_baseline.py (``make compare``): reading the runs, the results table and the plot."""

import importlib.util
import json

import cv2
import torch

from tests.paths import REPO_ROOT


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "compare_baseline", REPO_ROOT / "dev" / "compare_baseline.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare = _load_script()


def _write_metrics(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_curve_and_speed_come_from_metrics_json(tmp_path):
    # Periodic evaluations are logged at the iteration they follow (299 -> 300 done); the final
    # one at MAX_ITER. Training records carry "time"; evaluation records do not.
    _write_metrics(
        tmp_path / "metrics.json",
        [
            {"iteration": 19, "time": 0.9, "total_loss": 3.0},
            {"iteration": 39, "time": 0.5, "total_loss": 2.0},
            {"iteration": 59, "time": 0.7, "total_loss": 1.5},
            {"iteration": 299, "sem_seg/mIoU": 31.5},
            {"iteration": 600, "sem_seg/mIoU": 47.25},
        ],
    )
    records = compare.read_metrics(str(tmp_path))
    assert compare.miou_curve(records, max_iter=600) == {300: 31.5, 600: 47.25}
    assert compare.seconds_per_iter(records) == 0.7


def test_table_has_one_row_per_model_and_a_column_per_evaluation(tmp_path):
    rows = {
        "MaskFormer": {
            "curve": {300: 31.5, 600: 47.25},
            "s_per_iter": 0.75,
            "wall": 450.0,
            "params": 14_400_000,
        },
        "per-pixel baseline": {
            "curve": {600: 40.0},
            "s_per_iter": 0.5,
            "wall": 300.0,
            "params": 12_000_000,
        },
    }
    path = tmp_path / "results.md"
    compare.write_table(str(path), rows)
    lines = path.read_text().splitlines()
    assert lines[0] == (
        "| model | params (M) | s/iter | train time (min) | mIoU @300 | mIoU @600 |"
    )
    assert lines[2] == "| MaskFormer | 14.40 | 0.75 | 7.5 | 31.5 | 47.2 |"
    assert lines[3] == "| per-pixel baseline | 12.00 | 0.50 | 5.0 |  | 40.0 |"

    png = tmp_path / "miou_vs_iter.png"
    compare.write_plot(str(png), rows)
    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100


def test_parameter_count_skips_batchnorm_statistics(tmp_path):
    state = {
        "model": {
            "conv.weight": torch.zeros(4, 3, 3, 3),
            "bn.weight": torch.zeros(4),
            "bn.running_mean": torch.zeros(4),
            "bn.running_var": torch.zeros(4),
            "bn.num_batches_tracked": torch.tensor(7),
        }
    }
    torch.save(state, tmp_path / "model_final.pth")
    assert compare.count_parameters(str(tmp_path)) == 4 * 27 + 4
