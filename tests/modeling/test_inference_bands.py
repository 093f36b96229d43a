# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Inference from low-resolution mask logits band by band: the composed resize matrices give the
logits of detectron2's upsample -> crop -> resize, and banded semantic, panoptic and instance
inference give the results of the whole-tensor computation.
"""

import logging

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import sem_seg_postprocess
from model_testing import random_images, tiny_swin_cfg
from torch.utils._python_dispatch import TorchDispatchMode

from mask_former.modeling import inference, precision
from mask_former.modeling.inference import (
    ResizedMaskLogits,
    bilinear_resize_matrix,
    instance_inference,
    panoptic_inference,
    resize_mask_logits,
    semantic_inference,
)


def _reference_logits(low, padded, image, output):
    """detectron2's way: upsample to the padded size, crop to the image, resize to output."""
    up = F.interpolate(low[None], size=padded, mode="bilinear", align_corners=False)
    crop = up[:, :, : image[0], : image[1]]
    return F.interpolate(crop, size=output, mode="bilinear", align_corners=False)[0]


@pytest.mark.parametrize("in_size,out_size", [(5, 17), (24, 96), (17, 5), (7, 7), (1, 4)])
def test_resize_matrix_is_pytorch_bilinear(in_size, out_size):
    x = torch.randn(3, in_size, generator=torch.Generator().manual_seed(in_size))
    matrix = bilinear_resize_matrix(in_size, out_size)
    expected = F.interpolate(x[None], size=out_size, mode="linear", align_corners=False)[0]
    torch.testing.assert_close(x @ matrix.t(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "low,padded,image,output",
    [
        ((6, 8), (24, 32), (21, 30), (21, 30)),  # crop only
        ((6, 8), (24, 32), (21, 30), (50, 37)),  # crop, then up-resize
        ((10, 9), (40, 36), (40, 33), (13, 11)),  # crop, then down-resize
    ],
)
def test_resized_logits_equal_upsample_crop_resize(low, padded, image, output):
    logits = torch.randn((4, *low), generator=torch.Generator().manual_seed(1)) * 5
    resized = resize_mask_logits(logits, padded, image, output)
    assert resized.shape == (4, *output)
    expected = _reference_logits(logits, padded, image, output)
    torch.testing.assert_close(resized.full(), expected, rtol=0, atol=1e-5)
    queries = torch.tensor([3, 1])
    torch.testing.assert_close(
        resized.band(2, 9, queries), expected[queries, 2:9], rtol=0, atol=1e-5
    )


def test_resize_matrices_must_fit_the_logits():
    with pytest.raises(ValueError, match="do not fit"):
        ResizedMaskLogits(torch.zeros(2, 3, 4), torch.zeros(5, 4), torch.zeros(6, 4))


@pytest.fixture
def small_bands(monkeypatch):
    """Bands of a few rows, so that a small image is processed in several bands."""
    monkeypatch.setattr(inference, "BAND_ELEMENTS", 40)
    monkeypatch.setattr(inference, "WHOLE_MASK_ELEMENTS", 0)


def _random_case(seed, num_queries=6, num_classes=4):
    g = torch.Generator().manual_seed(seed)
    mask_cls = torch.randn((num_queries, num_classes + 1), generator=g) * 3
    low = torch.randn((num_queries, 5, 6), generator=g) * 4
    return mask_cls, resize_mask_logits(low, (20, 24), (19, 22), (19, 22))


def test_banded_semantic_equals_whole_tensor(small_bands):
    mask_cls, resized = _random_case(0)
    full = resized.full()
    expected = torch.einsum("qk,qhw->khw", F.softmax(mask_cls, -1)[:, :-1], full.sigmoid())
    torch.testing.assert_close(semantic_inference(mask_cls, resized), expected)
    torch.testing.assert_close(semantic_inference(mask_cls, full), expected)


def test_semantic_inference_in_one_product_equals_bands(monkeypatch):
    mask_cls, resized = _random_case(5)
    monkeypatch.setattr(inference, "BAND_ELEMENTS", 40)
    monkeypatch.setattr(inference, "WHOLE_MASK_ELEMENTS", 0)
    banded = semantic_inference(mask_cls, resized)
    rows = []
    original = ResizedMaskLogits.band
    monkeypatch.setattr(
        ResizedMaskLogits,
        "band",
        lambda self, a, b, q=None: rows.append(b - a) or original(self, a, b, q),
    )
    monkeypatch.setattr(inference, "WHOLE_MASK_ELEMENTS", resized.shape[0] * 19 * 22)
    torch.testing.assert_close(semantic_inference(mask_cls, resized), banded)
    assert rows == [19], "up to WHOLE_MASK_ELEMENTS the masks are made in one piece"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_banded_panoptic_equals_whole_tensor(small_bands, monkeypatch, seed):
    mask_cls, resized = _random_case(seed)
    banded = panoptic_inference(mask_cls, resized, {0, 1}, 0.3, 0.5)
    monkeypatch.setattr(inference, "BAND_ELEMENTS", 1 << 20)  # one band
    whole = panoptic_inference(mask_cls, resized.full(), {0, 1}, 0.3, 0.5)
    assert torch.equal(banded[0], whole[0]) and banded[1] == whole[1]
    assert banded[1], "the random case should make at least one segment"


def test_banded_panoptic_never_holds_all_rows(small_bands, monkeypatch):
    mask_cls, resized = _random_case(3)
    rows = []
    original = ResizedMaskLogits.band

    def recording_band(self, start, stop, queries=None):
        rows.append(stop - start)
        return original(self, start, stop, queries)

    monkeypatch.setattr(ResizedMaskLogits, "band", recording_band)
    panoptic_inference(mask_cls, resized, set(), 0.0, 0.0)
    semantic_inference(mask_cls, resized)
    assert rows and max(rows) < resized.shape[1] and sum(rows) == 2 * resized.shape[1]


def test_instance_inference_on_resized_logits_equals_whole_tensor():
    mask_cls, resized = _random_case(4)
    got = instance_inference(mask_cls, resized, 5, thing_ids={0, 2})
    expected = instance_inference(mask_cls, resized.full(), 5, thing_ids={0, 2})
    assert torch.equal(got.pred_classes, expected.pred_classes)
    assert torch.equal(got.pred_masks, expected.pred_masks)
    torch.testing.assert_close(got.scores, expected.scores)


def test_inference_precision_by_device_and_capability(monkeypatch, caplog):
    monkeypatch.setattr(precision, "_warned", set())
    assert precision.inference_autocast_dtype("float32", "cpu") is None
    assert precision.inference_autocast_dtype("float16", "cuda") is torch.float16
    assert precision.inference_autocast_dtype("bfloat16", "cuda") is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_supports_native_bfloat16", lambda: True)
    assert precision.inference_autocast_dtype("bfloat16", "cpu") is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_supports_native_bfloat16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="mask_former.modeling.precision"):
        assert precision.inference_autocast_dtype("bfloat16", "cpu") is None
        assert precision.inference_autocast_dtype("bfloat16", "cpu") is None
    assert len(caplog.records) == 1 and "no native bfloat16" in caplog.records[0].message
    assert precision.inference_autocast_dtype("float16", "cpu") is None
    with pytest.raises(ValueError, match="TEST.PRECISION = 'fp8'"):
        precision.inference_autocast_dtype("fp8", "cpu")


