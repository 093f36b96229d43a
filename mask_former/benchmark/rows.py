# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The rows of the benchmark that run in its own process, on this checkout only: the machine's
measured peak (a GEMM and a convolution), the Hungarian matcher, the train mapper of the shapes
data, the evaluation on shapes val and the ONNX export in onnxruntime.
"""

import contextlib
import copy
import logging
import os
import random
import shutil
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .worker import summarize, sync, time_calls, voronoi_segments

__all__ = [
    "bench_evaluation",
    "bench_mapper",
    "bench_matcher",
    "bench_onnx",
    "measure_peaks",
    "shapes_datasets",
]

logger = logging.getLogger("benchmark")

# The checkout this package is in (its configs/ are measured).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPES_CONFIG = os.path.join(REPO, "configs", "shapes", "maskformer_panoptic_R18_main.yaml")


def _peak_entry(kernel: str, dtype: str, flop: float, seconds: List[float]) -> Dict:
    stats = summarize(seconds)
    return {
        "kernel": kernel,
        "dtype": dtype,
        "gflop": flop / 1e9,
        **stats,
        "gflops": flop / 1e9 / (stats["median_ms"] / 1000.0),
    }


def _kernel_seconds(fn: Callable[[], object], repeats: int, device: str) -> List[float]:
    """Seconds per call of ``fn``; on a GPU a sample times 50 calls (one takes microseconds)."""
    inner = 50 if device.startswith("cuda") else 1

    def calls():
        for _ in range(inner):
            fn()

    with torch.no_grad():
        return [s / inner for s in time_calls(calls, 2, repeats, device)]


def measure_peaks(device: str, dtypes: Sequence[str], repeats: int) -> List[Dict]:
    """
    The machine's achieved peak: a 2048x2048 GEMM and a 3x3 256->256-channel convolution at
    128x176 (batch 1, default and channels_last layouts), per dtype (2 FLOPs per
    multiply-accumulate).
    """
    entries = []
    for name in dtypes:
        dtype = getattr(torch, name)
        a = torch.randn(2048, 2048, device=device, dtype=dtype)
        b = torch.randn(2048, 2048, device=device, dtype=dtype)
        seconds = _kernel_seconds(lambda: a @ b, repeats, device)
        entries.append(_peak_entry("GEMM 2048x2048x2048", name, 2 * 2048**3, seconds))
        conv_flop = 2 * 256 * 256 * 9 * 128 * 176
        for layout in ("default", "channels_last"):
            x = torch.randn(1, 256, 128, 176, device=device, dtype=dtype)
            w = torch.randn(256, 256, 3, 3, device=device, dtype=dtype)
            if layout == "channels_last":
                x = x.to(memory_format=torch.channels_last)
                w = w.to(memory_format=torch.channels_last)
            seconds = _kernel_seconds(lambda: F.conv2d(x, w, padding=1), repeats, device)
            kernel = f"conv 3x3 256->256 128x176 {layout}"
            entries.append(_peak_entry(kernel, name, conv_flop, seconds))
    return entries


def _matcher_inputs(device: str, seed: int) -> Tuple[Dict, List[Dict]]:
    """R50-like outputs (2 images, Q=100, 150 classes, 128x128 masks), 24-segment targets."""
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(2, 100, 151, generator=g).to(device),
        "pred_masks": torch.randn(2, 100, 128, 128, generator=g).to(device),
    }
    targets = []
    for b in range(2):
        classes, masks = voronoi_segments(512, 512, 24, 150, seed + b)
        targets.append(
            {
                "labels": torch.from_numpy(classes).to(device),
                "masks": torch.from_numpy(masks).to(device),
            }
        )
    return outputs, targets


def bench_matcher(device: str, repeats: int, seed: int = 0) -> List[Dict]:
    """Time per image of the Hungarian matcher, on the mask grid and on 12544 points."""
    from mask_former.modeling.matcher import HungarianMatcher

    outputs, targets = _matcher_inputs(device, seed)
    entries = []
    for points in (0, 12544):
        matcher = HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0, num_points=points)
        torch.manual_seed(seed)
        seconds = time_calls(lambda: matcher(outputs, targets), 1, repeats, device)
        per_image = [s / len(targets) for s in seconds]
        entries.append({"num_points": points, "images": len(targets), **summarize(per_image)})
    return entries


def _shapes_is_complete(root: str) -> bool:
    from mask_former.data.shapes_generator import shapes_dir

    return os.path.isfile(os.path.join(shapes_dir(root), "COMPLETE"))


@contextlib.contextmanager
def shapes_datasets() -> Iterator[Dict[str, str]]:
    """
    The shapes panoptic train and val dataset names: those of $DETECTRON2_DATASETS when the
    shapes data is there, else the data generated into a temporary root (removed afterwards)
    and registered under the prefix "benchmark_".
    """
    from mask_former.data.datasets import datasets_root, register_shapes
    from mask_former.data.shapes_generator import ensure_shapes_dataset

    root, prefix, tmp = datasets_root(), "", None
    if not _shapes_is_complete(root):
        tmp = tempfile.mkdtemp(prefix="benchmark-shapes-")
        root, prefix = tmp, "benchmark_"
        logger.info("Generating the shapes data into %s", tmp)
    try:
        register_shapes(root, prefix)
        ensure_shapes_dataset(root)
        yield {
            "root": root,
            "train": f"{prefix}shapes_panoptic_train",
            "val": f"{prefix}shapes_panoptic_val",
        }
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _shapes_cfg(names: Dict[str, str], device: str):
    from mask_former.config import load_config

    opts = ["DATASETS.TRAIN", (names["train"],), "DATASETS.TEST", (names["val"],)]
    return load_config(SHAPES_CONFIG, opts, weights="", device=device, cpu_fallback=False)


def bench_mapper(names: Dict[str, str], num_images: int, seed: int = 0) -> Dict:
    """Images per second of the shapes config's train mapper over the first train records."""
    from detectron2.data import DatasetCatalog

    from mask_former.data import build_train_mapper

    cfg = _shapes_cfg(names, "cpu")
    mapper = build_train_mapper(cfg)
    records = DatasetCatalog.get(names["train"])[:num_images]
    random.seed(seed)
    np.random.seed(seed)
    mapper(copy.deepcopy(records[0]))  # warm-up (first image reads, lazy imports)
    seconds = []
    for record in records:
        record = copy.deepcopy(record)  # as detectron2's loaders hand a copy to the mapper
        start = time.perf_counter()
        mapper(record)
        seconds.append(time.perf_counter() - start)
    return {
        "mapper": cfg.INPUT.DATASET_MAPPER_NAME,
        "images": len(records),
        **summarize(seconds),
        "images_per_s": len(records) / sum(seconds),
    }


