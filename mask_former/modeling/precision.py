# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Numerical precision of the model's two halves:

* inference: the autocast dtype that MODEL.MASK_FORMER.TEST.PRECISION asks for, given the device
  the model runs on and, on the CPU, whether it computes bfloat16 natively;
* training: the matcher and the criterion convert the head's outputs to float32
  (:func:`float_outputs`), so that costs and losses are computed in full precision also when the
  network ran under autocast (SOLVER.AMP.ENABLED).
"""

import logging
from typing import Dict, Optional, Set, Tuple

import torch

from ..utils.cpu import cpu_capability, cpu_supports_native_bfloat16

__all__ = [
    "INFERENCE_PRECISIONS",
    "check_inference_precision",
    "float_outputs",
    "inference_autocast_dtype",
]

logger = logging.getLogger(__name__)

INFERENCE_PRECISIONS = ("float32", "bfloat16", "float16", "auto")
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_warned: Set[Tuple[str, str]] = set()
_told: Set[Tuple[str, Optional[torch.dtype]]] = set()


def check_inference_precision(precision: str) -> str:
    """``precision`` if it is one of INFERENCE_PRECISIONS, else a ValueError naming the key."""
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(
            f"MODEL.MASK_FORMER.TEST.PRECISION = {precision!r}: expected one of "
            f"{', '.join(INFERENCE_PRECISIONS)}"
        )
    return precision


def _warn_once(precision: str, device_type: str, why: str) -> None:
    if (precision, device_type) not in _warned:
        _warned.add((precision, device_type))
        logger.warning(
            "MODEL.MASK_FORMER.TEST.PRECISION %s: %s; inference runs in float32.", precision, why
        )


def _auto_dtype(device_type: str) -> Optional[torch.dtype]:
    """
    "auto": the fastest precision the hardware computes natively. CUDA: bfloat16 where the GPU
    supports it, else float16; CPU: bfloat16 where the CPU computes it natively (AVX512-BF16,
    AMX), else float32 (on AVX2, bfloat16 runs several times slower than float32). Logged once
    per device type and outcome.
    """
    if device_type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        why = "the GPU's autocast dtype"
    elif device_type == "cpu" and cpu_supports_native_bfloat16():
        dtype, why = torch.bfloat16, f"this CPU ({cpu_capability()}) computes it natively"
    elif device_type == "cpu":
        dtype, why = None, f"this CPU ({cpu_capability()}) has no native bfloat16"
    else:
        dtype, why = None, f"no autocast on device type {device_type!r}"
    if (device_type, dtype) not in _told:
        _told.add((device_type, dtype))
        name = "float32" if dtype is None else str(dtype).replace("torch.", "")
        logger.info("MODEL.MASK_FORMER.TEST.PRECISION auto: inference in %s (%s)", name, why)
    return dtype


def inference_autocast_dtype(precision: str, device_type: str) -> Optional[torch.dtype]:
    """
    The autocast dtype of the network (backbone and head) in inference, or None for float32.
    float16 and bfloat16 run on CUDA; on the CPU only bfloat16, and only where the CPU computes
    it natively (elsewhere it is several times slower than float32): otherwise float32, with one
    warning per precision and device type. "auto" picks by hardware (:func:`_auto_dtype`).
    """
    check_inference_precision(precision)
    if precision == "float32":
        return None
    if precision == "auto":
        return _auto_dtype(device_type)
    if device_type == "cuda":
        return _DTYPES[precision]
    if device_type == "cpu" and precision == "bfloat16":
        if cpu_supports_native_bfloat16():
            return torch.bfloat16
        _warn_once(precision, device_type, f"this CPU ({cpu_capability()}) has no native bfloat16")
        return None
    _warn_once(precision, device_type, f"not supported on device type {device_type!r}")
    return None


def float_outputs(outputs: Dict[str, object]) -> Dict[str, object]:
    """
    ``outputs`` with every tensor, also those of ``outputs["aux_outputs"]``, in float32: costs
    and losses are computed in full precision even when the model ran under autocast.
    """
    converted = {}
    for key, value in outputs.items():
        if isinstance(value, torch.Tensor):
            value = value.float()
        elif key == "aux_outputs":
            value = [float_outputs(aux) for aux in value]
        converted[key] = value
    return converted
