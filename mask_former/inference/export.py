# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Export a MaskFormer's inference on one image to ONNX and run the graph in onnxruntime:
:func:`export_onnx` (the exported :class:`~.exportable.ExportableMaskFormer`), :func:`export`
(a config's model to a checked file with metadata, as ``tools/export_model.py`` writes it),
:func:`verify_export` (onnxruntime against PyTorch), :func:`onnx_session` and
:func:`onnx_latency` (the benchmark's timing).

Two exporters (:data:`EXPORTERS`): "dynamo", the default, ``torch.onnx.export(...,
dynamo=True)`` built on ``torch.export`` (with onnxscript), and "torchscript", the deprecated
TorchScript-based ``dynamo=False``, kept as a fallback. Both give the same inputs, outputs,
dynamic axes and results for every model here (ResNet and Swin backbones); each needs floor
division of sizes to round down for Swin (:func:`_floor_division_table`,
:func:`_floor_division_for_onnx`).

onnx, onnxruntime and onnxscript are imported only when a function needs them
(:func:`import_onnx_packages`), so importing this module (and ``mask_former``) never does.

Shape shorthand in this module: H, W image height and width.
"""

import contextlib
import importlib
import logging
import operator
import os
import time
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from ..checkpoint import load_model_weights
from ..modeling.meta_arch import MaskFormer
from ..utils import atomic_output_path
from .exportable import ExportableMaskFormer, last_layer_only

if TYPE_CHECKING:  # imported at run time only where needed, see import_onnx_packages
    import onnx_ir
    import onnxruntime

__all__ = [
    "DEFAULT_EXPORTER",
    "DEFAULT_OPSET",
    "EXPORTERS",
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
# The ONNX exporters of export_onnx: torch.export-based (the default), TorchScript-based.
EXPORTERS = ("dynamo", "torchscript")
DEFAULT_EXPORTER = "dynamo"
# The torch.export-based exporter's operator library is written for opset 18.
DEFAULT_OPSET = 18


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


def _floor_division_table() -> Dict[Callable, Callable]:
    """
    ``custom_translation_table`` of the torch.export-based exporter: Python's ``//`` on sizes
    (``operator.floordiv`` of SymInts) rounding down. onnxscript's own is a plain integer Div,
    which truncates and so is right for non-negative operands only; the Swin backbone's
    padded window grid ``-(-h // s) * s`` divides a negative size.
    """
    from onnxscript import INT64
    from onnxscript import opset18 as op

    def floordiv(a: INT64, b: INT64) -> INT64:
        # Mod with fmod=0 takes the divisor's sign, so a - a mod b is an exact multiple of b.
        return op.Div(op.Sub(a, op.Mod(a, b)), b)

    return {operator.floordiv: floordiv}


_EXPORTER_LOGGERS = ("onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet_export() -> Iterator[List[warnings.WarningMessage]]:
    """
    Within the block, no warning reaches the user (they are collected in the list yielded;
    the caller logs them at debug level) and the loggers of the dynamo exporter's graph
    passes (:data:`_EXPORTER_LOGGERS`) log errors only: they report each rewrite (one line per
    deduplicated initializer, each multi-output op not folded), nothing a user acts on.
    """
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def _export_dynamo(
    wrapper: ExportableMaskFormer, sample: torch.Tensor, path: str, opset: int
) -> None:
    """``torch.onnx.export(..., dynamo=True)``: torch.export with dynamic height and width."""
    rank = sample.dim()
    height, width = torch.export.Dim("height", min=1), torch.export.Dim("width", min=1)
    program = torch.onnx.export(
        wrapper,
        (sample,),
        dynamo=True,
        opset_version=opset,
        input_names=["image"],
        output_names=list(wrapper.output_names),
        dynamic_shapes={"image": {rank - 2: height, rank - 1: width}},
        custom_translation_table=_floor_division_table(),
        verbose=False,
    )
    _name_output_axes(program.model, _dynamic_axes(wrapper, rank))
    program.save(path)


def _name_output_axes(model: "onnx_ir.Model", axes: Dict[str, Dict[int, str]]) -> None:
    """
    Name the outputs' dynamic axes as the TorchScript exporter does ("height", ...):
    torch.export writes their formulas, such as ``Min(height, 32*((height + 31)//32))``.
    """
    import onnx_ir

    for value in model.graph.outputs:
        dims = list(value.shape)
        for axis, name in axes.get(value.name, {}).items():
            dims[axis] = name
        value.shape = onnx_ir.Shape(dims)


def _export_torchscript(
    wrapper: ExportableMaskFormer, sample: torch.Tensor, path: str, opset: int
) -> None:
    """The deprecated TorchScript-based exporter (``dynamo=False``), ``//`` rounding down."""
    with _floor_division_for_onnx(opset):
        torch.onnx.export(
            wrapper,
            (sample,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=list(wrapper.output_names),
            dynamic_axes=_dynamic_axes(wrapper, sample.dim()),
        )


def export_onnx(
    model: MaskFormer,
    path: str,
    *,
    raw_outputs: bool = False,
    batched: bool = False,
    opset: int = DEFAULT_OPSET,
    sample_size: Sequence[int] = SAMPLE_SIZE,
    exporter: str = DEFAULT_EXPORTER,
) -> ExportableMaskFormer:
    """
    Export ``model``'s inference on one image to an ONNX file, image height and width dynamic.

    ``exporter`` "dynamo" (the default) is ``torch.onnx.export(..., dynamo=True)``, built on
    ``torch.export`` (needs onnxscript): height and width are declared with
    ``torch.export.Dim`` (any size from 1), ``//`` on sizes rounds down
    (:func:`_floor_division_table`) and the wrapper pads with symbolic sizes
    (``ExportableMaskFormer.preprocess``). "torchscript" is
    the deprecated TorchScript-based exporter (``dynamo=False``), kept as a fallback: both
    export every model here (R50-like ResNet with either pixel decoder, Swin) with the same
    inputs, outputs and results; the fallback is for a torch or onnxscript version whose
    torch.export path fails on some model. The exporters' warnings (the TorchScript one's
    DeprecationWarning included) are logged at debug level, not shown.

    Args:
        model: the MaskFormer to export (any device; its weights are saved in the graph).
        path: the ONNX file to write.
        raw_outputs: export (pred_logits, pred_masks) instead of "sem_seg".
        batched: the graph's input is (1, 3, H, W) instead of (3, H, W).
        opset: ONNX opset version.
        sample_size: (H, W) of the random image traced; the graph works for any size.
        exporter: "dynamo" or "torchscript" (:data:`EXPORTERS`).
    Returns:
        the exported :class:`ExportableMaskFormer` (in eval mode).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    wrapper = ExportableMaskFormer(model, raw_outputs=raw_outputs)
    shape = (1, 3, *sample_size) if batched else (3, *sample_size)
    generator = torch.Generator().manual_seed(0)
    sample = (torch.rand(shape, generator=generator) * 255).to(model.device)
    run = _export_dynamo if exporter == "dynamo" else _export_torchscript
    with torch.no_grad(), last_layer_only(model), _quiet_export() as caught:
        run(wrapper, sample, path, opset)
    # The TorchScript tracer warns where shapes become Python values; none of them varies
    # with the image size (channel counts, fixed loops), which the export test checks at
    # several sizes.
    logger.debug(
        "ONNX export (%s): %d warnings: %s",
        exporter,
        len(caught),
        sorted({w.category.__name__ for w in caught}),
    )
    return wrapper


class MissingPackageError(ImportError):
    """onnx, onnxruntime or (for the default exporter) onnxscript is not installed."""


def _import(name: str) -> ModuleType:
    """``import name``, or a :class:`MissingPackageError` that says how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise MissingPackageError(
            f"ONNX export needs the '{name}' package, which cannot be imported "
            f"({e}). Install the interop requirements: pip install -r "
            "requirements/interop.txt (`make setup` does)."
        ) from e


def import_onnx_packages(exporter: Optional[str] = None) -> Tuple[ModuleType, ModuleType]:
    """
    (onnx, onnxruntime), imported here so that the rest of the project never needs them;
    with ``exporter`` "dynamo", onnxscript (the torch.export-based exporter's) too.
    """
    modules = _import("onnx"), _import("onnxruntime")
    if exporter == "dynamo":
        _import("onnxscript")
    return modules


def load_model(cfg: CfgNode) -> MaskFormer:
    """
    Build the model of ``cfg`` in eval mode with MODEL.WEIGHTS (random init if empty), which
    must fit the model unless MODEL.ALLOW_PARTIAL_WEIGHTS (``load_model_weights``).

    Raises:
        mask_former.checkpoint.CheckpointError: unreadable weights, or weights that do not fit.
        mask_former.checkpoint.UntrustedCheckpointError: a file that needs more than plain data.
    """
    model = build_model(cfg)
    if not isinstance(model, MaskFormer):
        raise ValueError(
            f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r} is not MaskFormer: only "
            "MaskFormer models are exported"
        )
    load_model_weights(model, cfg.MODEL.WEIGHTS, allow_partial=cfg.MODEL.ALLOW_PARTIAL_WEIGHTS)
    return model.eval()


def graph_metadata(
    cfg: CfgNode,
    wrapper: ExportableMaskFormer,
    batched: bool,
    exporter: str = DEFAULT_EXPORTER,
) -> Dict[str, str]:
    """What a user of the graph needs to know, stored in the ONNX file's metadata_props."""
    model = wrapper.model
    return {
        "input": "image (1, 3, H, W)" if batched else "image (3, H, W)",
        "input_format": cfg.INPUT.FORMAT,
        "outputs": ",".join(wrapper.output_names),
        "size_divisibility": str(model.size_divisibility),
        "num_classes": str(model.sem_seg_head.num_classes),
        "weights": cfg.MODEL.WEIGHTS,
        "exporter": exporter,
    }


def _write_metadata(onnx: ModuleType, path: str, entries: Dict[str, str]) -> None:
    """Add ``entries`` to the metadata_props of the ONNX file at ``path`` (in place)."""
    proto = onnx.load(path, load_external_data=False)
    for key, value in entries.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(proto, path)


def export(
    cfg: CfgNode,
    output: str,
    *,
    raw_outputs: bool = False,
    batched: bool = False,
    opset: int = DEFAULT_OPSET,
    exporter: str = DEFAULT_EXPORTER,
) -> ExportableMaskFormer:
    """
    Export the model of ``cfg`` to ``output`` (written atomically) with ``exporter`` (see
    :func:`export_onnx`), with its metadata, and check the file with onnx. Returns the
    exported wrapper (for verification).
    """
    onnx, _ = import_onnx_packages(exporter)
    model = load_model(cfg)
    start = time.perf_counter()
    with atomic_output_path(output) as tmp:
        wrapper = export_onnx(
            model, tmp, raw_outputs=raw_outputs, batched=batched, opset=opset, exporter=exporter
        )
        _write_metadata(onnx, tmp, graph_metadata(cfg, wrapper, batched, exporter))
        onnx.checker.check_model(tmp)
    size_mb = os.path.getsize(output) / 2**20
    logger.info(
        "Exported %s with the %s exporter (%.1f MB, outputs %s) in %.1f s",
        output,
        exporter,
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
    from ..benchmark import time_calls  # the project's one timing loop

    return time_calls(lambda: session.run(None, feed), warmup, repeats, "cpu")


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
