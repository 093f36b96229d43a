# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
How the benchmark runs its model cases: each in a fresh process (so that its peak RSS is its
own) that executes this checkout's :mod:`~mask_former.benchmark.worker` file by path, with the
measured checkout's directory first on PYTHONPATH and as working directory; with a baseline
checkout the two alternate, load the same seeded weights, and their outputs are compared.

The worker is started through ``runpy`` from ``python -c`` rather than as ``python worker.py``,
so that the folder of this package is not put first on the subprocess's ``sys.path``: the
measured checkout's ``mask_former`` is the only one it can import.
"""

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from .worker import save_seeded_weights

__all__ = ["Run", "inference_case", "run_cases", "train_case", "variant_case"]

logger = logging.getLogger("benchmark")

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
# Runs ``argv[1]`` as __main__ with the arguments that follow it (sys.path[0] stays the cwd).
_RUN_WORKER = (
    "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


@dataclass
class Run:
    """What every case of a run shares."""

    device: str
    dtype: str
    threads: int
    seed: int
    root: str  # this checkout
    baseline: Optional[str]  # another checkout, or None
    tmp: str  # a folder for case files, outputs and shared weights


def _base_case(run: Run, kind: str, name: str, config: str, size: Tuple[int, int]) -> Dict:
    return {
        "kind": kind,
        "name": name,
        "config": config,
        "opts": ["MODEL.DEVICE", run.device, "MODEL.WEIGHTS", ""],
        "device": run.device,
        "dtype": run.dtype,
        "threads": run.threads,
        "seed": run.seed,
        "height": size[0],
        "width": size[1],
    }


def inference_case(
    run: Run, name: str, config: str, size: Tuple[int, int], repeats: Dict[int, int], warmup: int
) -> Dict:
    """An inference case: ``repeats`` timed calls per batch size after ``warmup`` calls."""
    case = _base_case(run, "inference", name, config, size)
    case.update(batch_sizes=list(repeats), repeats=list(repeats.values()), warmup=warmup)
    return case


def variant_case(
    run: Run,
    name: str,
    config: str,
    size: Tuple[int, int],
    repeats: Dict[int, int],
    warmup: int,
    variant_opts: List[str],
) -> Dict:
    """
    An inference case whose current side runs with ``variant_opts`` (e.g. TEST.PRECISION auto,
    TEST.COMPILE True) and a baseline, if any, with the config's defaults; a compiled variant
    times its first call apart and counts no FLOPs.
    """
    case = inference_case(run, name, config, size, repeats, warmup)
    compiles = "MODEL.MASK_FORMER.TEST.COMPILE" in variant_opts
    case.update(variant_opts=list(variant_opts), first_call=compiles, count_flops=not compiles)
    return case


def train_case(
    run: Run, config: str, size: Tuple[int, int], segments: int, points: int, iters: int
) -> Dict:
    """A training case, batch 2, no dropout, with TRAIN_NUM_POINTS ``points`` (0: full res)."""
    loss = "full-res" if points == 0 else f"{points} points"
    case = _base_case(run, "train", f"{loss}, {segments} segments", config, size)
    case["opts"] += ["MODEL.MASK_FORMER.DROPOUT", "0.0"]
    case["opts"] += ["MODEL.MASK_FORMER.TRAIN_NUM_POINTS", str(points)]
    case.update(batch=2, segments=segments, points=points, warmup=1, iters=iters)
    return case


def _shared_weights(case: Dict, run: Run) -> str:
    """The seeded weights of the case's config, written once per run by this checkout."""
    path = os.path.join(run.tmp, "weights_" + os.path.basename(case["config"]) + ".pth")
    if not os.path.exists(path):
        logger.info("Seeded weights of %s -> %s", case["config"], path)
        config = os.path.join(run.root, case["config"])
        save_seeded_weights(config, case["opts"], run.seed, path)
    return path


def run_in_subprocess(case: Dict, root: str, tag: str, run: Run) -> Dict:
    """Run ``case`` in a new process on the checkout ``root``; returns its result dict."""
    stem = os.path.join(run.tmp, f"{case['id']}_{tag}")
    case = dict(case, root=root, result=stem + ".json", arrays=stem + ".npz")
    if tag == "current":  # a variant (TEST.PRECISION auto, compiled...) of this checkout only
        case["opts"] = case["opts"] + case.get("variant_opts", [])
    with open(stem + ".case.json", "w") as f:
        json.dump(case, f)
    python_path = [root] + [p for p in os.getenv("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(python_path))
    env["OMP_NUM_THREADS"] = str(run.threads)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_WORKER, WORKER, stem + ".case.json"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        logger.error("%s %s (%s) failed:\n%s", case["kind"], case["name"], tag, "\n".join(tail))
        return {"error": tail[-1] if tail else f"exit status {proc.returncode}"}
    with open(case["result"]) as f:
        result = json.load(f)
    if not os.path.realpath(result["mask_former_file"]).startswith(os.path.realpath(root)):
        raise RuntimeError(f"{tag} ran {result['mask_former_file']}, not the checkout {root}")
    result["process_seconds"] = seconds
    result["_arrays"] = case["arrays"]
    size = f"{case['height']}x{case['width']}"
    logger.info("%s %s %s (%s): %.0f s", case["kind"], case["name"], size, tag, seconds)
    return result


def _inference_agreement(current: Dict, baseline: Dict) -> Dict[str, float]:
    """Share of identical semantic argmax pixels, per batch size."""
    with np.load(current["_arrays"]) as a, np.load(baseline["_arrays"]) as b:
        return {
            key.replace("argmax_b", ""): float(np.mean(a[key] == b[key]))
            for key in a.files
            if key in b.files and a[key].shape == b[key].shape
        }


def _loss_agreement(current: Dict, baseline: Dict) -> Dict[str, object]:
    """Relative difference of each loss of the first iteration, and their maximum."""
    cur, base = current["losses"], baseline["losses"]
    rel = {k: abs(cur[k] - base[k]) / max(abs(base[k]), 1e-12) for k in cur if k in base}
    missing = sorted(set(cur) ^ set(base))
    return {
        "max_rel_diff": max(rel.values()) if rel else None,
        "rel_diff": rel,
        "unmatched": missing,
    }


def _agreement(kind: str, current: Dict, baseline: Dict) -> Optional[Dict]:
    if "error" in current or "error" in baseline:
        return None
    if kind == "inference":
        return {"same_argmax": _inference_agreement(current, baseline)}
    return _loss_agreement(current, baseline)


def run_cases(cases: List[Dict], run: Run) -> List[Dict]:
    """
    Run each case on this checkout, and with a baseline on both, alternating which goes first;
    returns one entry per case: {"case", "current"[, "baseline", "agreement"]}.
    """
    entries = []
    for i, case in enumerate(cases):
        case = dict(case, id=f"{case['kind']}{i:02d}")
        sides = [("current", run.root)]
        if run.baseline:
            case = dict(case, weights=_shared_weights(case, run))
            sides = sides + [("baseline", run.baseline)]
            sides = sides if i % 2 else sides[::-1]
        entry = {"case": case}
        for tag, root in sides:
            entry[tag] = run_in_subprocess(case, root, tag, run)
        if run.baseline:
            entry["agreement"] = _agreement(case["kind"], entry["current"], entry["baseline"])
        for tag, _ in sides:
            entry[tag].pop("_arrays", None)
        entries.append(entry)
    return entries
