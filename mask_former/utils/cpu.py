# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""What the CPU computes natively: decides whether CPU mixed precision (bfloat16) pays off."""

import torch

__all__ = ["cpu_capability", "cpu_supports_native_bfloat16"]


def cpu_capability() -> str:
    """The instruction set PyTorch dispatches CPU kernels to, e.g. "AVX2", "AVX512" or "DEFAULT"."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_supports_native_bfloat16() -> bool:
    """
    Whether oneDNN has native bfloat16 kernels (convolutions, matrix products) for this CPU:
    PyTorch's own check, true on x86 from AVX512 (BW, VL, DQ; fastest with AVX512_BF16 or AMX)
    and on Arm with the BF16 extension. Elsewhere (e.g. AVX2) bfloat16 is converted to and from
    float32 around float32 kernels, and a bfloat16 autocast training step is about 12x slower
    than a float32 one.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
