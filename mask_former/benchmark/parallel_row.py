# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The benchmark row of the demo's ``--parallel`` path: images/s of
:class:`~mask_former.inference.workers.ParallelPredictor` (N worker processes, each with 1/N of
the threads, as ``demo/demo.py --parallel N`` runs the model) beside the plain in-process
:class:`~mask_former.inference.Predictor` (batch 1, as the demo without ``--parallel``, and
batch 4, the Predictor's default), over the same seeded noise images (uint8 RGB arrays in
memory), with the seeded random weights of a config saved to a temporary file. Both run the
config with MODEL.MASK_FORMER.TEST.PRECISION as the demo sets it ("auto" unless told).

Each way gets ``warmup`` untimed rounds over all the images (the pool at least one image per
worker; its start-up, spawning the processes and building their models, is reported on its
own), then ``repeats`` timed rounds. (One warm-up image was not enough: the first round after it
was up to 20x slower than the next, with 2 threads on a loaded machine.)
"""

import logging
import os
import statistics
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .report import fmt_ms, markdown
from .rows import REPO
from .worker import save_seeded_weights, summarize, time_calls, torch_threads

__all__ = ["bench_parallel", "noise_arrays", "parallel_table"]

logger = logging.getLogger("benchmark")


def noise_arrays(num: int, size: Tuple[int, int], seed: int) -> List[np.ndarray]:
    """``num`` (H, W, 3) uint8 RGB images of uniform noise, image i seeded ``seed + i``."""
    return [
        np.random.default_rng(seed + i).integers(0, 256, (*size, 3), dtype=np.uint8)
        for i in range(num)
    ]


def _label_map(prediction) -> torch.Tensor:
    """What the agreement compares: the semantic class map, else the panoptic segment ids."""
    return prediction.semantic if prediction.semantic is not None else prediction.panoptic


def _agreement(predictions: Sequence, reference: Sequence) -> float:
    """Share of pixels, over all images, whose label equals the reference's."""
    same = sum(int((_label_map(p) == _label_map(r)).sum()) for p, r in zip(predictions, reference))
    return same / sum(_label_map(r).numel() for r in reference)


def _rounds(
    predict, images: List[np.ndarray], warmup: int, repeats: int
) -> Tuple[List[float], List]:
    """
    Seconds of each of ``repeats`` calls ``predict(images)`` after ``warmup`` untimed ones,
    and the last predictions.
    """
    predictions: List = []

    def call() -> None:
        predictions[:] = predict(images)

    return time_calls(call, warmup, repeats, "cpu"), predictions


def _pool_predict(pool, images: List[np.ndarray]) -> List:
    """The pool's predictions of ``images`` in order, at most its buffer size in flight."""
    predictions = []
    for image in images:
        pool.put(image, "RGB")
        if len(pool) >= pool.default_buffer_size:
            predictions.append(pool.get())
    while len(pool):
        predictions.append(pool.get())
    return predictions


def _entry(name: str, workers: int, threads: int, images: int, seconds: List[float]) -> Dict:
    stats = summarize(seconds)
    entry = {"name": name, "workers": workers, "threads": threads, "images": images, **stats}
    entry["images_per_s"] = images / statistics.median(seconds)
    return entry


def _bench_plain(
    cfg, images: List[np.ndarray], batch_sizes: Sequence[int], warmup: int, repeats: int
) -> List[Dict]:
    """The in-process Predictor at each batch size (its predictions kept)."""
    from ..inference import Predictor

    entries, threads = [], torch.get_num_threads()
    for batch in batch_sizes:
        predictor = Predictor(cfg, batch_size=batch, precision=None)  # the cfg's, as the demo
        seconds, predictions = _rounds(predictor.predict, images, warmup, repeats)
        entry = _entry(f"Predictor, batch {batch}", 0, threads, len(images), seconds)
        entry["_predictions"] = predictions
        entries.append(entry)
        del predictor
    return entries


