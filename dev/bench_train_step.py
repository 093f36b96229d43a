#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Benchmark of one CPU training step of a config (default: the main job's), printed as tables of
medians over repeats (the figures quoted in the shapes configs; ``make bench`` runs the general
benchmark, tools/benchmark.py):

1. the step (forward, backward, optimizer) in float32 and with SOLVER.AMP.ENABLED (bfloat16
   autocast, NHWC weights), on the same prefetched batches;
2. the Hungarian matcher: all images of the batch at once (as it runs) against one image at a
   time (how it ran before);
3. the data loader's hand-over (``next()`` while the workers have had time to prepare the
   batch), with and without aspect-ratio grouping and per tensor-sharing strategy.

Usage: .venv/bin/python dev/bench_train_step.py [--config-file ...] [--repeats 15] [KEY VALUE ...]
"""

import argparse
import logging
import time
from typing import Callable, Dict, List

import torch
from detectron2.config import CfgNode

from mask_former.benchmark import summarize, time_calls
from mask_former.config import load_config
from mask_former.engine import Trainer

MAIN_CONFIG = "configs/shapes/maskformer_panoptic_R18_main.yaml"
logger = logging.getLogger("bench_train_step")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=MAIN_CONFIG)
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    return parser.parse_args()


def _cfg(args: argparse.Namespace, *opts: object) -> CfgNode:
    """The config file with the command line's overrides, then ``opts``."""
    return load_config(args.config_file, [*args.opts, *opts])


def _median_ms(samples: List[float]) -> float:
    return summarize(samples)["median_ms"]


def bench_steps(args: argparse.Namespace, batches: List) -> Dict[str, Dict[str, float]]:
    """Median forward / backward / optimizer times (ms) per precision, same batches and weights."""
    results = {}
    for name, amp in (("float32", False), ("bfloat16 AMP", True)):
        cfg = _cfg(args, "SOLVER.AMP.ENABLED", amp)
        torch.manual_seed(0)
        model = Trainer.build_model(cfg).train()
        if amp:
            model.to(memory_format=torch.channels_last)
        optimizer = Trainer.build_optimizer(cfg, model)
        times = {"forward": [], "backward": [], "optimizer": []}
        for i, batch in enumerate(batches):
            start = time.perf_counter()
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=amp):
                loss = sum(model(batch).values())
            forward = time.perf_counter()
            optimizer.zero_grad()
            loss.backward()
            backward = time.perf_counter()
            optimizer.step()
            if i >= 3:  # warm-up steps are not timed
                times["forward"].append(forward - start)
                times["backward"].append(backward - forward)
                times["optimizer"].append(time.perf_counter() - backward)
        results[name] = {key: _median_ms(value) for key, value in times.items()}
        results[name]["step"] = sum(results[name].values())
    return results


def bench_matcher(args: argparse.Namespace, batch, repeats: int) -> Dict[str, float]:
    """Median time (ms) of one matcher call on a real batch: batched vs image by image."""
    torch.manual_seed(0)
    model = Trainer.build_model(_cfg(args)).train()
    captured = {}
    criterion_forward = model.criterion.forward

    def capture(outputs, targets):
        captured.update(outputs=outputs, targets=targets)
        return criterion_forward(outputs, targets)

    model.criterion.forward = capture
    model(batch)
    outputs, targets = captured["outputs"], captured["targets"]
    matcher = model.criterion.matcher

    def one_by_one():
        for b, target in enumerate(targets):
            matcher(
                {key: outputs[key][b : b + 1] for key in ("pred_logits", "pred_masks")}, [target]
            )

    variants: Dict[str, Callable[[], object]] = {
        "whole batch": lambda: matcher(outputs, targets),
        "one image at a time": one_by_one,
    }
    return {
        name: _median_ms(time_calls(fn, warmup=2, repeats=repeats, device="cpu"))
        for name, fn in variants.items()
    }


def bench_loader(args: argparse.Namespace, repeats: int) -> Dict[str, float]:
    """Median ``next()`` time (ms) of the train loader when the workers had time to prepare."""
    results = {}
    for grouping, strategy in (
        (True, "file_descriptor"),
        (False, "file_descriptor"),
        (False, "file_system"),
    ):
        torch.multiprocessing.set_sharing_strategy(strategy)
        cfg = _cfg(args, "DATALOADER.ASPECT_RATIO_GROUPING", grouping)
        iterator = iter(Trainer.build_train_loader(cfg))
        samples = []
        for i in range(repeats + 3):
            time.sleep(0.3)  # about one training step
            start = time.perf_counter()
            next(iterator)
            if i >= 3:
                samples.append(time.perf_counter() - start)
        del iterator
        results[f"grouping {'on' if grouping else 'off'}, {strategy}"] = _median_ms(samples)
    return results


def _print_table(title: str, header: List[str], rows: List[List[str]]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    for name in ("detectron2", "mask_former", "fvcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    args = _parse_args()
    torch.set_num_threads(args.threads)
    cfg = _cfg(args, "DATALOADER.NUM_WORKERS", 0)
    loader = iter(Trainer.build_train_loader(cfg))
    batches = [next(loader) for _ in range(args.repeats + 3)]
    logger.info("%d batches of %d images, %d threads", len(batches), len(batches[0]), args.threads)

    steps = bench_steps(args, batches)
    base = steps["float32"]["step"]
    _print_table(
        f"Training step of {args.config_file} (median ms over {args.repeats} steps)",
        ["precision", "forward", "backward", "optimizer", "step", "speed-up"],
        [
            [
                name,
                *(f"{t[k]:.0f}" for k in ("forward", "backward", "optimizer", "step")),
                f"{base / t['step']:.2f}x",
            ]
            for name, t in steps.items()
        ],
    )
    matcher = bench_matcher(args, batches[0], args.repeats)
    per_image = matcher["one image at a time"]
    _print_table(
        "Hungarian matcher, one call on one batch (median ms)",
        ["matching", "ms", "speed-up"],
        [[name, f"{ms:.1f}", f"{per_image / ms:.2f}x"] for name, ms in matcher.items()],
    )
    loader_times = bench_loader(args, args.repeats)
    _print_table(
        "Train loader hand-over, next() after 0.3 s (median ms)",
        ["loader", "ms"],
        [[name, f"{ms:.1f}"] for name, ms in loader_times.items()],
    )


if __name__ == "__main__":
    main()
