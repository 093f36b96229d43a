# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Issue 22: weights must fit the model; unreadable checkpoints are named; class names travel."""

import os
import pickle
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

import mask_former  # noqa: F401  (registers the model and the shapes datasets)
from mask_former.checkpoint import (
    CheckpointError,
    TrainingCheckpointer,
    WeightsMismatchError,
    checkpoint_metadata,
    dataset_metadata,
    load_model_weights,
)
from mask_former.config import load_config
from mask_former.inference import Predictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEMANTIC = "configs/shapes/maskformer_R18_bs8_1200.yaml"
PANOPTIC = "configs/shapes/maskformer_panoptic_R18_main.yaml"
# A test dataset no process registers: class names must come from elsewhere.
UNREGISTERED = ("DATASETS.TEST", '("not_registered_anywhere",)')


def _cfg(path, *opts):
    return load_config(path, list(opts), device="cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints good and bad, built here: another config's weights, cut files, junk."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    semantic = build_model(_cfg(SEMANTIC))
    good = root / "semantic.pth"
    torch.save({"model": semantic.state_dict()}, good)
    other = root / "panoptic.pth"
    torch.save(build_model(_cfg(PANOPTIC)).state_dict(), other)
    data = good.read_bytes()
    (root / "half.pth").write_bytes(data[: len(data) // 2])
    arrays = {k: v.numpy() for k, v in semantic.state_dict().items()}
    pkl = pickle.dumps({"model": arrays, "__author__": "test"})
    (root / "semantic.pkl").write_bytes(pkl)
    (root / "half.pkl").write_bytes(pkl[: len(pkl) // 2])
    (root / "empty.pth").write_bytes(b"")
    (root / "text.pth").write_text("these are not weights\n")
    image = root / "image.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    return root


BAD = {
    "half.pth": "truncated or corrupt (not a complete zip archive)",
    "half.pkl": "truncated or corrupt (the pickle data ends early)",
    "empty.pth": "empty file (0 bytes)",
    "text.pth": "not a checkpoint (neither a PyTorch zip archive nor a pickle)",
    "missing.pth": "no such file",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_predictor_names_the_unreadable_file_and_why(files, name):
    path = str(files / name)
    with pytest.raises(CheckpointError) as caught:
        Predictor(SEMANTIC, path, device="cpu")
    assert str(caught.value) == f"Cannot load checkpoint {path}: {BAD[name]}"
    assert caught.value.path == path and caught.value.reason == BAD[name]


def test_weights_of_another_config_are_refused_for_inference(files):
    path = str(files / "panoptic.pth")
    with pytest.raises(WeightsMismatchError) as caught:
        Predictor(SEMANTIC, path, device="cpu")
    message = str(caught.value)
    assert message.startswith(f"Cannot load checkpoint {path}: it fits ")
    assert "missing" in message and "of another shape" in message and "(first: " in message
    assert "MODEL.ALLOW_PARTIAL_WEIGHTS" in message


def test_partial_loads_are_allowed_on_purpose_and_for_training(files):
    path = str(files / "panoptic.pth")
    model = build_model(_cfg(SEMANTIC))
    fit = load_model_weights(model, path, allow_partial=True)
    assert 0 < fit.loaded < fit.total and fit.missing and fit.mismatched and not fit.complete
    trained = load_model_weights(build_model(_cfg(SEMANTIC)), path, for_training=True)
    assert trained.loaded == fit.loaded
    # The loaded tensors really are the file's.
    saved = torch.load(path, weights_only=True)
    name = "backbone.stem.conv1.weight"
    assert torch.equal(model.state_dict()[name], saved[name])


def test_full_checkpoints_load_completely_pth_and_pkl(files):
    for name in ("semantic.pth", "semantic.pkl"):
        model = build_model(_cfg(SEMANTIC))
        fit = load_model_weights(model, str(files / name))
        assert fit.complete and fit.loaded == fit.total
        needed = [
            k
            for k in model.state_dict()
            if k not in ("pixel_mean", "pixel_std") and not k.endswith("num_batches_tracked")
        ]
        assert fit.total == len(needed) > 100


def test_a_checkpoint_that_fits_nothing_fails_training_too(tmp_path):
    path = tmp_path / "unrelated.pth"
    torch.save({"model": {"some.other.weight": torch.zeros(3)}}, path)
    with pytest.raises(WeightsMismatchError, match="fits none of the model's"):
        load_model_weights(build_model(_cfg(SEMANTIC)), str(path), for_training=True)


def test_metadata_round_trip_through_the_trainers_checkpointer(tmp_path):
    cfg = _cfg(SEMANTIC)
    model = build_model(cfg)
    checkpointer = TrainingCheckpointer(model, str(tmp_path))
    checkpointer.metadata = dataset_metadata(cfg.DATASETS.TRAIN[0])
    checkpointer.save("model_final")
    path = str(tmp_path / "model_final.pth")
    saved = torch.load(path, weights_only=True)  # plain containers only
    assert saved["metadata"]["stuff_classes"] == checkpointer.metadata["stuff_classes"]
    predictor = Predictor(SEMANTIC, path, opts=UNREGISTERED, device="cpu")
    assert predictor.class_names == checkpointer.metadata["stuff_classes"]
    assert len(predictor.class_names) == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    assert predictor.weights.metadata["dataset"] == cfg.DATASETS.TRAIN[0]


def test_class_names_of_the_hf_converter_format_are_read():
    assert checkpoint_metadata({"class_names": ["a", "b"]}) == {"stuff_classes": ["a", "b"]}
    assert checkpoint_metadata({"class_names": [1, 2]}) == {}


def test_class_names_that_do_not_match_the_model_are_an_error(tmp_path):
    model = build_model(_cfg(SEMANTIC))
    path = tmp_path / "three.pth"
    torch.save({"model": model.state_dict(), "metadata": {"stuff_classes": ["a", "b", "c"]}}, path)
    with pytest.raises(ValueError, match="NUM_CLASSES is 6 but the checkpoint .* names 3"):
        Predictor(SEMANTIC, str(path), opts=UNREGISTERED, device="cpu")


def _run(args, cwd=ROOT):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_plain_python_sees_the_random_weights_and_generic_names_warnings():
    code = (
        "from mask_former.inference import Predictor\n"
        f"p = Predictor({SEMANTIC!r}, '', opts={list(UNREGISTERED)!r}, device='cpu')\n"
        "print(p.class_names[0])\n"
    )
    proc = _run(["-c", code])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "class 0"
    assert proc.stderr.count("randomly initialised weights") == 1
    assert proc.stderr.count("using generic names") == 1


@pytest.mark.parametrize("name", ["half.pkl", "panoptic.pth"])
def test_demo_ends_with_one_line_naming_the_file(files, name, tmp_path):
    out = tmp_path / "drawn"
    path = str(files / name)
    proc = _run(
        ["demo/demo.py", "--config-file", SEMANTIC, "--input", str(files / "image.png")]
        + ["--output", str(out), "--opts", "MODEL.WEIGHTS", path, "MODEL.DEVICE", "cpu"]
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert f"Cannot load checkpoint {path}: " in last
    assert not out.exists() or not os.listdir(out)


def test_train_net_eval_only_ends_with_one_line_naming_the_file(files, tmp_path):
    path = str(files / "text.pth")
    proc = _run(
        ["train_net.py", "--config-file", SEMANTIC, "--eval-only", "MODEL.WEIGHTS", path]
        + ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out")]
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"Cannot load checkpoint {path}: {BAD['text.pth']}"


def test_demo_register_names_the_classes_of_a_users_dataset(files, tmp_path):
    # A user's registration file, as the custom-dataset guide writes one: without --register
    # the demo's process does not know the dataset and falls back to generic names (warned).
    names = ["sky", "road", "car", "tree", "house", "lamp"]
    module = tmp_path / "my_datasets.py"
    module.write_text(
        "from detectron2.data import DatasetCatalog, MetadataCatalog\n"
        "DatasetCatalog.register('mine_sem_seg_val', lambda: [])\n"
        f"MetadataCatalog.get('mine_sem_seg_val').set(stuff_classes={names!r})\n"
        "print('registered mine_sem_seg_val')\n"
    )
    opts = ["--opts", "DATASETS.TEST", '("mine_sem_seg_val",)', "MODEL.WEIGHTS", ""]
    base = ["demo/demo.py", "--config-file", SEMANTIC, "--input", str(files / "image.png")]
    base += ["--output", str(tmp_path / "out")]
    registered = _run(base + ["--register", str(module)] + opts + ["MODEL.DEVICE", "cpu"])
    assert registered.returncode == 0, registered.stderr[-2000:]
    assert "registered mine_sem_seg_val" in registered.stdout
    assert "using generic names" not in registered.stdout + registered.stderr
    assert os.listdir(tmp_path / "out") == ["image.png"]
    unregistered = _run(base + opts + ["MODEL.DEVICE", "cpu"])
    assert unregistered.returncode == 0, unregistered.stderr[-2000:]
    # (the demo logs in detectron2's format, to stdout)
    assert "'mine_sem_seg_val' is not registered" in unregistered.stdout + unregistered.stderr


def test_train_net_training_on_a_cut_checkpoint_ends_with_one_line(files, tmp_path):
    # Training with loader workers (the shapes configs start 2): the run ends with the
    # checkpoint's one line, and the workers are stopped before it (no broken-pipe noise).
    # The shapes dataset is the repository's ./datasets/shapes (generated on first use).
    path = str(files / "half.pth")
    args = ["train_net.py", "--config-file", SEMANTIC, "MODEL.WEIGHTS", path, "MODEL.DEVICE"]
    args += ["cpu", "OUTPUT_DIR", str(tmp_path / "out"), "DATALOADER.NUM_WORKERS", "2"]
    proc = _run(args)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output and "terminate called" not in output, output[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"Cannot load checkpoint {path}: {BAD['half.pth']}"