def bench_evaluation(names: Dict[str, str], device: str, dtype: str, rounds: int) -> List[Dict]:
    """
    Images per second of inference on shapes val (randomly initialised shapes model, test
    loader of the config), without and with the project's evaluators, after an untimed pass.
    """
    from detectron2.modeling import build_model

    from mask_former.engine import Trainer

    cfg = _shapes_cfg(names, device)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    loader = Trainer.build_test_loader(cfg, names["val"])
    # Warm-up: one untimed pass, so that every image size has been seen (on the 2-core dev VM
    # the first pass over shapes val ran up to 10x slower than later ones).
    _timed_inference(model, loader, None, device, dtype)
    entries = []
    with tempfile.TemporaryDirectory(prefix="benchmark-eval-") as out:
        for with_evaluators in (False, True):
            seconds = []
            for _ in range(rounds):
                evaluator = (
                    Trainer.build_evaluator(cfg, names["val"], out) if with_evaluators else None
                )
                seconds.append(_timed_inference(model, loader, evaluator, device, dtype))
            stats = summarize(seconds)
            images = len(loader.dataset)
            entries.append(
                {
                    "what": "inference + evaluators" if with_evaluators else "inference",
                    "images": images,
                    **stats,
                    "images_per_s": images / (stats["median_ms"] / 1000.0),
                }
            )
    return entries


