# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The config schema: the reference dump loads, every YAML under configs/ loads to exactly the
values its files (and their _BASE_ files) write, and the loaders refuse YAML that would run
Python code.
"""

import argparse
import os
import re
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
import yaml

from mask_former import get_mask_former_cfg, load_config
from mask_former.predictor import build_predictor_cfg
from tests.paths import CONFIGS, REPO_ROOT, TINY_SWIN_SEMANTIC

FIXTURE_CONFIG = TINY_SWIN_SEMANTIC / "config.yaml"
YAML_FILES = sorted(CONFIGS.rglob("*.yaml"))


def _new_cfg():
    return get_mask_former_cfg()


def _written_values(path: Path) -> Dict[str, Any]:
    """
    {dotted key: value} of every leaf a YAML file sets, its _BASE_ chain resolved (a base
    relative to the file, the file's own values winning), read with yaml.safe_load: what the
    config files say, independently of detectron2's loader.
    """
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    values = {}
    base = data.pop("_BASE_", None)
    if base is not None:
        values.update(_written_values(path.parent / os.path.expanduser(base)))

    def flatten(node: Dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                flatten(value, f"{prefix}{key}.")
            else:
                values[prefix + key] = value

    flatten(data, "")
    return values


def _plain(value):
    """Lists and tuples compared alike (detectron2 turns YAML lists into tuples for some keys)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _assert_loaded_as_written(cfg, path: Path) -> int:
    written = _written_values(path)
    for key, value in written.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert _plain(node) == _plain(value), f"{path.name}: {key} = {node!r}, file: {value!r}"
    return len(written)


def test_config_dir_holds_the_model_zoo_configs():
    assert len(YAML_FILES) > 30, f"{CONFIGS} holds {len(YAML_FILES)} YAML files"


def test_reference_config_dump_loads():
    cfg = load_config(FIXTURE_CONFIG, freeze=False)
    assert cfg.MODEL.META_ARCHITECTURE == "MaskFormer"
    assert cfg.MODEL.SWIN.EMBED_DIM == 32
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 10
    assert cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ is True
    # The dump names every key of the reference's config, and each loads with its value.
    assert _assert_loaded_as_written(cfg, FIXTURE_CONFIG) > 200


def test_unknown_key_is_rejected(tmp_path: Path):
    # The dump test above is only meaningful if a missing key fails: check that it does.
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  MASK_FORMER:\n    NOT_A_KEY: 1\n")
    with pytest.raises(KeyError, match="NOT_A_KEY"):
        load_config(bad)


def test_defaults_of_project_keys():
    cfg = _new_cfg()
    mf = cfg.MODEL.MASK_FORMER
    assert (mf.CLASS_WEIGHT, mf.TRAIN_NUM_POINTS) == (1.0, 0)
    assert (mf.OVERSAMPLE_RATIO, mf.IMPORTANCE_SAMPLE_RATIO) == (3.0, 0.75)
    assert (mf.TEST.SEMANTIC_ON, mf.TEST.INSTANCE_ON, mf.TEST.PANOPTIC_ON) == (True, False, False)
    assert (mf.NO_OBJECT_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT) == (0.1, 20.0, 1.0)
    assert (mf.DEC_LAYERS, mf.HIDDEN_DIM, mf.NUM_OBJECT_QUERIES, mf.SIZE_DIVISIBILITY) == (
        6,
        256,
        100,
        32,
    )
    assert cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME == "BasePixelDecoder"
    assert cfg.MODEL.SWIN.DEPTHS == [2, 2, 6, 2] and cfg.MODEL.SWIN.QK_SCALE is None
    assert cfg.SOLVER.BACKBONE_MULTIPLIER == 0.1 and cfg.SOLVER.OPTIMIZER == "ADAMW"
    assert cfg.INPUT.DATASET_MAPPER_NAME == "mask_former_semantic"


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_yaml_loads_safely(path: Path):
    cfg = load_config(path)
    # Every value the file and its bases write is the config's value after loading.
    assert _assert_loaded_as_written(cfg, path) >= 3
    if not path.name.startswith("Base-"):
        assert cfg.MODEL.META_ARCHITECTURE in ("MaskFormer", "SemanticSegmentor")


def _load_with(loader: str, path: str):
    """Load the config file ``path`` the way one of the project's entry points does."""
    if loader == "load_config":
        return load_config(path)
    if loader == "Predictor":
        return build_predictor_cfg(path)
    if loader == "train_net":
        from mask_former.engine.defaults import build_cfg

        return build_cfg(argparse.Namespace(config_file=path, opts=[]))
    raise AssertionError(loader)


@pytest.mark.parametrize("loader", ["load_config", "Predictor", "train_net"])
def test_python_tags_in_a_config_are_refused_not_run(tmp_path: Path, loader: str):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.yaml"
    # Loaded with yaml.unsafe_load, this tag would call os.mkdir(marker).
    evil.write_text(f'MODEL:\n  WEIGHTS: !!python/object/apply:os.mkdir ["{marker}"]\n')
    with pytest.raises(yaml.constructor.ConstructorError, match="python/object/apply"):
        _load_with(loader, str(evil))
    assert not marker.exists()
    # The same loader takes a plain config.
    plain = tmp_path / "plain.yaml"
    plain.write_text("MODEL:\n  WEIGHTS: model.pth\n  DEVICE: cpu\n")
    assert _load_with(loader, str(plain)).MODEL.WEIGHTS == "model.pth"


def _python_files():
    roots = ["mask_former", "demo", "tools", "dev", "datasets", "train_net.py"]
    for root in roots:
        path = REPO_ROOT / root
        yield from [path] if path.is_file() else sorted(path.rglob("*.py"))


def test_only_the_config_builder_merges_config_files():
    # One config builder: every entry point (train_net, demo, Predictor, tools) goes through
    # load_config, so safe YAML and the device fallback cannot drift apart again. A module may
    # keep merge_from_file only as the fallback of a load_config call (the benchmark's case
    # runner, which also measures checkouts older than load_config).
    calls = re.compile(r"\.merge_from_file\(")
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in _python_files()
        if path != REPO_ROOT / "mask_former" / "config.py"
        and calls.search(path.read_text())
        and "load_config" not in path.read_text()
    ]
    assert offenders == []


