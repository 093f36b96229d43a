# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Fixtures of the tests of configs/, demo/ and tools/."""

import pytest
from tools_testing import load_script


@pytest.fixture
def tool():
    """``tool("analyze_model")`` imports ``tools/analyze_model.py`` as a module."""
    return lambda name: load_script(f"tools/{name}.py")
