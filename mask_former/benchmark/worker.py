# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The case worker of the benchmark (``mask_former.benchmark``): inference latency (with the time
and FLOPs of each part of the model) and one training iteration, each run in a process of its
own by :mod:`mask_former.benchmark.runner`.

This file is self-contained: it is executed by path, from this checkout, against whichever
``mask_former`` its Python path names first, so the same case runs against this checkout and
against an older checkout (``tools/benchmark.py --baseline``) that has no benchmark package::

    PYTHONPATH=<checkout> python mask_former/benchmark/worker.py CASE.json

At import it needs only the standard library, numpy and torch; of the measured package it uses
only the stable public API (``build_model``, the config builder ``mask_former.load_config`` or,
in checkouts older than it, the config factory, and the model's ``backbone`` /
``sem_seg_head.pixel_decoder`` / ``sem_seg_head.predictor``). It never imports
``mask_former.benchmark``; the package imports the timing helpers from here.

The case file (a dict, see :func:`run_case`) names where the result JSON and the arrays (npz)
go.

Shape shorthand in this module: N segments, H, W image height and width.
"""

import contextlib
import json
import logging
import os
import resource
import statistics
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "environment",
    "run_case",
    "save_seeded_weights",
    "summarize",
    "sync",
    "time_calls",
    "torch_threads",
    "voronoi_segments",
]

logger = logging.getLogger("benchmark.worker")

# The parts of an inference, in the order they run; "pre/post-processing" is the rest.
PARTS = ("backbone", "pixel decoder", "transformer decoder")
POST = "pre/post-processing"


def environment(device: str = "cpu") -> Dict[str, object]:
    """What every table names: CPU capability, native oneDNN bfloat16, threads, versions."""
    env = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_bf16_native": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
    }
    if device.startswith("cuda"):
        env["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
    return env


def sync(device: str) -> None:
    """Wait for the device's queued work, so that a wall-clock reading covers it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def time_calls(fn: Callable[[], object], warmup: int, repeats: int, device: str) -> List[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    samples = []
    for i in range(warmup + repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        if i >= warmup:
            samples.append(time.perf_counter() - start)
    return samples


@contextlib.contextmanager
def torch_threads(num: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``num`` (if positive) for the block."""
    before = torch.get_num_threads()
    if num > 0:
        torch.set_num_threads(num)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def summarize(seconds: Sequence[float]) -> Dict[str, object]:
    """Median, min and max (ms) of samples in seconds, with the samples themselves."""
    ms = [1000.0 * s for s in seconds]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "ms": ms}


def voronoi_segments(
    height: int, width: int, num_segments: int, num_classes: int, seed: int
) -> Tuple[np.ndarray, np.ndarray]:
    """
    A Voronoi partition of an image into ``num_segments`` segments with distinct classes.

    The sites are distinct pixels and each pixel goes to its nearest site, so every segment
    holds at least its own site: the masks are non-empty, disjoint and cover the image.

    Returns:
        (ndarray, ndarray): classes int64 (N,) and masks bool (N, H, W).
    """
    if num_segments > min(num_classes, height * width):
        raise ValueError(f"{num_segments} segments need as many classes and pixels")
    rng = np.random.default_rng(seed)
    sites = rng.choice(height * width, size=num_segments, replace=False)
    sy, sx = np.divmod(sites, width)
    ys, xs = np.mgrid[:height, :width]
    dist = (ys[None] - sy[:, None, None]) ** 2 + (xs[None] - sx[:, None, None]) ** 2
    owner = dist.argmin(axis=0)
    classes = rng.choice(num_classes, size=num_segments, replace=False).astype(np.int64)
    masks = owner[None] == np.arange(num_segments)[:, None, None]
    return classes, masks


def random_images(num: int, height: int, width: int, seed: int) -> List[torch.Tensor]:
    """``num`` float32 (3, H, W) images of uniform noise in 0..255, image i seeded seed + i."""
    return [
        torch.rand((3, height, width), generator=torch.Generator().manual_seed(seed + i)) * 255
        for i in range(num)
    ]


def config_builder() -> str:
    """
    How the measured ``mask_former`` builds a config: "load_config" (the config builder),
    "get_mask_former_cfg" (older checkouts: the config factory) or "get_cfg" (older still).
    """
    import mask_former

    for name in ("load_config", "get_mask_former_cfg"):
        if hasattr(mask_former, name):
            return name
    return "get_cfg"


def load_cfg(config_file: str, opts: Sequence[str]):
    """
    The config of ``config_file`` with ``opts``: by ``mask_former.load_config`` where the
    measured checkout has it, else (older checkouts) by its config factory and a YAML merge.
    """
    import mask_former

    builder = config_builder()
    if builder == "load_config":
        return mask_former.load_config(config_file, opts, cpu_fallback=False)
    if builder == "get_mask_former_cfg":
        cfg = mask_former.get_mask_former_cfg()
    else:  # checkouts older than the one config factory
        from detectron2.config import get_cfg
        from detectron2.projects.deeplab import add_deeplab_config

        cfg = get_cfg()
        add_deeplab_config(cfg)
        mask_former.add_mask_former_config(cfg)
    # The original MaskFormer's configs compute MIN_SIZE_TRAIN with a YAML ``eval`` tag: a checkout
    # whose Python code the benchmark runs anyway may also evaluate its own config files.
    cfg.merge_from_file(config_file, allow_unsafe=builder == "get_cfg")
    cfg.merge_from_list(list(opts))
    return cfg


def build_seeded_model(case: Dict) -> torch.nn.Module:
    """The case's model: random init with its seed, or the shared weights file if it names one."""
    from detectron2.modeling import build_model

    cfg = load_cfg(case["config"], case["opts"])
    torch.manual_seed(case["seed"])
    model = build_model(cfg)
    weights = case.get("weights")
    if weights:
        state = torch.load(weights, map_location=cfg.MODEL.DEVICE, weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        case["_weights"] = {"missing": len(missing), "unexpected": len(unexpected)}
        del state
    return model


def save_seeded_weights(config_file: str, opts: Sequence[str], seed: int, path: str) -> None:
    """Write the seeded random init of a config to ``path`` (atomically), for both checkouts."""
    from detectron2.modeling import build_model

    cfg = load_cfg(config_file, list(opts) + ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(seed)
    state = build_model(cfg).state_dict()
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def autocast(case: Dict):
    """torch.autocast for the case's dtype (a no-op context for float32)."""
    if case["dtype"] == "float32":
        return contextlib.nullcontext()
    device_type = "cuda" if case["device"].startswith("cuda") else "cpu"
    return torch.autocast(device_type=device_type, dtype=getattr(torch, case["dtype"]))


class PartTimer:
    """
    Times the parts of a MaskFormer forward by wrapping, on the instances, ``model.forward``,
    ``backbone.forward``, ``pixel_decoder.forward_features`` and ``predictor.forward``; with
    ``count_flops`` set it also counts their FLOPs (torch's FlopCounterMode: 2 per
    multiply-accumulate of matrix products and convolutions).
    """

    def __init__(self, model: torch.nn.Module, device: str):
        self.device = device
        self.count_flops = False
        self.seconds: Dict[str, float] = {}
        self.flops: Dict[str, int] = {}
        head = model.sem_seg_head
        self._wrap(model, "forward", "total")
        self._wrap(model.backbone, "forward", PARTS[0])
        self._wrap(getattr(head, "pixel_decoder", None), "forward_features", PARTS[1])
        self._wrap(getattr(head, "predictor", None), "forward", PARTS[2])

    def _wrap(self, obj: Optional[object], method: str, part: str) -> None:
        if obj is None or not hasattr(obj, method):
            return
        original = getattr(obj, method)

        def timed(*args, **kwargs):
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False) if self.count_flops else None
            sync(self.device)
            start = time.perf_counter()
            with counter if counter is not None else contextlib.nullcontext():
                out = original(*args, **kwargs)
            sync(self.device)
            self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - start
            if counter is not None:
                self.flops[part] = self.flops.get(part, 0) + counter.get_total_flops()
            return out

        setattr(obj, method, timed)  # an instance attribute shadows the class's method

    def take(self) -> Dict[str, float]:
        """Seconds per part since the last call, with the rest as pre/post-processing."""
        parts, self.seconds = self.seconds, {}
        parts[POST] = parts.pop("total") - sum(parts.get(p, 0.0) for p in PARTS)
        return parts

    def take_flops(self) -> Dict[str, int]:
        """FLOPs per part counted since the last call, as :meth:`take` splits the time."""
        flops, self.flops = self.flops, {}
        flops[POST] = flops.pop("total") - sum(flops.get(p, 0) for p in PARTS)
        return flops


def _sem_seg_argmax(outputs: List[Dict]) -> np.ndarray:
    """(B, H, W) int16 class argmax of the "sem_seg" outputs of a batch."""
    return np.stack([o["sem_seg"].argmax(dim=0).to("cpu", torch.int16).numpy() for o in outputs])


def run_inference(case: Dict) -> Tuple[Dict, Dict[str, np.ndarray]]:
    """
    Latency of ``model(inputs)`` per batch size under torch.no_grad(); at batch 1 also the time
    and FLOPs of each part (the FLOPs counted in one more call before the warm-up calls).

    Returns:
        (dict, dict): timings by batch size, and the semantic argmax of each batch by name.
    """
    model = build_seeded_model(case).eval()
    # The part timer wraps forward methods with Python timing code, which a compiled model
    # would have to break its graph for (and recompile as the timer's dict changes): cases
    # without FLOP counting (the compiled ones) run the model unwrapped, without a part table.
    timer = PartTimer(model, case["device"]) if case.get("count_flops", True) else None
    h, w = case["height"], case["width"]
    result, arrays = {"batches": {}}, {}
    for batch, repeats in zip(case["batch_sizes"], case["repeats"]):
        images = random_images(batch, h, w, case["seed"])
        inputs = [{"image": x, "height": h, "width": w} for x in images]
        outputs, parts = [], []

        def call(inputs=inputs, outputs=outputs, parts=parts):
            outputs.clear()  # the last outputs would otherwise count in the peak memory
            with torch.no_grad(), autocast(case):
                outputs[:] = model(inputs)
            if timer is not None:
                parts.append(timer.take())

        first = None
        if case.get("first_call"):  # e.g. compiled inference: the first call compiles
            first = time_calls(call, 0, 1, case["device"])[0]
        count_flops = batch == 1 and case.get("count_flops", True)
        if count_flops:  # an extra call with the FLOP counter (which changes the kernels run)
            timer.count_flops = True
            call()
            timer.count_flops = False
        flops = timer.take_flops() if count_flops else None
        samples = time_calls(call, case["warmup"], repeats, case["device"])
        entry = {**summarize(samples), "images_per_s": batch / statistics.median(samples)}
        if first is not None:
            entry["first_call_s"] = first
        if count_flops:
            parts = parts[-repeats:]
            entry["parts"] = {p: summarize([s[p] for s in parts]) for p in parts[0]}
            entry["flops"] = flops
        result["batches"][str(batch)] = entry
        arrays[f"argmax_b{batch}"] = _sem_seg_argmax(outputs)
    return result, arrays


def train_inputs(case: Dict, num_classes: int) -> List[Dict]:
    """A batch of noise images with Voronoi targets of ``case["segments"]`` segments each."""
    from detectron2.structures import Instances

    h, w, seed = case["height"], case["width"], case["seed"]
    batch = []
    for i, image in enumerate(random_images(case["batch"], h, w, seed)):
        classes, masks = voronoi_segments(h, w, case["segments"], num_classes, seed + i)
        instances = Instances((h, w))
        instances.gt_classes = torch.from_numpy(classes)
        instances.gt_masks = torch.from_numpy(masks)
        batch.append({"image": image, "height": h, "width": w, "instances": instances})
    return batch


def run_train(case: Dict) -> Tuple[Dict, Dict[str, np.ndarray]]:
    """
    Forward and backward of the sum of the losses of one batch, repeated on the same batch and
    weights (no optimizer step; gradients dropped in between); the first ``warmup`` iterations
    are not timed. The random draws (point sampling) are reseeded before each iteration.

    Returns:
        (dict, dict): forward / backward / step timings and the losses of the first iteration.
    """
    model = build_seeded_model(case).train()
    batch = train_inputs(case, model.sem_seg_head.num_classes)
    times: Dict[str, List[float]] = {"forward": [], "backward": [], "step": []}
    first_losses: Dict[str, float] = {}
    for i in range(case["warmup"] + case["iters"]):
        torch.manual_seed(case["seed"] + 1)
        sync(case["device"])
        start = time.perf_counter()
        with autocast(case):
            losses = model(batch)
        total = sum(losses.values())
        sync(case["device"])
        middle = time.perf_counter()
        total.backward()
        sync(case["device"])
        end = time.perf_counter()
        model.zero_grad(set_to_none=True)
        if i == 0:
            first_losses = {k: float(v.detach()) for k, v in losses.items()}
        if i >= case["warmup"]:
            times["forward"].append(middle - start)
            times["backward"].append(end - middle)
            times["step"].append(end - start)
    result = {name: summarize(samples) for name, samples in times.items()}
    result["losses"] = first_losses
    return result, {}


def peak_memory(device: str) -> Dict[str, float]:
    """Peak resident memory of this process (MiB), and the CUDA allocator's peak on a GPU."""
    peak = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.startswith("cuda"):
        peak["cuda_mb"] = torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
    return peak


def run_case(case: Dict) -> Tuple[Dict, Dict[str, np.ndarray]]:
    """
    Run one case dict: ``kind`` ("inference" or "train"), ``config``, ``opts``, ``device``,
    ``dtype``, ``seed``, ``height``, ``width``, optional ``weights`` (a state-dict file), and for
    inference ``batch_sizes``, ``repeats`` (one per batch size) and ``warmup``, for
    training ``batch``, ``segments``, ``warmup`` and ``iters``; inference cases may set
    ``first_call`` (time the first call apart, before the warm-up) and ``count_flops`` False
    (no FLOP-counting call, no part table).

    Returns:
        (dict, dict): the result (with the peak memory and the package that ran) and arrays.
    """
    import mask_former

    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    run = {"inference": run_inference, "train": run_train}[case["kind"]]
    result, arrays = run(case)
    result["memory"] = peak_memory(case["device"])
    result["mask_former_file"] = os.path.abspath(mask_former.__file__)
    result["config_builder"] = config_builder()
    result["weights"] = case.pop("_weights", None)
    result["opts"] = list(case["opts"])
    return result, arrays


def main(argv: Sequence[str]) -> None:
    """Run the case file ``argv[0]``; check that the package came from the case's ``root``."""
    with open(argv[0]) as f:
        case = json.load(f)
    import mask_former

    root = os.path.realpath(case["root"])
    found = os.path.realpath(mask_former.__file__)
    if not found.startswith(root + os.sep):
        raise SystemExit(f"mask_former was imported from {found}, not from under {root}")
    logger.info("mask_former: %s", found)
    result, arrays = run_case(case)
    np.savez_compressed(case["arrays"], **arrays)
    with open(case["result"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(sys.argv[1:])
