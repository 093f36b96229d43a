#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Benchmark MaskFormer on this machine: markdown tables on stdout and a JSON file of all
samples (``make bench`` runs the quick mode).

1. inference latency and images/s, batch 1 and 4: R50 and Swin-T semantic (ADE20K-150
   configs) at 512x512 and, with ``--full``, R50 panoptic (COCO) at 800x1216;
2. one training iteration (forward + backward of the summed losses, no optimizer step) of the
   R50 semantic config, batch 2 at 512x512, with 3 and 24 Voronoi ground-truth segments, with
   the full-resolution and the point-sampled (12544 points) loss, and its peak memory;
3. the Hungarian matcher per image (Q=100, 150 classes, 128x128 masks, 24 segments of 512x512);
4. the train mapper of the shapes main config (images/s over shapes train records);
5. evaluation on shapes val: inference, post-processing and the evaluators (images/s);
6. the share of R50 inference (batch 1, 512x512 and 512x683) in the backbone, the pixel
   decoder, the transformer decoder and the pre/post-processing, with the FLOPs of each and the
   achieved GFLOP/s against the peak measured here (a GEMM and a convolution);
7. the R50 semantic model exported to ONNX (tools/export_model.py) in onnxruntime, beside the
   same graph in PyTorch, one 512x512 image (CPU, float32 only).

