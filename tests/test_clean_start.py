# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
A clean start: the entry points (``train_net.py``, ``demo/demo.py``, ``tools/*.py``) print no
warning of the project's dependencies, with every warning enabled (``python -W default``), on
``--help`` and on short normal runs; every tool's ``--help`` says what the tool does; and on a
machine without CUDA no "No CUDA runtime is found, using CUDA_HOME=..." line appears. The project's
own deliberate warnings are log records ("WARNING [...]"), never ``...Warning:`` lines.
"""

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.paths import REPO_ROOT

TOOLS = sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "tools").glob("*.py"))
ENTRY_POINTS = ["train_net.py", "demo/demo.py"] + TOOLS
SHAPES_CONFIG = "configs/shapes/maskformer_R18_bs8_1200.yaml"

# A warning printed by the warnings module: "<file>:<line>: FutureWarning: <message>".
_WARNING_LINE = re.compile(r"\w*Warning: ")
_NO_CUDA_RUNTIME = "No CUDA runtime is found"


def _run(args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-W", "default"] + list(args),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _assert_clean(proc: subprocess.CompletedProcess) -> str:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    warnings = [line for line in output.splitlines() if _WARNING_LINE.search(line)]
    assert not warnings, "\n".join(warnings)
    assert _NO_CUDA_RUNTIME not in output, output[-3000:]
    return output


def _description(help_text: str) -> str:
    """The paragraph between argparse's usage and its first section ("options:", ...)."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", help_text) if p.strip()]
    assert paragraphs and paragraphs[0].startswith("usage:"), help_text[:500]
    following = paragraphs[1] if len(paragraphs) > 1 else ""
    is_section = re.match(r"^[\w ]+:\n", following + "\n") is not None
    return "" if is_section else following


@pytest.fixture(scope="module")
def help_runs():
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = pool.map(lambda script: _run([script, "--help"]), ENTRY_POINTS)
        return dict(zip(ENTRY_POINTS, runs))


def test_every_tool_is_covered():
    # The list is read from the folder: a new tool is checked without editing this file.
    assert "tools/analyze_model.py" in TOOLS and "tools/check_dataset.py" in TOOLS
    assert len(TOOLS) >= 8


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help_exits_cleanly_without_warnings(help_runs, script):
    output = _assert_clean(help_runs[script])
    assert "usage:" in output


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help_describes_the_tool(help_runs, script):
    description = _description(help_runs[script].stdout)
    assert len(description.split()) >= 4, f"{script} --help has no description:\n{description}"


def test_description_helper_tells_a_missing_description():
    # The check above would fail for a parser without a description.
    import argparse

    bare = argparse.ArgumentParser(prog="x")
    bare.add_argument("input")
    described = argparse.ArgumentParser(prog="x", description="Convert one thing into another.")
    described.add_argument("input")
    assert _description(bare.format_help()) == ""
    assert _description(described.format_help()) == "Convert one thing into another."


def test_analyze_model_parameter_count_runs_cleanly():
    output = _assert_clean(
        _run(
            [
                "tools/analyze_model.py",
                "--tasks",
                "parameter",
                "--config-file",
                SHAPES_CONFIG,
                "MODEL.WEIGHTS",
                "",
                "MODEL.DEVICE",
                "cpu",
            ]
        )
    )
    assert "sem_seg_head.predictor.query_embed" in output


def test_demo_on_one_image_runs_cleanly(tmp_path):
    image = tmp_path / "image.png"
    pixels = np.random.RandomState(0).randint(0, 256, size=(48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    out_dir = tmp_path / "drawn"
    _assert_clean(
        _run(
            [
                "demo/demo.py",
                "--config-file",
                SHAPES_CONFIG,
                "--input",
                str(image),
                "--output",
                str(out_dir),
                "--opts",
                "MODEL.WEIGHTS",
                "",
                "MODEL.DEVICE",
                "cpu",
            ]
        )
    )
    with Image.open(out_dir / "image.png") as drawn:
        assert drawn.size == (64, 48)


def test_train_net_setup_logs_environment_without_cuda_home_noise(tmp_path):
    # The set-up stage of a train_net.py run (the function its main() calls): it logs the
    # environment table, which on a machine without CUDA must not import torch's cpp_extension.
    code = f"""
import sys, torch
from detectron2.engine import default_argument_parser
import train_net
args = default_argument_parser().parse_args(
    ["--config-file", {SHAPES_CONFIG!r}, "OUTPUT_DIR", {str(tmp_path)!r}, "MODEL.DEVICE", "cpu"]
)
train_net.setup(args)
print("CUDA", torch.cuda.is_available())
print("CPP_EXTENSION", "torch.utils.cpp_extension" in sys.modules)
"""
    output = _assert_clean(_run(["-c", code]))
    assert "Environment info:" in output and "PyTorch" in output
    assert (tmp_path / "config.yaml").is_file()
    if "CUDA False" in output:
        assert "CPP_EXTENSION False" in output, output[-2000:]
