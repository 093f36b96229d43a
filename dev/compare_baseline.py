#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Mask classification vs per-pixel classification on the shapes dataset, with the same budget:
the small-scale analogue of Table 2 of the MaskFormer paper (``make compare``).

Trains MaskFormer and the per-pixel baseline of equal size (configs/shapes/) for the same number
of iterations with the same data, solver and augmentation, evaluates mIoU on shapes val every
``--eval-period`` iterations, and writes into ``--output``:

    results.md          a table: model, parameters, s/iter, mIoU at each evaluation
    miou_vs_iter.png    mIoU against iterations, one line per model
    <model>/            each training run (log.txt, metrics.json, config.yaml, checkpoints)

Usage: .venv/bin/python dev/compare_baseline.py [--max-iter 1200] [--eval-period 300]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = {
    "MaskFormer": "configs/shapes/maskformer_R18_bs8_1200.yaml",
    "per-pixel baseline": "configs/shapes/per_pixel_baseline_R18_bs8_1200.yaml",
}


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-iter", type=int, default=1200, help="iterations per model")
    parser.add_argument("--eval-period", type=int, default=300, help="evaluate every N iterations")
    parser.add_argument("--output", default=None, help="output folder (default: a fresh one)")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes (CPU: gloo)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for both runs")
    return parser.parse_args()


def train(config: str, out_dir: str, args: argparse.Namespace) -> float:
    """Train one model; returns the wall time in seconds."""
    cmd = [
        sys.executable,
        os.path.join(REPO, "train_net.py"),
        "--config-file",
        config,
        "--num-gpus",
        str(args.num_gpus),
        "--dist-url",
        "auto",
        "OUTPUT_DIR",
        out_dir,
        "SOLVER.MAX_ITER",
        str(args.max_iter),
        "TEST.EVAL_PERIOD",
        str(args.eval_period),
        "SOLVER.CHECKPOINT_PERIOD",
        str(args.max_iter),
    ] + list(args.opts)
    start = time.time()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.getenv("PYTHONPATH", "")]))
    subprocess.run(cmd, check=True, cwd=REPO, env=env)
    return time.time() - start


def read_metrics(out_dir: str) -> List[Dict]:
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def miou_curve(records: List[Dict], max_iter: int) -> Dict[int, float]:
    """
    {iterations done: mIoU} from the evaluation entries of metrics.json: a periodic evaluation
    after iteration i is logged at i, the final one (after training) at MAX_ITER.
    """
    return {
        min(r["iteration"] + 1, max_iter): r["sem_seg/mIoU"] for r in records if "sem_seg/mIoU" in r
    }


def seconds_per_iter(records: List[Dict]) -> float:
    times = [r["time"] for r in records if "time" in r]
    return sorted(times)[len(times) // 2] if times else float("nan")


def count_parameters(out_dir: str) -> int:
    import torch

    state = torch.load(os.path.join(out_dir, "model_final.pth"), map_location="cpu")
    return sum(
        v.numel()
        for k, v in state["model"].items()
        if "running_" not in k and "num_batches_tracked" not in k
    )


def write_table(path: str, rows: Dict[str, Dict]) -> None:
    iters = sorted({i for row in rows.values() for i in row["curve"]})
    header = ["model", "params (M)", "s/iter", "train time (min)"] + [f"mIoU @{i}" for i in iters]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        cells = [
            name,
            f"{row['params'] / 1e6:.2f}",
            f"{row['s_per_iter']:.2f}",
            f"{row['wall'] / 60:.1f}",
        ]
        cells += [f"{row['curve'][i]:.1f}" if i in row["curve"] else "" for i in iters]
        lines.append("| " + " | ".join(cells) + " |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_plot(path: str, rows: Dict[str, Dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, row in rows.items():
        iters = sorted(row["curve"])
        ax.plot(iters, [row["curve"][i] for i in iters], marker="o", label=name)
    ax.set_xlabel("iterations")
    ax.set_ylabel("mIoU (shapes val)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = _parse_args()
    out = args.output or os.path.join(REPO, "output", time.strftime("compare_%Y%m%d_%H%M%S"))
    os.makedirs(out, exist_ok=True)
    rows = {}
    for name, config in MODELS.items():
        run_dir = os.path.join(out, name.replace(" ", "_").replace("-", "_"))
        wall = train(config, run_dir, args)
        records = read_metrics(run_dir)
        rows[name] = {
            "curve": miou_curve(records, args.max_iter),
            "s_per_iter": seconds_per_iter(records),
            "wall": wall,
            "params": count_parameters(run_dir),
        }
    write_table(os.path.join(out, "results.md"), rows)
    write_plot(os.path.join(out, "miou_vs_iter.png"), rows)
    with open(os.path.join(out, "results.md")) as f:
        print(f.read())
    print(f"results in {out}")


if __name__ == "__main__":
    main()
