# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The tests' root conftest. Paths live in tests/paths.py; REPO_ROOT stays importable from here
for modules that still import it from the conftest.
"""

from tests.paths import REPO_ROOT  # noqa: F401