def test_load_config_order_and_options(tmp_path: Path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("MODEL:\n  WEIGHTS: from_file.pth\n  DEVICE: cuda\nSOLVER:\n  MAX_ITER: 7\n")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(config, ["MODEL.WEIGHTS", "from_opts.pth", "SOLVER.MAX_ITER", "9"])
    # opts win over the file; a CUDA device falls back to the CPU on a machine without CUDA.
    assert (cfg.MODEL.WEIGHTS, cfg.SOLVER.MAX_ITER, cfg.MODEL.DEVICE) == ("from_opts.pth", 9, "cpu")
    assert cfg.is_frozen()
    # weights= and device= win over opts; no fallback, no freezing when asked.
    cfg = load_config(
        config,
        ["MODEL.WEIGHTS", "from_opts.pth"],
        weights="w.pkl",
        device="cuda:1",
        cpu_fallback=False,
        freeze=False,
    )
    assert (cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE, cfg.is_frozen()) == ("w.pkl", "cuda:1", False)
    # A CfgNode is copied, not changed.
    again = load_config(cfg, ["SOLVER.MAX_ITER", "3"])
    assert (again.SOLVER.MAX_ITER, cfg.SOLVER.MAX_ITER) == (3, 7)
    # No config: the defaults.
    assert load_config().MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 100


def test_load_config_names_a_missing_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_factory_returns_independent_configs_with_deeplab_and_mask_former_keys():
    import mask_former.engine

    assert mask_former.engine.get_mask_former_cfg is get_mask_former_cfg
    a, b = get_mask_former_cfg(), get_mask_former_cfg()
    a.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 7
    assert b.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 100
    assert not a.is_frozen()
    # A key of add_deeplab_config and one of add_mask_former_config (and SWIN, which only the
    # latter adds): the factory applies both.
    assert a.MODEL.SEM_SEG_HEAD.PROJECT_FEATURES == ["res2"] and a.SOLVER.POLY_LR_POWER == 0.9
    assert "SWIN" in a.MODEL and a.INPUT.DATASET_MAPPER_NAME == "mask_former_semantic"
