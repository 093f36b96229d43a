# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""tools/benchmark.py and mask_former.benchmark on the tiny shapes ResNet-18 config at 64x64:
tables, JSON, Voronoi targets, the case worker against an older checkout. No timing is asserted."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from mask_former.benchmark import report, suite
from mask_former.benchmark.runner import (
    Run,
    inference_case,
    run_cases,
    train_case,
    variant_case,
)
from mask_former.benchmark.worker import environment, run_case, voronoi_segments
from tests.paths import REPO_ROOT

CONFIG = "configs/shapes/maskformer_R18_bs8_1200.yaml"
HEADER_WORDS = ("CPU capability", "oneDNN bfloat16 native", "threads", "torch")


@pytest.fixture
def bench(tool):
    """The tool's module; the torch thread count it sets is restored afterwards."""
    threads = torch.get_num_threads()
    yield tool("benchmark")
    torch.set_num_threads(threads)


def _positive_numbers(tree, path="results"):
    """Every number in a JSON tree, with its path."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _positive_numbers(value, f"{path}.{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _positive_numbers(value, f"{path}[{i}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, tree


def _assert_header(table: str, threads: int) -> None:
    for word in HEADER_WORDS:
        assert word in table
    assert f"{threads} threads" in table


def test_voronoi_segments_partition_the_image():
    for n in (1, 3, 24):
        classes, masks = voronoi_segments(37, 53, n, 150, seed=n)
        assert masks.shape == (n, 37, 53) and masks.dtype == np.bool_
        assert (masks.sum(axis=(1, 2)) > 0).all()  # none empty
        assert (masks.sum(axis=0) == 1).all()  # disjoint, and together they cover the image
        assert classes.dtype == np.int64 and len(set(classes.tolist())) == n
        assert classes.min() >= 0 and classes.max() < 150
    with pytest.raises(ValueError):
        voronoi_segments(4, 4, 5, 4, seed=0)  # more segments than classes


def test_main_writes_captioned_tables_and_json(bench, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(suite.MODES["quick"], "peak_repeats", 1)
    monkeypatch.setitem(suite.MODES["quick"], "matcher_repeats", 1)
    path = tmp_path / "bench.json"
    bench.main(["--rows", "peak", "matcher", "--threads", "1", "--json", str(path)])
    out = capsys.readouterr().out
    assert out.count("### ") == 2 and out.count("_CPU capability") == 2
    _assert_header(out, 1)
    results = json.loads(path.read_text())
    assert {"environment", "mode", "settings", "peaks", "matcher", "seconds"} <= set(results)
    assert results["args"]["rows"] == ["peak", "matcher"] and results["args"]["threads"] == 1
    env = results["environment"]
    assert {"cpu_capability", "onednn_bf16_native", "threads", "torch", "device"} <= set(env)
    assert env["threads"] == 1 and results["mode"] == "quick"
    assert [p["num_points"] for p in results["matcher"]] == [0, 12544]
    for name, value in _positive_numbers({"peaks": results["peaks"], "m": results["matcher"]}):
        assert value > 0 or name.endswith("num_points"), name


def test_inference_side_by_side_and_training_case(tmp_path):
    # The baseline is this very checkout: same code, same weights, so the outputs agree.
    run = Run("cpu", "float32", 1, 0, str(REPO_ROOT), str(REPO_ROOT), str(tmp_path))
    case = inference_case(run, "tiny R18", CONFIG, (64, 64), {1: 1, 2: 1}, warmup=1)
    entries = run_cases([case], run)
    env = {**environment("cpu"), "threads": 1, "dtype": "float32"}
    (entry,) = entries
    for side in ("current", "baseline"):
        result = entry[side]
        assert "error" not in result, result
        assert result["mask_former_file"].startswith(str(REPO_ROOT))
        assert result["memory"]["rss_mb"] > 0 and result["weights"]["missing"] == 0
        assert set(result["batches"]) == {"1", "2"}
        assert result["batches"]["2"]["images_per_s"] > 0
        parts = result["batches"]["1"]["parts"]
        assert set(parts) == {"backbone", "pixel decoder", "transformer decoder", report.POST}
        assert all(v > 0 for k, v in result["batches"]["1"]["flops"].items() if k != report.POST)
    assert entry["agreement"]["same_argmax"] == {"1": 1.0, "2": 1.0}
    for table in (report.inference_table(entries, env), report.parts_table(entries, None, env)):
        _assert_header(table, 1)
        assert "speed-up" in table and "tiny R18" in table

    train = train_case(run, CONFIG, (64, 64), segments=3, points=0, iters=1)
    result, _ = run_case(dict(train, threads=1))
    assert result["step"]["median_ms"] > 0 and result["memory"]["rss_mb"] > 0
    assert result["losses"] and all(math.isfinite(v) for v in result["losses"].values())
    table = report.train_table([{"case": train, "current": result}], env)
    _assert_header(table, 1)
    assert "full-res" in table

    path = tmp_path / "out.json"
    report.write_json({"environment": env, "inference": entries}, str(path))
    loaded = json.loads(path.read_text())
    assert loaded["inference"][0]["current"]["batches"]["1"]["median_ms"] > 0


def test_variant_opts_apply_to_this_checkout_only(tmp_path):
    run = Run("cpu", "float32", 1, 0, str(REPO_ROOT), str(REPO_ROOT), str(tmp_path))
    variant = ["MODEL.MASK_FORMER.TEST.PRECISION", "auto"]
    case = variant_case(run, "tiny auto", CONFIG, (64, 64), {1: 1}, 0, variant)
    assert not case["first_call"] and case["count_flops"]
    compiled = variant_case(run, "c", CONFIG, (64, 64), {1: 1}, 0, suite.COMPILE)
    assert compiled["first_call"] and not compiled["count_flops"]
    (entry,) = run_cases([dict(case, first_call=True)], run)
    current, baseline = entry["current"], entry["baseline"]
    assert current["opts"][-2:] == variant and "auto" not in baseline["opts"]
    assert current["batches"]["1"]["first_call_s"] > 0  # both sides time their first call
    env = {**environment("cpu"), "threads": 1, "dtype": "float32"}
    table = report.inference_table([entry], env, "Inference variants")
    assert "first call s" in table and "tiny auto" in table and "Inference variants" in table


@pytest.mark.parametrize("cuda", [True, False], ids=["with_cuda", "without_cuda"])
def test_device_cuda_is_refused_only_without_cuda(bench, monkeypatch, tmp_path, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)  # no GPU is used
    args = bench.parse_args(["--device", "cuda", "--json", str(tmp_path / "b.json")])
    if cuda:
        bench.check_args(args)
        assert args.device == "cuda"
    else:
        with pytest.raises(SystemExit, match="--device cuda: CUDA is not available here"):
            bench.check_args(args)
    bench.check_args(bench.parse_args(["--json", str(tmp_path / "b.json")]))  # the CPU: always


def _older_checkout(root):
    """
    A copy of this checkout's package and shapes configs as a checkout older than the config
    builder and the benchmark package looks: no ``mask_former.load_config`` (c825558 and
    before) and no ``mask_former/benchmark/``.
    """
    ignore = shutil.ignore_patterns("__pycache__", "benchmark")
    shutil.copytree(REPO_ROOT / "mask_former", root / "mask_former", ignore=ignore)
    shutil.copytree(REPO_ROOT / "configs" / "shapes", root / "configs" / "shapes")
    init = root / "mask_former" / "__init__.py"
    init.write_text(
        init.read_text() + "\ndel load_config\n"
        '__all__ = [n for n in __all__ if n != "load_config"]\n'
    )
    return root


def test_worker_runs_against_an_older_checkout(tmp_path):
    old = _older_checkout(tmp_path / "old")
    assert not (old / "mask_former" / "benchmark").exists()
    run = Run("cpu", "float32", 1, 0, str(REPO_ROOT), str(old), str(tmp_path / "cases"))
    (tmp_path / "cases").mkdir()
    case = inference_case(run, "tiny R18", CONFIG, (64, 64), {1: 1}, warmup=0)
    (entry,) = run_cases([case], run)
    current, baseline = entry["current"], entry["baseline"]
    assert "error" not in current and "error" not in baseline, entry
    assert baseline["mask_former_file"].startswith(str(old))
    assert current["mask_former_file"].startswith(str(REPO_ROOT / "mask_former"))
    # The older checkout builds its config the old way, this one by the config builder.
    assert baseline["config_builder"] == "get_mask_former_cfg"
    assert current["config_builder"] == "load_config"
    # Both loaded all the shared seeded weights, so the same code gives the same pixels.
    assert baseline["weights"] == {"missing": 0, "unexpected": 0}
    assert entry["agreement"]["same_argmax"] == {"1": 1.0}


def test_onnx_row_times_the_exported_graph_and_pytorch():
    from mask_former.benchmark import rows

    entries = rows.bench_onnx(CONFIG, (64, 64), threads=1, repeats=1)
    assert [e["runtime"] for e in entries] == [
        "PyTorch (export wrapper)",
        "onnxruntime (dynamo graph)",
        "onnxruntime (TorchScript graph)",
    ]
    assert [e.get("exporter") for e in entries] == [None, "dynamo", "torchscript"]
    for entry in entries:
        assert "error" not in entry, entry
        assert entry["size"] == [64, 64] and len(entry["ms"]) == 1 and entry["median_ms"] > 0
    # Both graphs give the model's results (same seeded weights for both exports).
    assert all(0 <= e["max_diff"] <= 1e-4 for e in entries[1:])
    env = {**environment("cpu"), "threads": 1, "dtype": "float32"}
    table = report.onnx_table(entries, env)
    _assert_header(table, 1)
    assert "onnxruntime (dynamo graph)" in table and "onnxruntime (TorchScript graph)" in table
    assert "max diff vs PyTorch" in table


def test_onnx_table_notes_a_failed_export():
    ok = {"runtime": "onnxruntime (dynamo graph)", "size": [8, 8], "max_diff": 2e-7}
    ok.update(median_ms=1.0, min_ms=1.0, max_ms=1.0, ms=[1.0])
    failed = {"runtime": "onnxruntime (TorchScript graph)", "size": [8, 8], "error": "E: why"}
    env = {**environment("cpu"), "threads": 1, "dtype": "float32"}
    table = report.onnx_table([ok, failed], env)
    assert "| onnxruntime (dynamo graph) | 8x8 | 1.0 (1.0-1.0) | 2.0e-07 |" in table
    assert "- onnxruntime (TorchScript graph): the export failed: E: why" in table
    assert "| onnxruntime (TorchScript graph) |" not in table