def _bench_pool(cfg, images: List[np.ndarray], workers: int, warmup: int, repeats: int) -> Dict:
    """ParallelPredictor with ``workers`` processes (start-up timed on its own)."""
    from ..inference.workers import ParallelPredictor

    start = time.perf_counter()
    with ParallelPredictor(cfg, workers) as pool:
        startup = time.perf_counter() - start
        logger.info("Parallel row: %d workers ready in %.1f s", workers, startup)
        if warmup and len(images) < workers:  # one image per worker at least
            _pool_predict(pool, [images[i % len(images)] for i in range(workers)])
        seconds, predictions = _rounds(lambda x: _pool_predict(pool, x), images, warmup, repeats)
    threads = max(1, torch.get_num_threads() // workers)  # as ParallelPredictor shares them
    entry = _entry(f"ParallelPredictor, {workers} workers", workers, threads, len(images), seconds)
    entry.update(startup_s=startup, _predictions=predictions)
    return entry


def bench_parallel(
    config: str,
    num_images: int = 8,
    size: Tuple[int, int] = (512, 683),
    workers: Union[int, Sequence[int]] = (2,),
    threads: int = 2,
    seed: int = 0,
    *,
    repeats: int = 1,
    warmup: int = 1,
    batch_sizes: Sequence[int] = (1, 4),
    precision: str = "auto",
    opts: Sequence[str] = (),
) -> List[Dict]:
    """
    Throughput of the plain Predictor and of ParallelPredictor over ``num_images`` seeded
    noise images of ``size`` (H, W) (see the module docstring).

    Args:
        config: a config file (relative paths are taken from this checkout's root).
        workers: the pool sizes measured (``--parallel N``).
        threads: torch's intra-op threads of this process (restored afterwards), shared
            among a pool's workers; 0: unchanged.
        repeats: timed rounds over all the images, per way.
        warmup: untimed rounds before them.
        batch_sizes: those of the in-process Predictor, 1 (the demo's) first.
        precision: MODEL.MASK_FORMER.TEST.PRECISION, applied before ``opts`` as the demo does.
        opts: more config options (KEY VALUE pairs).

    Returns:
        one dict per way, the Predictor's first: "name", "workers" (0: in process),
        "threads" (per process), "images", the summary of a round in ms (median_ms, min_ms,
        max_ms, ms), "images_per_s", "speedup_vs_batch1" (images/s over the batch-1
        Predictor's) and "same_as_predictor" (share of pixels whose semantic class, else
        panoptic segment id, equals the batch-1 Predictor's); the pools also "startup_s".
    """
    from ..config import load_config

    if num_images < 1 or repeats < 1:
        raise ValueError(f"num_images and repeats must be at least 1, got {num_images}, {repeats}")
    if not batch_sizes or batch_sizes[0] != 1:
        raise ValueError(f"batch_sizes must start with 1 (the reference), got {batch_sizes}")
    config = os.path.join(REPO, config)
    pool_sizes = [workers] if isinstance(workers, int) else list(workers)
    images = noise_arrays(num_images, size, seed)
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="benchmark-parallel-") as tmp:
        weights = os.path.join(tmp, "seeded_weights.pth")
        save_seeded_weights(config, list(opts), seed, weights)
        chosen = ["MODEL.MASK_FORMER.TEST.PRECISION", precision, *opts]
        cfg = load_config(config, chosen, weights=weights, device="cpu")
        entries = _bench_plain(cfg, images, batch_sizes, warmup, repeats)
        entries += [_bench_pool(cfg, images, n, warmup, repeats) for n in pool_sizes]
    reference = entries[0]
    for entry in entries:
        entry["speedup_vs_batch1"] = entry["images_per_s"] / reference["images_per_s"]
        entry["same_as_predictor"] = _agreement(entry["_predictions"], reference["_predictions"])
    for entry in entries:
        del entry["_predictions"]
        entry["size"] = list(size)
    return entries


def _optional(value: Optional[float], text: str) -> str:
    return "-" if value is None else text.format(value)


def parallel_table(entries: List[Dict], env: Dict) -> str:
    """The --parallel row: images/s of the pool beside the in-process Predictor."""
    header = ["inference", "processes x threads", "images", "ms per round median (min-max)"]
    header += ["images/s", "vs Predictor batch 1", "start-up s", "same as Predictor"]
    rows = []
    for e in entries:
        rows.append(
            [
                e["name"],
                f"{max(1, e['workers'])} x {e['threads']}",
                f"{e['images']} of {'x'.join(map(str, e['size']))}",
                fmt_ms(e),
                f"{e['images_per_s']:.2f}",
                f"{e['speedup_vs_batch1']:.2f}x",
                _optional(e.get("startup_s"), "{:.1f}"),
                f"{100 * e['same_as_predictor']:.2f}%",
            ]
        )
    title = (
        "The demo's --parallel (ParallelPredictor worker processes) beside the in-process "
        "Predictor, seeded random weights, noise images (start-up: spawning the workers and "
        "building their models, not in the rounds; same as Predictor: pixels whose label "
        "equals the batch-1 Predictor's)"
    )
    return markdown(title, env, header, rows)
