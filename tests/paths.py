# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Where the tests find the repository and the reference fixtures. The one place that names
``../shared/reference``: every test module imports these (``from tests.paths import ...``).
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
# Numerical ground truth of the original implementation (see its README.md).
REFERENCE = SHARED / "reference"
MODEL_ZOO_KEYS = REFERENCE / "model_zoo_keys"
TINY_SWIN_SEMANTIC = REFERENCE / "tiny_swin_semantic"
CONFIGS = REPO_ROOT / "configs"
