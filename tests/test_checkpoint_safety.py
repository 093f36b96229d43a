# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Untrusted checkpoints: a .pkl or .pth whose unpickling would run code is refused on every path
that loads weights (the demo, ``train_net.py --eval-only``, the trainer's resume,
tools/analyze_model.py, ``mask_former.Predictor``, detectron2's ``DefaultPredictor``), with the
file and the refused global named and nothing run; plain model-zoo files and the project's own
checkpoints still load without any trust flag, and ``MASK_FORMER_TRUST_CHECKPOINTS=1`` allows a
full unpickle.
"""

import argparse
import collections
import importlib.util
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

import mask_former
import train_net
from mask_former.checkpoint import TRUST_ENV, TrainingCheckpointer, UntrustedCheckpointError
from mask_former.config import load_config
from tests.paths import REPO_ROOT

CONFIG = "configs/shapes/maskformer_panoptic_R18_bs8_1200.yaml"
# The global a pickle names for ``open`` ("io.open"), which the restricted unpickler refuses.
OPEN_GLOBAL = f"{open.__module__}.{open.__qualname__}"


class _CreatesFile:
    """Unpickling it opens (creates) ``path`` for writing: code run by a checkpoint."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def _crafted_pkl(tmp_path: Path) -> Tuple[Path, Path]:
    """A model-zoo-looking .pkl that creates a file when unpickled; returns it and the file."""
    marker = tmp_path / "created_by_unpickling"
    path = tmp_path / "crafted.pkl"
    weights = {"backbone.stem.conv1.weight": np.zeros((1,), np.float32)}
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "x", "x": _CreatesFile(str(marker))}, f)
    return path, marker


def _shapes_cfg(*opts: str):
    return load_config(REPO_ROOT / CONFIG, opts, device="cpu", freeze=False)


