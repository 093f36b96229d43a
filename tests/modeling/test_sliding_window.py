# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Sliding-window semantic inference (MODEL.MASK_FORMER.TEST.MODE "slide") on tiny models."""

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from model_testing import random_images, tiny_swin_cfg

from mask_former.modeling import sliding_window
from mask_former.modeling.sliding_window import slide_semantic, window_starts

TEST = "MODEL.MASK_FORMER.TEST."


def _slide_cfg(crop, stride, **overrides):
    keys = {TEST + "MODE": "slide", TEST + "SLIDE_CROP_SIZE": crop, TEST + "SLIDE_STRIDE": stride}
    return tiny_swin_cfg(**{**keys, **overrides})


def _models(crop, stride):
    """A tiny model in slide mode and the same weights in whole mode."""
    torch.manual_seed(0)
    slide = build_model(_slide_cfg(crop, stride)).eval()
    whole = build_model(tiny_swin_cfg()).eval()
    whole.load_state_dict(slide.state_dict())
    return slide, whole


def _reference_starts(length, crop, stride):
    """Window starts written out by walking: step by stride until a window reaches the end."""
    if crop >= length:
        return [0]
    starts = [0]
    while starts[-1] + crop < length:
        starts.append(min(starts[-1] + stride, length - crop))
    return starts


@pytest.mark.parametrize(
    "length, crop, stride, expected",
    [
        (10, 4, 3, [0, 3, 6]),  # 6 + 4 = 10: the grid ends on the border
        (11, 4, 3, [0, 3, 6, 7]),  # not a multiple: the last window is moved back to end at 11
        (100, 48, 32, [0, 32, 52]),
        (5, 8, 4, [0]),  # the crop covers the axis: one window (of the axis' length)
        (8, 8, 8, [0]),
        (9, 8, 8, [0, 1]),
    ],
)
def test_window_starts_cover_the_edges(length, crop, stride, expected):
    starts = window_starts(length, crop, stride)
    assert starts == expected == _reference_starts(length, crop, stride)
    size = min(crop, length)
    assert starts[-1] + size == length  # the last window is aligned to the border
    covered = np.zeros(length, dtype=int)
    for s in starts:
        covered[s : s + size] += 1
    assert covered.min() >= 1
    np.testing.assert_array_equal(
        sliding_window.window_coverage(length, starts, crop).numpy(), covered
    )


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({TEST + "MODE": "tiles"}, "MODE must be one of"),
        ({TEST + "SLIDE_CROP_SIZE": (0, 64)}, "SLIDE_CROP_SIZE must be two positive"),
        ({TEST + "SLIDE_STRIDE": (32, -1)}, "SLIDE_STRIDE must be two positive"),
        ({TEST + "SLIDE_STRIDE": (32, 80)}, "SLIDE_STRIDE .* must not exceed"),
        ({TEST + "PANOPTIC_ON": True}, 'MODE "slide" gives semantic segmentation only'),
        ({TEST + "INSTANCE_ON": True}, "INSTANCE_ON"),
    ],
)
def test_invalid_slide_settings_are_refused(overrides, match):
    cfg = _slide_cfg((64, 64), (32, 32), **overrides)
    with pytest.raises(ValueError, match=match):
        build_model(cfg)


@pytest.mark.parametrize("output_size", [None, (50, 120)])
def test_one_window_equals_whole_image_inference(output_size):
    slide, whole = _models((96, 128), (64, 64))  # the crop covers the 61 x 83 image
    inputs = {"image": random_images([(61, 83)])[0]}
    if output_size is not None:
        inputs.update(height=output_size[0], width=output_size[1])
    with torch.no_grad():
        expected = whole([inputs])[0]["sem_seg"]
        got = slide([inputs])[0]["sem_seg"]
        labels = slide.semantic_labels([inputs])[0]
    assert got.shape == expected.shape
    assert torch.equal(got, expected)
    if output_size is None:
        assert torch.equal(labels, expected.argmax(0))


def _reference_slide(whole, image, crop, stride):
    """Each window through the whole-image model on its own, averaged in NumPy."""
    _, height, width = image.shape
    ch, cw = min(crop[0], height), min(crop[1], width)
    total, count = None, np.zeros((height, width), dtype=np.float32)
    for y in _reference_starts(height, crop[0], stride[0]):
        for x in _reference_starts(width, crop[1], stride[1]):
            with torch.no_grad():
                scores = whole([{"image": image[:, y : y + ch, x : x + cw]}])[0]["sem_seg"]
            if total is None:
                total = np.zeros((scores.shape[0], height, width), dtype=np.float32)
            total[:, y : y + ch, x : x + cw] += scores.numpy()
            count[y : y + ch, x : x + cw] += 1
    return total / count


