# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Old (model-zoo) and current pixel-decoder key layouts both load, without double prefixes."""

import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from model_testing import tiny_resnet_cfg, tiny_swin_cfg

from mask_former.checkpoint import upgrade_pixel_decoder_keys

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