Rows 1, 2 and 6 run each case in a process of its own (so the peak RSS is the case's), with
random weights drawn from a fixed seed and fixed inputs. ``--baseline CHECKOUT`` runs them also
with another checkout of this project (e.g. ``git worktree add ../mf-old <commit>``), the two
alternating, both loading the same weights, and adds speed-up (baseline time / current time),
memory ratio (current / baseline) and agreement columns (identical semantic argmax pixels;
maximum relative difference of each loss).

Usage:
    python tools/benchmark.py [--full] [--threads 2] [--device cpu|cuda]
        [--dtype float32|bfloat16|float16] [--baseline CHECKOUT] [--json PATH] [--rows ...]

Examples (from the repository root)::

    make bench                                    # quick mode
    .venv/bin/python tools/benchmark.py --full
    git worktree add ../mf-baseline <commit>      # side by side with an older version
    .venv/bin/python tools/benchmark.py --baseline ../mf-baseline --rows peak inference train
    .venv/bin/python tools/benchmark.py --device cuda --dtype bfloat16
"""

import argparse
import logging
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

TOOLS = os.path.dirname(os.path.abspath(__file__))
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)  # the helper modules beside this script

import benchmark_rows  # noqa: E402
import torch  # noqa: E402
from benchmark_cases import environment  # noqa: E402
from benchmark_report import (  # noqa: E402
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
from benchmark_runner import Run, inference_case, run_cases, train_case  # noqa: E402

logger = logging.getLogger("benchmark")

REPO = os.path.dirname(TOOLS)
R50 = "configs/ade20k-150/maskformer_R50_bs16_160k.yaml"
SWIN_T = "configs/ade20k-150/swin/maskformer_swin_tiny_bs16_160k.yaml"
R50_PANOPTIC = "configs/coco-panoptic/maskformer_panoptic_R50_bs64_554k.yaml"
ROWS = ("peak", "inference", "train", "matcher", "mapper", "evaluation", "onnx")

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


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="more repeats, and R50 panoptic")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="run inference and training under torch.autocast for this dtype",
    )
    parser.add_argument("--baseline", default=None, help="another checkout to compare with")
    parser.add_argument("--json", default=None, help="default: output/benchmark_<time>.json")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def inference_cases(run: Run, mode: Dict, full: bool) -> List[Dict]:
    """Row 1 (and the parts of row 6): the configs, sizes and batch sizes measured."""
    reps = mode["repeats"]
    cases = [
        inference_case(run, "R50 semantic", R50, (512, 512), reps, mode["warmup"]),
        inference_case(run, "Swin-T semantic", SWIN_T, (512, 512), reps, mode["warmup"]),
        inference_case(run, "R50 semantic", R50, (512, 683), {1: reps[1]}, mode["warmup"]),
    ]
    if full:
        reps = mode["panoptic_repeats"]
        cases.append(
            inference_case(run, "R50 panoptic", R50_PANOPTIC, (800, 1216), reps, mode["warmup"])
        )
    return cases


def train_cases(run: Run, mode: Dict) -> List[Dict]:
    """Row 2: R50 semantic, batch 2 at 512x512, 3 and 24 segments, full-res and point loss."""
    return [
        train_case(run, R50, (512, 512), segments, points, mode["train_iters"])
        for points in (0, 12544)
        for segments in (3, 24)
    ]


def _log_duration(name: str, start: float) -> None:
    logger.info("%s done in %.0f s", name, time.perf_counter() - start)


def run_model_rows(args: argparse.Namespace, run: Run, mode: Dict, results: Dict) -> None:
    """Rows 1, 2 and 6 (one process per case; both checkouts with --baseline)."""
    env = results["environment"]
    if "inference" in args.rows:
        start = time.perf_counter()
        results["inference"] = run_cases(inference_cases(run, mode, args.full), run)
        print(inference_table(results["inference"], env), flush=True)
        if results.get("peaks"):
            print(parts_table(results["inference"], results["peaks"], env), flush=True)
        _log_duration("inference", start)
        write_json(results, args.json)
    if "train" in args.rows:
        start = time.perf_counter()
        results["train"] = run_cases(train_cases(run, mode), run)
        print(train_table(results["train"], env), flush=True)
        _log_duration("training", start)
        write_json(results, args.json)


def run_local_rows(args: argparse.Namespace, mode: Dict, results: Dict) -> None:
    """Rows 3, 4 and 5 (in this process, on this checkout)."""
    env = results["environment"]
    if "matcher" in args.rows:
        results["matcher"] = benchmark_rows.bench_matcher(args.device, mode["matcher_repeats"])
        print(matcher_table(results["matcher"], env), flush=True)
        write_json(results, args.json)
    if "onnx" in args.rows and args.device == "cpu" and args.dtype == "float32":
        results["onnx"] = benchmark_rows.bench_onnx(
            R50, (512, 512), args.threads, mode["onnx_repeats"], args.seed
        )
        print(onnx_table(results["onnx"], env), flush=True)
        write_json(results, args.json)
    if not {"mapper", "evaluation"} & set(args.rows):
        return
    with benchmark_rows.shapes_datasets() as names:
        if "mapper" in args.rows:
            results["mapper"] = benchmark_rows.bench_mapper(names, mode["mapper_images"])
            print(mapper_table(results["mapper"], env), flush=True)
            write_json(results, args.json)
        if "evaluation" in args.rows:
            start = time.perf_counter()
            results["evaluation"] = benchmark_rows.bench_evaluation(
                names, args.device, args.dtype, mode["eval_rounds"]
            )
            print(evaluation_table(results["evaluation"], env), flush=True)
            _log_duration("evaluation", start)
            write_json(results, args.json)


def _check_args(args: argparse.Namespace) -> None:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    if args.baseline is not None:
        args.baseline = os.path.realpath(args.baseline)
        if not os.path.isfile(os.path.join(args.baseline, "mask_former", "__init__.py")):
            raise SystemExit(f"--baseline {args.baseline} is not a checkout of this project")
    if args.json is None:
        args.json = os.path.join("output", time.strftime("benchmark_%Y%m%d_%H%M%S.json"))


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """Run the selected rows; print their tables; return (and write) the results."""
    args = parse_args(argv)
    _check_args(args)
    torch.set_num_threads(args.threads)
    mode_name = "full" if args.full else "quick"
    mode = MODES[mode_name]
    env = {**environment(args.device), "dtype": args.dtype}
    results = {"environment": env, "mode": mode_name, "settings": mode, "args": vars(args)}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="benchmark-") as tmp:
        run = Run(args.device, args.dtype, args.threads, args.seed, REPO, args.baseline, tmp)
        if "peak" in args.rows:
            dtypes = sorted({"float32", args.dtype})
            results["peaks"] = benchmark_rows.measure_peaks(
                args.device, dtypes, mode["peak_repeats"]
            )
            print(peaks_table(results["peaks"], env), flush=True)
        run_model_rows(args, run, mode, results)
        run_local_rows(args, mode, results)
    results["seconds"] = time.perf_counter() - start
    write_json(results, args.json)
    logger.info("%s mode took %.0f s; results in %s", mode_name, results["seconds"], args.json)
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("detectron2", "mask_former", "fvcore", "d2.evaluation", "d2.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    main()
