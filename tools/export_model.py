#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Export a MaskFormer's inference on one image to ONNX, with dynamic image height and width.

The graph takes one float32 image, (3, H, W) (or (1, 3, H, W) with ``--batched``), values 0 to
255 in the config's INPUT.FORMAT channel order, as the model's "image" entry takes it; the
normalisation and the padding to MODEL.MASK_FORMER.SIZE_DIVISIBILITY happen inside the graph.
It returns "sem_seg" (K, H, W), the semantic scores at the input size, or with
``--raw-outputs`` "pred_logits" (Q, K + 1) and "pred_masks" (Q, Hp/4, Wp/4) (Hp, Wp: the padded
size) for panoptic or instance post-processing in Python (``mask_former.export.raw_mask_logits``
and ``mask_former.modeling.inference``). After the export the graph is checked with onnx and
run with onnxruntime on random images of two sizes against PyTorch (``--no-verify`` skips it).

Usage:
    python tools/export_model.py --config-file configs/ade20k-150/maskformer_R50_bs16_160k.yaml \
        --output model.onnx [--raw-outputs] [--batched] [--opts MODEL.WEIGHTS model.pkl]

The benchmark times an exported graph with :func:`onnx_latency`.
"""

import argparse
import logging
import os
import sys
import time
from types import ModuleType
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from mask_former import get_mask_former_cfg
from mask_former.export import ExportableMaskFormer, export_onnx
from mask_former.modeling import MaskFormer
from mask_former.utils import atomic_output_path, fall_back_to_cpu

if TYPE_CHECKING:  # imported at run time only where needed, see import_onnx_packages
    import onnxruntime

__all__ = ["export", "onnx_latency", "onnx_session", "verify_export", "main"]

logger = logging.getLogger("mask_former.export_model")

# Sizes of the verification images: not multiples of 32, and different from the traced size.
VERIFY_SIZES = ((237, 181), (150, 333))
# Largest accepted difference between onnxruntime and PyTorch, relative to max(1, max |value|).
VERIFY_TOLERANCE = 1e-4


class MissingPackageError(ImportError):
    """onnx or onnxruntime is not installed."""


def import_onnx_packages() -> Tuple[ModuleType, ModuleType]:
    """(onnx, onnxruntime), imported here so that the rest of the project never needs them."""
    modules = []
    for name in ("onnx", "onnxruntime"):
        try:
            modules.append(__import__(name))
        except ImportError as e:
            raise MissingPackageError(
                f"tools/export_model.py needs the '{name}' package, which cannot be imported "
                f"({e}). Install the interop requirements: pip install -r "
                "requirements/interop.txt (`make setup` does)."
            ) from e
    return modules[0], modules[1]


def setup_cfg(config_file: str, opts: Sequence[str]) -> CfgNode:
    """The frozen config: file, then ``opts``; CUDA falls back to the CPU where missing."""
    cfg = get_mask_former_cfg()
    cfg.merge_from_file(config_file, allow_unsafe=False)
    cfg.merge_from_list(list(opts))
    fall_back_to_cpu(cfg)
    cfg.freeze()
    return cfg


def load_model(cfg: CfgNode) -> MaskFormer:
    """Build the model of ``cfg`` in eval mode with MODEL.WEIGHTS (random init if empty)."""
    model = build_model(cfg)
    if not isinstance(model, MaskFormer):
        raise ValueError(
            f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r} is not MaskFormer: only "
            "MaskFormer models are exported"
        )
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting randomly initialised weights")
    return model.eval()


def metadata(cfg: CfgNode, wrapper: ExportableMaskFormer, batched: bool) -> Dict[str, str]:
    """What a user of the graph needs to know, stored in the ONNX file's metadata_props."""
    model = wrapper.model
    return {
        "input": "image (1, 3, H, W)" if batched else "image (3, H, W)",
        "input_format": cfg.INPUT.FORMAT,
        "outputs": ",".join(wrapper.output_names),
        "size_divisibility": str(model.size_divisibility),
        "num_classes": str(model.sem_seg_head.num_classes),
        "weights": cfg.MODEL.WEIGHTS,
    }


def _write_metadata(onnx: ModuleType, path: str, entries: Dict[str, str]) -> None:
    """Add ``entries`` to the metadata_props of the ONNX file at ``path`` (in place)."""
    proto = onnx.load(path, load_external_data=False)
    for key, value in entries.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(proto, path)


def export(
    cfg: CfgNode, output: str, *, raw_outputs: bool = False, batched: bool = False, opset: int = 17
) -> ExportableMaskFormer:
    """
    Export the model of ``cfg`` to ``output`` (written atomically), with its metadata, and
    check the file with onnx. Returns the exported wrapper (for verification).
    """
    onnx, _ = import_onnx_packages()
    model = load_model(cfg)
    start = time.perf_counter()
    with atomic_output_path(output) as tmp:
        wrapper = export_onnx(model, tmp, raw_outputs=raw_outputs, batched=batched, opset=opset)
        _write_metadata(onnx, tmp, metadata(cfg, wrapper, batched))
        onnx.checker.check_model(tmp)
    size_mb = os.path.getsize(output) / 2**20
    logger.info(
        "Exported %s (%.1f MB, outputs %s) in %.1f s",
        output,
        size_mb,
        ", ".join(wrapper.output_names),
        time.perf_counter() - start,
    )
    return wrapper


