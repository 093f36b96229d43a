# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The benchmark as a whole (``tools/benchmark.py`` parses its arguments and calls :func:`run`):
which configs, sizes and repeats each row measures, in which order the rows run, and the
results dict (written to JSON after every row, so that an interrupted run keeps what it has).
"""

import dataclasses
import logging
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from . import hf_row, parallel_row, rows
from .report import (
    evaluation_table,
    inference_table,
    mapper_table,
    matcher_table,
    onnx_table,
    parts_table,
    peaks_table,
    train_table,
    write_json,
)
from .runner import Run, inference_case, run_cases, train_case, variant_case
from .worker import environment

__all__ = [
    "MODES",
    "QUICK_ROWS",
    "ROWS",
    "Settings",
    "inference_cases",
    "run",
    "train_cases",
    "variant_cases",
]

logger = logging.getLogger("benchmark")

R50 = "configs/ade20k-150/maskformer_R50_bs16_160k.yaml"
SWIN_T = "configs/ade20k-150/swin/maskformer_swin_tiny_bs16_160k.yaml"
R50_PANOPTIC = "configs/coco-panoptic/maskformer_panoptic_R50_bs64_554k.yaml"
R50_FULL = "configs/ade20k-full-847/maskformer_R50_bs16_200k.yaml"
ROWS = (
    "peak",
    "inference",
    "variants",
    "hf",
    "parallel",
    "train",
    "matcher",
    "mapper",
    "evaluation",
    "onnx",
)
# The default rows of quick mode; "variants", "hf" and "parallel" (their compiles and worker
# pools take minutes) run in --full mode or when named with --rows.
QUICK_ROWS = tuple(r for r in ROWS if r not in ("variants", "hf", "parallel"))
# Opts of the "variants" row: what a user can switch on, against the defaults (float32, eager).
AUTO = ["MODEL.MASK_FORMER.TEST.PRECISION", "auto"]
COMPILE = ["MODEL.MASK_FORMER.TEST.COMPILE", "True"]
SLIDE = ["MODEL.MASK_FORMER.TEST.MODE", "slide"]

# Repeats per mode. Quick: under 10 minutes on 2 cores (a R50 image at 512x512 takes about
# 4 s there, a training iteration 5-20 s); full: under 20 minutes.
MODES = {
    "quick": {
        "warmup": 1,
        "repeats": {1: 3, 4: 2},
        "panoptic_repeats": {1: 2, 4: 1},
        "train_iters": 2,
        "matcher_repeats": 5,
        "mapper_images": 100,
        "eval_rounds": 1,
        "peak_repeats": 5,
        "onnx_repeats": 3,
    },
    "full": {
        "warmup": 1,
        "repeats": {1: 5, 4: 3},
        "panoptic_repeats": {1: 3, 4: 2},
        "train_iters": 4,
        "matcher_repeats": 20,
        "mapper_images": 400,
        "eval_rounds": 2,
        "peak_repeats": 10,
        "onnx_repeats": 5,
    },
}


@dataclasses.dataclass
class Settings:
    """One benchmark run, as ``tools/benchmark.py``'s arguments give it."""

    json: str  # where the results go (rewritten after each row)
    rows: Sequence[str] = ROWS
    full: bool = False  # more repeats, and R50 panoptic
    threads: int = 2
    device: str = "cpu"
    dtype: str = "float32"  # torch.autocast dtype of inference and training
    baseline: Optional[str] = None  # another checkout to compare with
    seed: int = 0


def inference_cases(run: Run, mode: Dict, full: bool) -> List[Dict]:
    """Row 1 (and the parts of row 6): the configs, sizes and batch sizes measured."""
    reps = mode["repeats"]
    cases = [
        inference_case(run, "R50 semantic", R50, (512, 512), reps, mode["warmup"]),
        inference_case(run, "Swin-T semantic", SWIN_T, (512, 512), reps, mode["warmup"]),
        inference_case(run, "R50 semantic", R50, (512, 683), {1: reps[1]}, mode["warmup"]),
        inference_case(run, "Swin-T semantic", SWIN_T, (512, 683), {1: reps[1]}, mode["warmup"]),
    ]
    if full:
        one = {1: reps[1]}
        cases.append(inference_case(run, "R50 847 classes", R50_FULL, (512, 683), one, 1))
        reps = mode["panoptic_repeats"]
        cases.append(
            inference_case(run, "R50 panoptic", R50_PANOPTIC, (800, 1216), reps, mode["warmup"])
        )
    return cases


def variant_cases(run: Run, mode: Dict) -> List[Dict]:
    """
    The "variants" row: TEST.PRECISION auto (batch 1 and 4), compiled (float32 and auto; the
    first call, which compiles, timed apart) and sliding-window inference (TEST.MODE slide,
    512x512 windows every 341 pixels) of a 1024x1024 image, each against the baseline's
    defaults when there is a baseline.
    """
    reps, warm, size = mode["repeats"], mode["warmup"], (512, 683)
    one = {1: reps[1]}
    return [
        variant_case(run, "R50 semantic, auto", R50, size, reps, warm, AUTO),
        variant_case(run, "Swin-T semantic, auto", SWIN_T, size, one, warm, AUTO),
        variant_case(run, "R50 semantic, compiled", R50, size, one, warm, COMPILE),
        variant_case(run, "R50 semantic, auto + compiled", R50, size, one, warm, AUTO + COMPILE),
        variant_case(
            run, "Swin-T semantic, auto + compiled", SWIN_T, size, one, warm, AUTO + COMPILE
        ),
        variant_case(run, "R50 semantic, slide", R50, (1024, 1024), {1: 2}, warm, SLIDE),
    ]