def test_demo_refuses_a_crafted_pkl_in_one_line(tmp_path):
    crafted, marker = _crafted_pkl(tmp_path)
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    env = {k: v for k, v in os.environ.items() if k != TRUST_ENV}
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "demo/demo.py", "--config-file", CONFIG]
        + ["--input", str(image), "--output", str(tmp_path / "out")]
        + ["--opts", "MODEL.WEIGHTS", str(crafted), "MODEL.DEVICE", "cpu"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    (line,) = [line for line in output.splitlines() if "Refused to load" in line]
    assert str(crafted) in line and OPEN_GLOBAL in line and TRUST_ENV in line
    assert "Traceback" not in output
    assert not marker.exists()


def _analyze_model():
    spec = importlib.util.spec_from_file_location(
        "_analyze_model", REPO_ROOT / "tools/analyze_model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_python_path_refuses_it(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    crafted, marker = _crafted_pkl(tmp_path)
    cfg = _shapes_cfg("MODEL.WEIGHTS", str(crafted))
    model = build_model(cfg)
    loaders = {
        "DefaultPredictor": lambda: DefaultPredictor(cfg),
        "DetectionCheckpointer": lambda: DetectionCheckpointer(model).load(str(crafted)),
        "TrainingCheckpointer": lambda: TrainingCheckpointer(model).load(str(crafted)),
        "analyze_model": lambda: _analyze_model().analyze(cfg, ["parameter"], 1, True),
        "mask_former.Predictor": lambda: mask_former.Predictor(cfg, str(crafted), device="cpu"),
    }
    for name, load in loaders.items():
        with pytest.raises(UntrustedCheckpointError, match=OPEN_GLOBAL) as e:
            load()
        assert str(crafted) in str(e.value), name
    assert not marker.exists()


def test_train_net_eval_only_exits_with_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    crafted, marker = _crafted_pkl(tmp_path)
    argv = ["train_net.py", "--eval-only", "--config-file", CONFIG, "MODEL.DEVICE", "cpu"]
    argv += ["MODEL.WEIGHTS", str(crafted), "OUTPUT_DIR", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        train_net.invoke_main()
    assert isinstance(e.value.code, str) and "\n" not in e.value.code  # printed, status 1
    assert e.value.code.startswith(f"Refused to load {crafted}: ") and OPEN_GLOBAL in e.value.code
    assert not marker.exists()


def _fresh_interpreter(code: str, *args: str) -> str:
    """Run ``code`` in a new interpreter of this venv (no trust flag); returns its stdout."""
    env = {k: v for k, v in os.environ.items() if k != TRUST_ENV}
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_import_mask_former_installs_safe_loading(tmp_path):
    """``import mask_former``, and nothing else of the project, makes DetectionCheckpointer safe."""
    crafted, marker = _crafted_pkl(tmp_path)
    code = (
        "import pickle, sys, torch\n"
        "import mask_former\n"
        "from detectron2.checkpoint import DetectionCheckpointer\n"
        "try:\n"
        "    DetectionCheckpointer(torch.nn.Linear(1, 1)).load(sys.argv[1])\n"
        "    print('LOADED')\n"
        "except pickle.UnpicklingError as e:\n"
        "    print(type(e).__name__, e.refused)\n"
    )
    assert (
        _fresh_interpreter(code, str(crafted)).strip() == f"UntrustedCheckpointError {OPEN_GLOBAL}"
    )
    assert not marker.exists()


def test_importing_the_safe_loading_module_patches_nothing():
    # The module file alone (the package is not imported, so its install call does not run).
    code = (
        "import importlib.util, sys\n"
        "from detectron2.checkpoint import DetectionCheckpointer\n"
        "before = DetectionCheckpointer._load_file\n"
        "spec = importlib.util.spec_from_file_location('alone', 'mask_former/safe_loading.py')\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print('mask_former' in sys.modules, DetectionCheckpointer._load_file is before)\n"
        "module.install_safe_loading()\n"
        "print(DetectionCheckpointer._load_file is before)\n"
    )
    assert _fresh_interpreter(code).split() == ["False", "True", "False"]


def test_crafted_pth_is_refused_naming_its_global(tmp_path):
    path = tmp_path / "crafted.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": argparse.Namespace(a=1)}, path)
    with pytest.raises(UntrustedCheckpointError, match="argparse.Namespace") as e:
        TrainingCheckpointer(torch.nn.Linear(1, 1)).load(str(path))
    assert str(path) in str(e.value)


def test_trust_flag_allows_a_full_unpickle(tmp_path, monkeypatch):
    crafted, marker = _crafted_pkl(tmp_path)
    monkeypatch.setenv(TRUST_ENV, "1")
    loaded = DetectionCheckpointer(torch.nn.Linear(1, 1))._load_file(str(crafted))
    assert marker.exists() and "x" in loaded  # the code ran: the user trusted the file
    path = tmp_path / "crafted.pth"
    torch.save({"model": {}, "extra": argparse.Namespace(a=1)}, path)
    assert DetectionCheckpointer(torch.nn.Linear(1, 1))._load_file(str(path))["extra"].a == 1


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_model_zoo_pickles_load_without_trust(tmp_path, monkeypatch, protocol):
    """Dicts of numpy arrays and scalars (protocol 2: bytes as ``_codecs.encode``, as Python-2-era
    files have them; 5: arrays from buffers), ordered dicts, and tensors pickled by the Swin
    converter."""
    monkeypatch.delenv(TRUST_ENV, raising=False)
    model = torch.nn.Sequential(collections.OrderedDict(fc=torch.nn.Linear(3, 2)))
    weights = collections.OrderedDict(
        [("fc.weight", np.arange(6, dtype=np.float32).reshape(2, 3)), ("fc.bias", np.ones(2))]
    )
    for name, data in {
        "zoo.pkl": {"model": weights, "__author__": "zoo", "step": np.int64(5)},
        "caffe2.pkl": {"blobs": dict(weights), "fc.weight_momentum": np.zeros(1)},
        "swin.pkl": {"model": {k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()},
                     "__author__": "third_party", "matching_heuristics": True},
    }.items():  # fmt: skip
        with open(tmp_path / name, "wb") as f:
            pickle.dump(data, f, protocol=protocol)
        model.fc.weight.data.zero_()
        DetectionCheckpointer(model).load(str(tmp_path / name))
        np.testing.assert_array_equal(model.fc.weight.detach().numpy(), weights["fc.weight"])


def test_names_stay_importable_from_their_old_modules():
    """Every name of the former mask_former/checkpoint.py and safe_loading.py, from its home."""
    from mask_former import checkpoint, safe_loading
    from mask_former.checkpoint import files, resume
    from mask_former.modeling import checkpoint_layout

    homes = {
        safe_loading: safe_loading.__all__,
        checkpoint_layout: checkpoint_layout.__all__,
        files: ["is_partial_checkpoint"],
        resume: ["TrainingCheckpointer", "nest_legacy_training_state", "saved_parameter_order"]
        + ["regroup_optimizer_state", "fit_scheduler_state", "follow_scheduler"],
    }
    moved = {name: getattr(home, name) for home, names in homes.items() for name in names}
    assert len(moved) == 18 and set(moved) <= set(checkpoint.__all__)
    for name, value in moved.items():
        assert getattr(checkpoint, name) is value, name
    assert len(safe_loading.__all__) == 7  # CheckpointError added by issue 22
    assert "install_safe_loading" in safe_loading.__all__
