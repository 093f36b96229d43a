# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Old (model-zoo) and current pixel-decoder key layouts both load, without double prefixes."""

import logging
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from model_testing import tiny_resnet_cfg, tiny_swin_cfg
from torch import nn

from mask_former.modeling.checkpoint_layout import (
    PIXEL_DECODER_LAYOUT_VERSION,
    upgrade_pixel_decoder_keys,
)

PD = "sem_seg_head.pixel_decoder."


def test_upgrade_rule_moves_only_old_layout_keys():
    state = OrderedDict(
        [
            ("backbone.layer_4.weight", 0),
            ("sem_seg_head.layer_4.weight", 1),
            ("sem_seg_head.adapter_1.norm.bias", 2),
            ("sem_seg_head.mask_features.weight", 3),
            ("sem_seg_head.pixel_decoder.layer_1.weight", 4),
            ("sem_seg_head.predictor.query_embed.weight", 5),
            ("sem_seg_head.predictor_other.weight", 6),
        ]
    )
    renamed = upgrade_pixel_decoder_keys(state, "sem_seg_head.")
    assert sorted(renamed) == [
        "sem_seg_head.adapter_1.norm.bias",
        "sem_seg_head.layer_4.weight",
        "sem_seg_head.mask_features.weight",
        "sem_seg_head.predictor_other.weight",
    ]
    assert state == {
        "backbone.layer_4.weight": 0,
        "sem_seg_head.pixel_decoder.layer_4.weight": 1,
        "sem_seg_head.pixel_decoder.adapter_1.norm.bias": 2,
        "sem_seg_head.pixel_decoder.mask_features.weight": 3,
        "sem_seg_head.pixel_decoder.layer_1.weight": 4,
        "sem_seg_head.predictor.query_embed.weight": 5,
        "sem_seg_head.pixel_decoder.predictor_other.weight": 6,
    }
    # Idempotent: a second pass changes nothing.
    assert upgrade_pixel_decoder_keys(state, "sem_seg_head.") == []


def test_upgrade_rule_refuses_both_layouts_of_one_key():
    state = {"h.layer_4.weight": 0, "h.pixel_decoder.layer_4.weight": 1}
    with pytest.raises(KeyError, match="layer_4"):
        upgrade_pixel_decoder_keys(state, "h.")


def _to_old_layout(state):
    return OrderedDict(
        ("sem_seg_head." + k[len(PD) :] if k.startswith(PD) else k, v) for k, v in state.items()
    )


# The three head types, each built by a tiny config.
HEAD_CFGS = {
    "MaskFormerHead": {},
    "PerPixelBaselineHead": {
        "MODEL.META_ARCHITECTURE": "SemanticSegmentor",
        "MODEL.SEM_SEG_HEAD.NAME": "PerPixelBaselineHead",
    },
    "PerPixelBaselinePlusHead": {
        "MODEL.META_ARCHITECTURE": "SemanticSegmentor",
        "MODEL.SEM_SEG_HEAD.NAME": "PerPixelBaselinePlusHead",
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 4,
    },
}


def _old_head_layout(state, version=None):
    """A head's own state dict (prefix "") in the old layout, with the head's saved version."""
    pd = "pixel_decoder."
    old = OrderedDict((k[len(pd) :] if k.startswith(pd) else k, v) for k, v in state.items())
    if version is not None:
        old._metadata = OrderedDict([("", {"version": version})])
    return old