def onnx_session(
    onnx_path: str, threads: Optional[int] = None, providers: Optional[Sequence[str]] = None
) -> "onnxruntime.InferenceSession":
    """An onnxruntime InferenceSession (CPU unless ``providers``; ``threads`` intra-op)."""
    _, ort = import_onnx_packages()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(
        onnx_path, options, providers=list(providers or ["CPUExecutionProvider"])
    )


def _random_image(
    session: "onnxruntime.InferenceSession", height: int, width: int, seed: int
) -> np.ndarray:
    """A float32 image 0..255 of (height, width) with the rank the session's input has."""
    rank = len(session.get_inputs()[0].shape)
    shape = (1,) * (rank - 3) + (3, height, width)
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


def onnx_latency(
    onnx_path: str,
    height: int,
    width: int,
    *,
    warmup: int = 2,
    repeats: int = 10,
    threads: Optional[int] = None,
    providers: Optional[Sequence[str]] = None,
    seed: int = 0,
) -> List[float]:
    """
    Seconds of each of ``repeats`` onnxruntime runs of an exported graph on one random image
    of (height, width) (after ``warmup`` untimed runs); the session is created once, before.

    Args:
        onnx_path: a file written by this tool.
        height, width: the image size (any; the graph pads it).
        warmup, repeats: untimed and timed runs.
        threads: onnxruntime intra-op threads (None: onnxruntime's default, all cores).
        providers: onnxruntime execution providers (default: the CPU).
        seed: of the random image.
    """
    session = onnx_session(onnx_path, threads, providers)
    feed = {session.get_inputs()[0].name: _random_image(session, height, width, seed)}
    samples = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        session.run(None, feed)
        if i >= warmup:
            samples.append(time.perf_counter() - start)
    return samples


@torch.no_grad()
def verify_export(
    onnx_path: str, wrapper: ExportableMaskFormer, sizes: Sequence[Tuple[int, int]] = VERIFY_SIZES
) -> List[float]:
    """
    Run the graph in onnxruntime and ``wrapper`` (the PyTorch model it was exported from) on
    one random image of each (H, W) in ``sizes``; returns the largest absolute difference of
    the outputs at each size, relative to max(1, largest |value|).
    """
    session = onnx_session(onnx_path, threads=torch.get_num_threads())
    device = wrapper.model.device
    errors = []
    for seed, (height, width) in enumerate(sizes):
        image = _random_image(session, height, width, seed)
        got = session.run(None, {session.get_inputs()[0].name: image})
        expected = wrapper(torch.from_numpy(image).to(device))
        error = 0.0
        for name, a, b in zip(wrapper.output_names, got, expected):
            b = b.cpu().numpy()
            if a.shape != b.shape:
                raise AssertionError(f"{name}: onnxruntime gives {a.shape}, PyTorch {b.shape}")
            scale = max(1.0, float(np.abs(b).max(initial=0.0)))
            error = max(error, float(np.abs(a - b).max(initial=0.0)) / scale)
        logger.info(
            "Image %dx%d: onnxruntime vs PyTorch, max difference %.3g", height, width, error
        )
        errors.append(error)
    return errors


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config")
    parser.add_argument("--output", required=True, metavar="FILE", help="ONNX file to write")
    parser.add_argument(
        "--raw-outputs",
        action="store_true",
        help="return pred_logits (Q, K+1) and pred_masks (Q, Hp/4, Wp/4) instead of sem_seg",
    )
    parser.add_argument(
        "--batched", action="store_true", help="the input is (1, 3, H, W) instead of (3, H, W)"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the onnxruntime vs PyTorch comparison"
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pkl",
    )
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Export (and verify); 0 on success, 1 if the verification fails, 2 if a package lacks."""
    args = get_parser().parse_args(argv)
    setup_logger(name="mask_former")
    try:
        import_onnx_packages()
    except MissingPackageError as e:
        logger.error("%s", e)
        return 2
    cfg = setup_cfg(args.config_file, args.opts)
    wrapper = export(
        cfg, args.output, raw_outputs=args.raw_outputs, batched=args.batched, opset=args.opset
    )
    if args.no_verify:
        return 0
    errors = verify_export(args.output, wrapper)
    if max(errors) > VERIFY_TOLERANCE:
        logger.error(
            "onnxruntime and PyTorch differ by up to %.3g (relative), more than %g: the graph "
            "is written but its results are not those of the model",
            max(errors),
            VERIFY_TOLERANCE,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