def test_auto_precision_follows_the_hardware(monkeypatch, caplog):
    monkeypatch.setattr(precision, "_told", set())
    # A CPU with native bfloat16 (AVX512-BF16, AMX) autocasts; one without runs float32, the
    # fast path there (no warning: "auto" asked for nothing it could not do).
    monkeypatch.setattr(precision, "cpu_supports_native_bfloat16", lambda: True)
    with caplog.at_level(logging.INFO, logger="mask_former.modeling.precision"):
        assert precision.inference_autocast_dtype("auto", "cpu") is torch.bfloat16
        assert precision.inference_autocast_dtype("auto", "cpu") is torch.bfloat16
        monkeypatch.setattr(precision, "cpu_supports_native_bfloat16", lambda: False)
        assert precision.inference_autocast_dtype("auto", "cpu") is None
        # CUDA: bfloat16 where the GPU has it, else float16 (no CUDA call is made here).
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
        assert precision.inference_autocast_dtype("auto", "cuda") is torch.float16
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
        assert precision.inference_autocast_dtype("auto", "cuda") is torch.bfloat16
    messages = [r.getMessage() for r in caplog.records]
    assert all(r.levelno == logging.INFO for r in caplog.records)
    # Logged once per device type and outcome: bf16 CPU, fp32 CPU, fp16 CUDA, bf16 CUDA.
    assert len(messages) == 4, messages
    assert "inference in bfloat16" in messages[0] and "inference in float32" in messages[1]