def _timed_inference(model, loader, evaluator, device: str, dtype: str) -> float:
    from detectron2.evaluation import inference_on_dataset

    device_type = "cuda" if device.startswith("cuda") else "cpu"
    amp = dtype != "float32"
    sync(device)
    start = time.perf_counter()
    with torch.autocast(device_type, dtype=getattr(torch, dtype), enabled=amp):
        inference_on_dataset(model, loader, evaluator)
    sync(device)
    return time.perf_counter() - start


# The exporters of the ONNX row, with the names of their rows.
ONNX_RUNTIMES = (
    ("dynamo", "onnxruntime (dynamo graph)"),
    ("torchscript", "onnxruntime (TorchScript graph)"),
)


def _onnx_entry(
    cfg, exporter: str, runtime: str, size: Tuple[int, int], threads: int, repeats: int, seed: int
) -> Tuple[Dict, object]:
    """
    One onnxruntime row: export ``cfg``'s seeded model with ``exporter``, time the graph and
    compare it with PyTorch at ``size`` (relative max difference, see ``verify_export``).
    Returns the entry (with "error" instead of timings if the export fails) and the wrapper.
    """
    from mask_former.inference.export import export, onnx_latency, verify_export

    entry: Dict = {"runtime": runtime, "exporter": exporter, "size": list(size)}
    torch.manual_seed(seed)  # the same weights for every exporter
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        try:
            wrapper = export(cfg, path, exporter=exporter)
        except Exception as e:  # noqa: BLE001 - the row reports it, the other graph still runs
            logger.warning("ONNX export with the %s exporter failed: %s", exporter, e)
            return {**entry, "error": f"{type(e).__name__}: {e}".splitlines()[0]}, None
        onnx_s = onnx_latency(path, *size, warmup=2, repeats=repeats, threads=threads, seed=seed)
        (diff,) = verify_export(path, wrapper, [tuple(size)])
    return {**entry, **summarize(onnx_s), "max_diff": diff}, wrapper


def bench_onnx(
    config: str, size: Tuple[int, int], threads: int, repeats: int, seed: int = 0
) -> List[Dict]:
    """
    Row 7: latency of one image through the ONNX exports of ``config`` in onnxruntime (CPU,
    ``threads`` intra-op threads), the torch.export-based ("dynamo") graph and the
    TorchScript-based one, beside PyTorch's on the same seeded weights and size. Each
    onnxruntime entry has the graph's largest difference from PyTorch ("max_diff",
    relative) or, if its export failed, "error".
    """
    # onnx / onnxruntime are imported only when the export is called.
    from mask_former.config import load_config

    cfg = load_config(os.path.join(REPO, config), weights="", device="cpu")  # seeded weights
    entries, wrappers = [], []
    for exporter, runtime in ONNX_RUNTIMES:
        entry, wrapper = _onnx_entry(cfg, exporter, runtime, size, threads, repeats, seed)
        entries.append(entry)
        wrappers += [wrapper] if wrapper is not None else []
    if not wrappers:
        raise RuntimeError(f"no ONNX exporter could export {config}: {entries}")
    image = torch.rand((3, *size), generator=torch.Generator().manual_seed(seed)) * 255
    with torch.no_grad():
        torch_s = time_calls(lambda: wrappers[0](image), warmup=2, repeats=repeats, device="cpu")
    pytorch = {"runtime": "PyTorch (export wrapper)", "size": list(size), **summarize(torch_s)}
    return [pytorch] + entries
