# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Export a MaskFormer's inference on one image to ONNX and run the graph in onnxruntime:
:func:`export_onnx` (the traced :class:`~.exportable.ExportableMaskFormer`), :func:`export`
(a config's model to a checked file with metadata, as ``tools/export_model.py`` writes it),
:func:`verify_export` (onnxruntime against PyTorch), :func:`onnx_session` and
:func:`onnx_latency` (the benchmark's timing).

onnx and onnxruntime are imported only when a function needs them
(:func:`import_onnx_packages`), so importing this module (and ``mask_former``) never does.

Shape shorthand in this module: H, W image height and width.
"""

import contextlib
import logging
import os
import time
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from ..modeling.meta_arch import MaskFormer
from ..utils import atomic_output_path
from .exportable import ExportableMaskFormer, last_layer_only

if TYPE_CHECKING:  # imported at run time only where needed, see import_onnx_packages
    import onnxruntime

__all__ = [
    "MissingPackageError",
    "VERIFY_SIZES",
    "VERIFY_TOLERANCE",
    "export",
    "export_onnx",
    "graph_metadata",
    "import_onnx_packages",
    "load_model",
    "onnx_latency",
    "onnx_session",
    "verify_export",
]

logger = logging.getLogger(__name__)

# The image size traced by default: not a multiple of 32, so that the padding is exercised.
SAMPLE_SIZE = (200, 300)
# Sizes of the verification images: not multiples of 32, and different from the traced size.
VERIFY_SIZES = ((237, 181), (150, 333))
# Largest accepted difference between onnxruntime and PyTorch, relative to max(1, max |value|).
VERIFY_TOLERANCE = 1e-4


def _is_float(value: torch._C.Value) -> bool:
    """Whether a TorchScript graph value is a floating-point tensor (False when unknown)."""
    scalar_type = getattr(value.type(), "scalarType", lambda: None)()
    return scalar_type in ("Float", "Double", "Half", "BFloat16")


def _floor_divide_symbolic(g, a: torch._C.Value, b: torch._C.Value) -> torch._C.Value:
    """
    ONNX for ``aten::floor_divide`` that rounds down, as Python's ``//`` does. The TorchScript
    exporter's own truncates, which breaks size arithmetic such as ``-(-h // s) * s`` (the
    Swin backbone's padded window grid) for every size that is not a multiple of ``s``.
    """
    if _is_float(a) or _is_float(b):
        a, b = g.op("Cast", a, to_i=1), g.op("Cast", b, to_i=1)  # 1: FLOAT
        return g.op("Floor", g.op("Div", a, b))
    # Mod with fmod=0 takes the divisor's sign, so a - a mod b is an exact multiple of b.
    return g.op("Div", g.op("Sub", a, g.op("Mod", a, b, fmod_i=0)), b)


@contextlib.contextmanager
def _floor_division_for_onnx(opset: int) -> Iterator[None]:
    """Within the block, the TorchScript ONNX exporter exports ``//`` rounding down."""
    torch.onnx.register_custom_op_symbolic("aten::floor_divide", _floor_divide_symbolic, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::floor_divide", opset)


def _dynamic_axes(wrapper: ExportableMaskFormer, rank: int) -> Dict[str, Dict[int, str]]:
    """Names of the dynamic axes of the graph's input and outputs."""
    axes = {"image": {rank - 2: "height", rank - 1: "width"}}
    if wrapper.raw_outputs:
        axes["pred_masks"] = {1: "mask_height", 2: "mask_width"}
    else:
        axes["sem_seg"] = {1: "height", 2: "width"}
    return axes


def export_onnx(
    model: MaskFormer,
    path: str,
    *,
    raw_outputs: bool = False,
    batched: bool = False,
    opset: int = 17,
    sample_size: Sequence[int] = SAMPLE_SIZE,
) -> ExportableMaskFormer:
    """
    Export ``model``'s inference on one image to an ONNX file with the TorchScript-based
    exporter (``torch.onnx.export(..., dynamo=False)``), image height and width dynamic.

    Args:
        model: the MaskFormer to export (any device; its weights are saved in the graph).
        path: the ONNX file to write.
        raw_outputs: export (pred_logits, pred_masks) instead of "sem_seg".
        batched: the graph's input is (1, 3, H, W) instead of (3, H, W).
        opset: ONNX opset version.
        sample_size: (H, W) of the random image traced; the graph works for any size.
    Returns:
        the exported :class:`ExportableMaskFormer` (in eval mode).
    """
    wrapper = ExportableMaskFormer(model, raw_outputs=raw_outputs)
    shape = (1, 3, *sample_size) if batched else (3, *sample_size)
    generator = torch.Generator().manual_seed(0)
    sample = (torch.rand(shape, generator=generator) * 255).to(model.device)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(last_layer_only(model))
        stack.enter_context(_floor_division_for_onnx(opset))
        caught = stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("always")
        torch.onnx.export(
            wrapper,
            (sample,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=list(wrapper.output_names),
            dynamic_axes=_dynamic_axes(wrapper, len(shape)),
        )
    # The tracer warns where shapes become Python values; none of them varies with the image
    # size (channel counts, fixed loops), which the export test checks at several sizes.
    logger.debug(
        "ONNX export: %d warnings: %s", len(caught), sorted({w.category.__name__ for w in caught})
    )
    return wrapper


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
                f"ONNX export needs the '{name}' package, which cannot be imported "
                f"({e}). Install the interop requirements: pip install -r "
                "requirements/interop.txt (`make setup` does)."
            ) from e
    return modules[0], modules[1]


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


def graph_metadata(cfg: CfgNode, wrapper: ExportableMaskFormer, batched: bool) -> Dict[str, str]:
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
        _write_metadata(onnx, tmp, graph_metadata(cfg, wrapper, batched))
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