def _whole_tensor_results(model, batch):
    """Inference the way it ran before banding: full-size upsampling, crop, resize, per image."""
    results = []
    for x in batch:
        images = model.preprocess_image([x])
        outputs = model.sem_seg_head(model.backbone(images.tensor))
        up = F.interpolate(
            outputs["pred_masks"],
            size=images.tensor.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
        cls, masks = outputs["pred_logits"][0], up[0]
        masks = sem_seg_postprocess(masks, images.image_sizes[0], x["height"], x["width"])
        results.append(
            {
                "sem_seg": semantic_inference(cls, masks),
                "panoptic_seg": panoptic_inference(cls, masks, model.thing_ids, 0.2, 0.3),
                "instances": instance_inference(cls, masks, 7, thing_ids=model.thing_ids),
            }
        )
    return results


def test_model_outputs_equal_whole_tensor_inference(small_bands):
    cfg = tiny_swin_cfg(
        **{
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": True,
            "MODEL.MASK_FORMER.TEST.INSTANCE_ON": True,
            "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": 0.2,
            "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD": 0.3,
            "TEST.DETECTIONS_PER_IMAGE": 7,
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    model.thing_ids = {0, 2}
    images = random_images([(50, 70), (64, 45), (33, 40)])
    outputs = [(37, 52), (64, 45), (70, 90)]  # down-, same- and up-resized outputs
    batch = [{"image": im, "height": h, "width": w} for im, (h, w) in zip(images, outputs)]
    with torch.no_grad():
        got, expected = model(batch), _whole_tensor_results(model, batch)
    for g, e, size in zip(got, expected, outputs):
        assert g["sem_seg"].shape[-2:] == size
        torch.testing.assert_close(g["sem_seg"], e["sem_seg"], rtol=0, atol=1e-5)
        assert torch.equal(g["panoptic_seg"][0], e["panoptic_seg"][0])
        assert g["panoptic_seg"][1] == e["panoptic_seg"][1]
        assert torch.equal(g["instances"].pred_masks, e["instances"].pred_masks)
        torch.testing.assert_close(g["instances"].scores, e["instances"].scores)
    assert any(g["panoptic_seg"][1] for g in got) and any(len(g["instances"]) for g in got)


def test_batched_results_equal_single_image_results():
    cfg = tiny_swin_cfg(
        **{
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": True,
            "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": 0.2,
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    model.thing_ids = {0, 2}
    images = random_images([(50, 70), (96, 40), (33, 64)], seed=3)  # padded: 64x96, 96x64, 64x64
    batch = [{"image": im} for im in images]
    with torch.no_grad():
        together = model(batch)
        alone = [model([x])[0] for x in batch]
    assert any(r["panoptic_seg"][1] for r in alone)
    for t, a in zip(together, alone):
        assert torch.equal(t["sem_seg"].argmax(0), a["sem_seg"].argmax(0))
        torch.testing.assert_close(t["sem_seg"], a["sem_seg"], rtol=0, atol=1e-5)
        assert torch.equal(t["panoptic_seg"][0], a["panoptic_seg"][0])
        assert t["panoptic_seg"][1] == a["panoptic_seg"][1]


class _LargestOutput(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.op = t.numel(), func
        return out


def test_inference_makes_no_full_resolution_tensor_per_query(small_bands):
    cfg = tiny_swin_cfg(**{"MODEL.MASK_FORMER.TEST.PANOPTIC_ON": True})
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 16  # Q > K: Q x H x W exceeds the K x H x W output
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    height, width = 320, 448
    (image,) = random_images([(height, width)])
    with torch.no_grad(), _LargestOutput() as recorder:
        model([{"image": image, "height": height, "width": width}])
    num_queries, num_classes = 16, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    assert recorder.largest <= num_classes * height * width, recorder.op
    assert recorder.largest < num_queries * height * width


def test_whole_upsampling_equals_the_padded_upsampling_cropped():
    g = torch.Generator().manual_seed(6)
    low = torch.randn((4, 5, 6), generator=g) * 4
    resized = resize_mask_logits(low, (20, 24), (19, 22), (19, 22))
    assert resized.upsample_scales == (4.0, 4.0)
    padded = F.interpolate(low[None], size=(20, 24), mode="bilinear", align_corners=False)[0]
    # All rows at once: the upsampling kernel, bit for bit the padded upsampling cropped.
    assert torch.equal(resized.full(), padded[:, :19, :22])
    assert torch.equal(resized.full(torch.tensor([2, 0])), padded[[2, 0], :19, :22])
    # A band: the resize matrices, equal within rounding.
    torch.testing.assert_close(resized.band(3, 9), padded[:, 3:9, :22], rtol=0, atol=1e-5)
    # A resize after the crop is no plain upsampling: the matrices make every row.
    assert resize_mask_logits(low, (20, 24), (19, 22), (30, 22)).upsample_scales is None
