# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The benchmark rows beside Hugging Face transformers' MaskFormer (mask_former.benchmark.hf_row)
and of the demo's --parallel (mask_former.benchmark.parallel_row), on tiny configs and images:
their entries, the agreements they measure and their tables. No timing is asserted (the
machine is shared); only that the figures are consistent with each other.
"""

import numpy as np
import pytest
import torch

# The interop requirements (make setup installs them): a missing package fails, not skips.
import transformers

from mask_former.benchmark import hf_row, parallel_row
from mask_former.benchmark.worker import environment
from mask_former.inference import Prediction
from mask_former.utils.cpu import cpu_supports_native_bfloat16

SHAPES = "configs/shapes/maskformer_R18_bs8_1200.yaml"
AUTO = ("auto", ["MODEL.MASK_FORMER.TEST.PRECISION", "auto"])


def _tiny_hf_config(backbone: str):
    """A MaskFormer of 20 queries and 10 classes with a tiny R50-layout or Swin backbone."""
    if backbone == "R50":
        backbone_config = transformers.ResNetConfig(
            embedding_size=16,
            hidden_sizes=[32, 64, 128, 256],
            depths=[3, 4, 6, 3],
            layer_type="bottleneck",
            out_features=["stage1", "stage2", "stage3", "stage4"],
        )
    else:
        backbone_config = transformers.SwinConfig(
            embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=3, image_size=64
        )
    decoder = transformers.MaskFormerDetrConfig(
        d_model=32, decoder_layers=3, decoder_attention_heads=4, decoder_ffn_dim=64, num_queries=20
    )
    names = [f"class {i}" for i in range(10)]
    return transformers.MaskFormerConfig(
        backbone_config=backbone_config,
        decoder_config=decoder,
        fpn_feature_size=32,
        mask_feature_size=24,
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
    )


def _env():
    return {**environment(), "dtype": "float32"}


def _assert_caption(table: str) -> None:
    capability = torch.backends.cpu.get_cpu_capability()
    assert f"CPU capability {capability}" in table and "oneDNN bfloat16 native" in table


# Seeds whose random model gives a map of several classes (found by trying), so that agreeing
# with it says something: (backbone, seed, variants).
HF_CASES = [("R50", 3, [("float32", []), AUTO]), ("Swin-T", 4, [("float32", [])])]


@pytest.mark.parametrize("backbone, seed, variants", HF_CASES, ids=["R50", "Swin-T"])
def test_hf_row_agrees_with_hf_on_converted_weights(backbone, seed, variants):
    threads = torch.get_num_threads()
    entries = hf_row.bench_hf(
        backbone,
        (64, 96),
        repeats=2,
        threads=2,
        seed=seed,
        variants=variants,
        warmup=0,
        config=_tiny_hf_config(backbone),
    )
    assert torch.get_num_threads() == threads  # restored
    hf, *ours = entries
    assert [e["name"] for e in entries] == ["HF transformers float32"] + [n for n, _ in variants]
    for e in entries:
        assert e["backbone"] == backbone and e["size"] == [64, 96]
        assert len(e["ms"]) == 2 and e["min_ms"] <= e["median_ms"] <= e["max_ms"]
        assert e["first_call_s"] > 0
    assert hf["classes"] >= 2 and hf["largest_class_share"] <= 0.96
    float32 = ours[0]
    assert float32["runs_in"] is None
    # The same network on the same input, post-processed the same way: the same classes.
    assert float32["same_network_argmax_vs_hf"] >= 0.999
    # As each returns it: the post-processings differ in order where classes meet (HF resizes
    # the combined scores, this project the mask logits), on a few percent of these pixels.
    assert float32["same_argmax_vs_hf"] >= 0.97
    for e in ours:
        assert e["speedup_vs_hf"] == pytest.approx(hf["median_ms"] / e["median_ms"])
    if len(ours) > 1:  # "auto": bfloat16 exactly where the CPU computes it natively
        assert ours[1]["runs_in"] == ("bfloat16" if cpu_supports_native_bfloat16() else None)

    table = hf_row.hf_table(entries, _env())
    _assert_caption(table)
    assert f"| {backbone} | 64x96 | this project, float32 |" in table
    assert f"{100 * float32['same_argmax_vs_hf']:.2f}%" in table
    assert f"HF's map has {hf['classes']} classes" in table


def test_hf_config_is_the_ade20k_layout():
    r50 = hf_row.hf_config("R50")
    assert r50.backbone_config.depths == [3, 4, 6, 3]
    assert r50.backbone_config.hidden_sizes == [256, 512, 1024, 2048]
    assert r50.decoder_config.num_queries == 100 and r50.num_labels == 150
    assert (r50.fpn_feature_size, r50.mask_feature_size) == (256, 256)
    swin = hf_row.hf_config("Swin-T")
    assert (swin.backbone_config.embed_dim, swin.backbone_config.window_size) == (96, 7)
    assert swin.backbone_config.depths == [2, 2, 6, 2]
    with pytest.raises(ValueError, match="Swin-B"):
        hf_row.hf_config("Swin-B")


def test_parallel_row_matches_the_predictor():
    threads = torch.get_num_threads()
    entries = parallel_row.bench_parallel(
        SHAPES,
        num_images=2,
        size=(64, 64),
        workers=2,
        threads=2,
        seed=0,
        batch_sizes=(1, 2),
        precision="float32",  # where a result does not depend on its batch
    )
    assert torch.get_num_threads() == threads  # restored
    names = [e["name"] for e in entries]
    assert names == ["Predictor, batch 1", "Predictor, batch 2", "ParallelPredictor, 2 workers"]
    plain, _, pool = entries
    assert (plain["workers"], plain["threads"]) == (0, 2)
    assert (pool["workers"], pool["threads"]) == (2, 1)  # the threads shared among the workers
    assert pool["startup_s"] > 0 and "startup_s" not in plain
    for e in entries:
        assert e["images"] == 2 and e["size"] == [64, 64] and len(e["ms"]) == 1
        assert e["images_per_s"] == pytest.approx(2000.0 / e["median_ms"])
        assert e["speedup_vs_batch1"] == pytest.approx(e["images_per_s"] / plain["images_per_s"])
        assert e["same_as_predictor"] >= 0.999

    table = parallel_row.parallel_table(entries, _env())
    _assert_caption(table)
    assert "| ParallelPredictor, 2 workers | 2 x 1 | 2 of 64x64 |" in table


def test_noise_arrays_are_seeded_rgb_images():
    a, b = parallel_row.noise_arrays(2, (5, 7), seed=3)
    assert a.shape == (5, 7, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(parallel_row.noise_arrays(1, (5, 7), seed=4)[0], b)


def test_parallel_agreement_counts_pixels_over_all_images():
    semantic = Prediction("a", 2, 2, semantic=torch.tensor([[0, 1], [2, 3]]))
    panoptic = Prediction("b", 1, 4, panoptic=torch.tensor([[1, 1, 2, 2]], dtype=torch.int32))
    other = [
        Prediction("a", 2, 2, semantic=torch.tensor([[0, 1], [2, 0]])),  # 3 of 4 pixels
        Prediction("b", 1, 4, panoptic=torch.tensor([[1, 2, 2, 2]], dtype=torch.int32)),  # 3 of 4
    ]
    assert parallel_row._agreement(other, [semantic, panoptic]) == pytest.approx(6 / 8)
    assert parallel_row._agreement([semantic], [semantic]) == 1.0