def train_cases(run: Run, mode: Dict) -> List[Dict]:
    """Row 2: R50 semantic, batch 2 at 512x512, 3 and 24 segments, full-res and point loss."""
    return [
        train_case(run, R50, (512, 512), segments, points, mode["train_iters"])
        for points in (0, 12544)
        for segments in (3, 24)
    ]


def _log_duration(name: str, start: float) -> None:
    logger.info("%s done in %.0f s", name, time.perf_counter() - start)


def _model_rows(s: Settings, run: Run, mode: Dict, results: Dict, emit: Callable) -> None:
    """Rows 1, 2 and 6 (one process per case; both checkouts with a baseline)."""
    env = results["environment"]
    if "inference" in s.rows:
        start = time.perf_counter()
        results["inference"] = run_cases(inference_cases(run, mode, s.full), run)
        emit(inference_table(results["inference"], env))
        if results.get("peaks"):
            emit(parts_table(results["inference"], results["peaks"], env))
        _log_duration("inference", start)
        write_json(results, s.json)
    if "variants" in s.rows:
        start = time.perf_counter()
        results["variants"] = run_cases(variant_cases(run, mode), run)
        emit(inference_table(results["variants"], env, "Inference variants"))
        _log_duration("variants", start)
        write_json(results, s.json)
    if "train" in s.rows:
        start = time.perf_counter()
        results["train"] = run_cases(train_cases(run, mode), run)
        emit(train_table(results["train"], env))
        _log_duration("training", start)
        write_json(results, s.json)


def _side_by_side_rows(s: Settings, mode: Dict, results: Dict, emit: Callable) -> None:
    """Rows "hf" (against Hugging Face's MaskFormer) and "parallel" (the demo's --parallel)."""
    env = results["environment"]
    if "hf" in s.rows and s.device == "cpu":
        start = time.perf_counter()
        repeats = mode["repeats"][1]
        results["hf"] = [
            entry
            for backbone in hf_row.BACKBONES
            for entry in hf_row.bench_hf(backbone, (512, 683), repeats, s.threads, s.seed)
        ]
        emit(hf_row.hf_table(results["hf"], env))
        _log_duration("hf", start)
        write_json(results, s.json)
    if "parallel" in s.rows and s.device == "cpu":
        start = time.perf_counter()
        results["parallel"] = parallel_row.bench_parallel(
            R50, 8, (512, 683), (2,), s.threads, s.seed
        )
        emit(parallel_row.parallel_table(results["parallel"], env))
        _log_duration("parallel", start)
        write_json(results, s.json)


def _local_rows(s: Settings, mode: Dict, results: Dict, emit: Callable) -> None:
    """Rows 3, 4, 5 and 7 (in this process, on this checkout)."""
    env = results["environment"]
    _side_by_side_rows(s, mode, results, emit)
    if "matcher" in s.rows:
        results["matcher"] = rows.bench_matcher(s.device, mode["matcher_repeats"])
        emit(matcher_table(results["matcher"], env))
        write_json(results, s.json)
    if "onnx" in s.rows and s.device == "cpu" and s.dtype == "float32":
        results["onnx"] = rows.bench_onnx(R50, (512, 512), s.threads, mode["onnx_repeats"], s.seed)
        emit(onnx_table(results["onnx"], env))
        write_json(results, s.json)
    if not {"mapper", "evaluation"} & set(s.rows):
        return
    with rows.shapes_datasets() as names:
        if "mapper" in s.rows:
            results["mapper"] = rows.bench_mapper(names, mode["mapper_images"])
            emit(mapper_table(results["mapper"], env))
            write_json(results, s.json)
        if "evaluation" in s.rows:
            start = time.perf_counter()
            results["evaluation"] = rows.bench_evaluation(
                names, s.device, s.dtype, mode["eval_rounds"]
            )
            emit(evaluation_table(results["evaluation"], env))
            _log_duration("evaluation", start)
            write_json(results, s.json)


def run(settings: Settings, emit: Callable[[str], None] = logger.info) -> Dict:
    """
    Run the selected rows, hand each table (markdown text) to ``emit`` as it is ready, and
    return the results (also written to ``settings.json``). Sets torch's thread count.
    """
    s = settings
    torch.set_num_threads(s.threads)
    mode_name = "full" if s.full else "quick"
    mode = MODES[mode_name]
    env = {**environment(s.device), "dtype": s.dtype}
    results = {
        "environment": env,
        "mode": mode_name,
        "settings": mode,
        "args": dataclasses.asdict(s),
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="benchmark-") as tmp:
        cases = Run(s.device, s.dtype, s.threads, s.seed, rows.REPO, s.baseline, tmp)
        if "peak" in s.rows:
            dtypes = sorted({"float32", s.dtype})
            results["peaks"] = rows.measure_peaks(s.device, dtypes, mode["peak_repeats"])
            emit(peaks_table(results["peaks"], env))
        _model_rows(s, cases, mode, results, emit)
        _local_rows(s, mode, results, emit)
    results["seconds"] = time.perf_counter() - start
    write_json(results, s.json)
    logger.info("%s mode took %.0f s; results in %s", mode_name, results["seconds"], s.json)
    return results
