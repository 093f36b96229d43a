# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Small helpers shared by the command-line entry points (demo/, tools/)."""

from .atomic_io import atomic_output_path, atomic_write, remove_stale_temporaries
from .device import fall_back_to_cpu

__all__ = [
    "atomic_output_path",
    "atomic_write",
    "fall_back_to_cpu",
    "remove_stale_temporaries",
]
