# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""The config schema: the reference dump loads, and so does every YAML under configs/."""

from pathlib import Path

import pytest

from mask_former import get_mask_former_cfg

from .conftest import REFERENCE, REPO_ROOT

CONFIG_DIR = REPO_ROOT / "configs"
FIXTURE_CONFIG = REFERENCE / "tiny_swin_semantic" / "config.yaml"


def _new_cfg():
    return get_mask_former_cfg()


def _yaml_files():
    if not CONFIG_DIR.exists():
        return [FIXTURE_CONFIG]  # until the config tree exists
    return sorted(CONFIG_DIR.rglob("*.yaml"))


def test_config_dir_is_not_silently_empty():
    if CONFIG_DIR.exists():
        assert list(CONFIG_DIR.rglob("*.yaml")), f"{CONFIG_DIR} exists but holds no YAML"


def test_reference_config_dump_loads():
    cfg = _new_cfg()
    cfg.merge_from_file(str(FIXTURE_CONFIG), allow_unsafe=False)
    assert cfg.MODEL.META_ARCHITECTURE == "MaskFormer"
    assert cfg.MODEL.SWIN.EMBED_DIM == 32
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 10
    assert cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ is True


def test_unknown_key_is_rejected(tmp_path: Path):
    # The dump test above is only meaningful if a missing key fails: check that it does.
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  MASK_FORMER:\n    NOT_A_KEY: 1\n")
    with pytest.raises(KeyError, match="NOT_A_KEY"):
        _new_cfg().merge_from_file(str(bad), allow_unsafe=False)


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


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(p.parents[1])))
def test_yaml_loads_safely(path: Path):
    cfg = _new_cfg()
    cfg.merge_from_file(str(path), allow_unsafe=False)
    assert cfg.MODEL.META_ARCHITECTURE


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