@pytest.fixture
def checkpoint_log(caplog, monkeypatch):
    # The "mask_former" logger may not propagate (detectron2's setup_logger): the records go to
    # caplog's handler directly, and only there (not a second time through the root logger).
    logger = logging.getLogger("mask_former.modeling.checkpoint_layout")
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="mask_former.modeling.checkpoint_layout")
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.mark.parametrize("head_name", list(HEAD_CFGS))
@pytest.mark.parametrize("version", [None, 1], ids=["no_version", "version_1"])
def test_each_head_upgrades_an_old_layout_state_dict(head_name, version, checkpoint_log):
    torch.manual_seed(0)
    source = build_model(tiny_swin_cfg(**HEAD_CFGS[head_name])).sem_seg_head
    assert type(source).__name__ == head_name
    # The upgrade is a registered hook, not an override of nn.Module's loading.
    assert type(source)._load_from_state_dict is nn.Module._load_from_state_dict
    saved = source.state_dict()
    assert saved._metadata[""]["version"] == PIXEL_DECODER_LAYOUT_VERSION
    old = _old_head_layout(saved, version)
    assert not any(k.startswith("pixel_decoder.") for k in old)

    torch.manual_seed(1)
    target = build_model(tiny_swin_cfg(**HEAD_CFGS[head_name])).sem_seg_head
    target.load_state_dict(old, strict=True)
    for name, value in saved.items():
        assert torch.equal(target.state_dict()[name], value), name
    warnings = [r.getMessage() for r in checkpoint_log.records if r.levelno == logging.WARNING]
    renamed = [k for k in old if not k.startswith("predictor.")]
    assert len(renamed) == sum(k.startswith("pixel_decoder.") for k in saved)
    assert warnings == [
        f"Checkpoint uses the old layout of {head_name}: {len(renamed)} pixel-decoder keys "
        f"moved under 'pixel_decoder.' (e.g. {renamed[0]})."
    ]


def test_a_state_dict_of_the_current_version_is_not_upgraded(checkpoint_log):
    # Keys outside pixel_decoder./predictor. in a version-2 state dict are not renamed, so
    # they stay unexpected.
    head = build_model(tiny_swin_cfg()).sem_seg_head
    old = _old_head_layout(head.state_dict(), version=PIXEL_DECODER_LAYOUT_VERSION)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        head.load_state_dict(old, strict=True)
    assert not checkpoint_log.records


@pytest.mark.parametrize(
    "cfg_fn,overrides",
    [
        (tiny_swin_cfg, {}),
        (tiny_resnet_cfg, {}),
        (
            tiny_swin_cfg,
            {
                "MODEL.META_ARCHITECTURE": "SemanticSegmentor",
                "MODEL.SEM_SEG_HEAD.NAME": "PerPixelBaselineHead",
            },
        ),
        (
            tiny_swin_cfg,
            {
                "MODEL.META_ARCHITECTURE": "SemanticSegmentor",
                "MODEL.SEM_SEG_HEAD.NAME": "PerPixelBaselinePlusHead",
                "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 4,
            },
        ),
    ],
    ids=["maskformer_swin", "maskformer_resnet_encoder", "per_pixel", "per_pixel_plus"],
)
@pytest.mark.parametrize("layout", ["old", "current"])
def test_pkl_loads_through_detection_checkpointer(cfg_fn, overrides, layout, tmp_path):
    torch.manual_seed(0)
    source = build_model(cfg_fn(**overrides))
    state = OrderedDict((k, v.numpy()) for k, v in source.state_dict().items())
    if layout == "old":
        state = _to_old_layout(state)
        assert any(k.startswith("sem_seg_head.layer_") for k in state)
    path = tmp_path / "model.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "test"}, f)

    torch.manual_seed(1)
    target = build_model(cfg_fn(**overrides))
    DetectionCheckpointer(target).load(str(path))
    loaded = target.state_dict()
    assert list(loaded) == list(source.state_dict())  # no key double-prefixed or left over
    for name, value in source.state_dict().items():
        np.testing.assert_array_equal(loaded[name].numpy(), value.numpy(), err_msg=name)


def test_strict_load_of_both_layouts_and_of_a_saved_state_dict():
    torch.manual_seed(0)
    source = build_model(tiny_swin_cfg())
    saved = source.state_dict()  # carries version metadata (head version 2)
    for state in (saved, _to_old_layout(saved), OrderedDict(saved)):  # last: no metadata
        target = build_model(tiny_swin_cfg())
        target.load_state_dict(state, strict=True)
        for name, value in saved.items():
            assert torch.equal(target.state_dict()[name], value), name