def test_overlapping_windows_equal_an_independent_average():
    crop, stride = (48, 64), (32, 40)
    slide, whole = _models(crop, stride)
    image = random_images([(100, 90)], seed=3)[0]  # 3 x 2 windows, overlapping both ways
    expected = _reference_slide(whole, image, crop, stride)
    with torch.no_grad():
        got = slide([{"image": image}])[0]["sem_seg"]
        labels = slide.semantic_labels([{"image": image}])[0]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-7)
    # Not the whole-image result: the windows change what the network sees.
    with torch.no_grad():
        assert not torch.allclose(whole([{"image": image}])[0]["sem_seg"], got, atol=1e-3)
    assert torch.equal(labels, got.argmax(0))


def _fake_scores(window):
    """Scores that depend on the position inside the window (so averaging is visible)."""
    ramp = torch.linspace(0.5, 1.5, window.shape[-1])
    return torch.stack([window[0] * ramp, window[1], window[2] - ramp])


def test_labels_only_is_the_argmax_of_the_scores_also_when_resized():
    image = torch.rand((3, 70, 53), generator=torch.Generator().manual_seed(1))
    crop, stride = (24, 20), (10, 12)
    for output_size in [(70, 53), (97, 41), (33, 120)]:
        scores = slide_semantic(_fake_scores, image, crop, stride, output_size)
        labels = slide_semantic(_fake_scores, image, crop, stride, output_size, labels_only=True)
        assert scores.shape == (3, *output_size) and labels.shape == output_size
        top2 = scores.topk(2, dim=0).values
        clear = (top2[0] - top2[1]) > 1e-5  # no tie within rounding of the banded resize
        assert clear.float().mean() > 0.99
        assert torch.equal(labels[clear], scores.argmax(0)[clear])


def test_bands_are_finalised_as_soon_as_no_later_window_touches_them():
    image = torch.rand((3, 70, 53), generator=torch.Generator().manual_seed(2))
    crop, stride = (24, 20), (10, 12)
    bands = list(sliding_window._finalised_bands(_fake_scores, image, crop, stride))
    ys = _reference_starts(70, 24, 10)  # [0, 10, 20, 30, 40, 46]
    assert [start for start, _ in bands] == ys
    assert [band.shape[1] for _, band in bands] == [b - a for a, b in zip(ys, ys[1:] + [70])]
    # The averaged scores equal a direct average over the windows covering each pixel.
    total, count = np.zeros((3, 70, 53)), np.zeros((70, 53))
    for y in ys:
        for x in _reference_starts(53, 20, 12):
            total[:, y : y + 24, x : x + 20] += _fake_scores(
                image[:, y : y + 24, x : x + 20]
            ).numpy()
            count[y : y + 24, x : x + 20] += 1
    got = torch.cat([band for _, band in bands], 1).numpy()
    np.testing.assert_allclose(got, total / count, rtol=1e-5, atol=1e-6)


def test_predictor_labels_only_without_test_resize():
    from mask_former.inference import Predictor

    crop, stride = (48, 64), (32, 40)
    cfg = _slide_cfg(crop, stride, **{"INPUT.MIN_SIZE_TEST": 0})
    full = Predictor(cfg, "", device="cpu", precision="float32")
    lean = Predictor(cfg, "", device="cpu", labels_only=True, precision="float32")
    lean.model.load_state_dict(full.model.state_dict())
    rgb = np.random.default_rng(4).integers(0, 256, (100, 90, 3), dtype=np.uint8)
    # MIN_SIZE_TEST 0: the model sees the image at its own size (512 would resize it).
    assert full._model_input(rgb)["image"].shape == (3, 100, 90)
    cfg_512 = _slide_cfg(crop, stride, **{"INPUT.MIN_SIZE_TEST": 512})
    resized = Predictor(cfg_512, "", device="cpu")._model_input(rgb)
    assert resized["image"].shape == (3, 569, 512)

    whole = build_model(tiny_swin_cfg()).eval()
    whole.load_state_dict(full.model.state_dict())
    bgr = torch.from_numpy(rgb[:, :, ::-1].astype(np.float32).transpose(2, 0, 1).copy())
    expected = _reference_slide(whole, bgr, crop, stride)
    scores = full(rgb)
    np.testing.assert_allclose(scores.outputs["sem_seg"].numpy(), expected, rtol=1e-6, atol=1e-7)
    labels = lean(rgb)
    assert "sem_seg" not in labels.outputs and labels.semantic.dtype == torch.int64
    assert torch.equal(labels.semantic, scores.semantic)
    assert torch.equal(labels.semantic, torch.from_numpy(expected.argmax(0)))
