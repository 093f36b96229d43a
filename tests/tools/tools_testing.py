# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Shared helpers of the tests of configs/, demo/ and tools/."""

import importlib.util
import sys

from torch import nn

from tests.paths import REPO_ROOT


def load_script(relative_path: str):
    """Import a script of the repository (e.g. ``tools/convert-torchvision-to-d2.py``)."""
    path = REPO_ROOT / relative_path
    name = "_script_" + path.stem.replace("-", "_")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class WithBackbone(nn.Module):
    """Names a backbone's weights "backbone.*", as in a full model (for suffix matching)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
