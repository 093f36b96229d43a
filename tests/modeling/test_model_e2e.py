# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""End-to-end training and inference of tiny models on CPU: shapes, odd sizes, gradients."""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage
from model_testing import random_images, tiny_resnet_cfg, tiny_swin_cfg

ODD_SIZES = [(61, 83), (45, 100)]


def _instances(h, w, classes, seed, bitmasks=False):
    g = torch.Generator().manual_seed(seed)
    inst = Instances((h, w))
    masks = torch.rand((len(classes), h, w), generator=g) > 0.5
    inst.gt_masks = BitMasks(masks) if bitmasks else masks
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def _train_batch(sizes, classes_per_image, bitmasks=False):
    images = random_images(sizes)
    return [
        {"image": img, "instances": _instances(h, w, cls, i, bitmasks)}
        for i, (img, (h, w), cls) in enumerate(zip(images, sizes, classes_per_image))
    ]


def _train_losses(model, batch, seed=0):
    model.train()
    torch.manual_seed(seed)
    with EventStorage():
        return model(batch)


def test_eval_odd_sizes_and_requested_output_size():
    torch.manual_seed(0)
    model = build_model(tiny_swin_cfg()).eval()
    images = random_images(ODD_SIZES)
    inputs = [
        {"image": images[0]},  # output at the input size
        {"image": images[1], "height": 90, "width": 200},  # output resized
    ]
    with torch.no_grad():
        results = model(inputs)
    assert results[0]["sem_seg"].shape == (4, 61, 83)
    assert results[1]["sem_seg"].shape == (4, 90, 200)
    assert set(results[0]) == {"sem_seg"}
    # Scores are sums of probabilities: non-negative and at most the number of queries.
    for r in results:
        assert torch.isfinite(r["sem_seg"]).all()
        assert r["sem_seg"].min() >= 0 and r["sem_seg"].sum(0).max() <= 5


def test_swin_pads_odd_sizes_internally():
    torch.manual_seed(0)
    backbone = build_model(tiny_swin_cfg()).backbone.eval()
    assert backbone.size_divisibility == 32
    strides = {k: v.stride for k, v in backbone.output_shape().items()}
    channels = {k: v.channels for k, v in backbone.output_shape().items()}
    assert strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert channels == {"res2": 16, "res3": 32, "res4": 64, "res5": 128}
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 61, 83))
    # 61x83 -> patches of 4 (padded to 64x84): 16x21, then halved with ceil: 8x11, 4x6, 2x3.
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "res2": (16, 21),
        "res3": (8, 11),
        "res4": (4, 6),
        "res5": (2, 3),
    }
    assert all(torch.isfinite(v).all() for v in out.values())


def test_drop_path_drops_whole_samples_only_in_training():
    from mask_former.modeling.backbone.swin import DropPath

    layer = DropPath(0.5)
    x = torch.ones(2000, 3, 4)
    torch.manual_seed(0)
    y = layer.train()(x)
    per_sample = y.flatten(1)
    # Each sample is either dropped (all 0) or kept and rescaled by 1 / (1 - p) = 2.
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)
    assert abs(y.mean().item() - 1.0) < 0.1
    assert torch.equal(layer.eval()(x), x)


def test_panoptic_and_instance_outputs_with_resnet_and_encoder_decoder():
    MetadataCatalog.get("_test_e2e_things").set(thing_dataset_id_to_contiguous_id={5: 0, 7: 2})
    cfg = tiny_resnet_cfg(
        **{
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": True,
            "MODEL.MASK_FORMER.TEST.INSTANCE_ON": True,
            "MODEL.MASK_FORMER.SIZE_DIVISIBILITY": -1,  # ResNet: 0, pad to the batch max
            "TEST.DETECTIONS_PER_IMAGE": 6,
            "DATASETS.TRAIN": ("_test_e2e_things",),
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert model.thing_ids == {0, 2}
    assert model.size_divisibility == 0
    with torch.no_grad():
        results = model([{"image": img} for img in random_images(ODD_SIZES)])
    for r, (h, w) in zip(results, ODD_SIZES):
        assert r["sem_seg"].shape == (4, h, w)
        seg, info = r["panoptic_seg"]
        assert seg.shape == (h, w) and seg.dtype == torch.int32
        ids = [s["id"] for s in info]
        assert ids == list(range(1, len(ids) + 1))
        assert set(torch.unique(seg).tolist()) - {0} == set(ids)
        inst = r["instances"]
        assert inst.image_size == (h, w)
        assert len(inst) <= 6
        assert set(inst.pred_classes.tolist()) <= {0, 2}  # panoptic_on keeps things only
        assert inst.pred_masks.shape[1:] == (h, w)


def test_training_gives_weighted_losses_and_finite_grads_for_every_parameter():
    cfg = tiny_swin_cfg()
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = _train_batch(ODD_SIZES, [[0, 3, 1], [2]])
    losses = _train_losses(model, batch)
    assert set(losses) == {
        "loss_ce",
        "loss_mask",
        "loss_dice",
        "loss_ce_0",
        "loss_mask_0",
        "loss_dice_0",
    }
    sum(losses.values()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) > 50
    for name, p in trainable:
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has non-finite gradient"
    assert any(p.grad.abs().sum() > 0 for n, p in trainable if n.startswith("backbone."))


def test_loss_weights_are_applied():
    cfg = tiny_swin_cfg(**{"MODEL.SWIN.DROP_PATH_RATE": 0.0})
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = _train_batch(ODD_SIZES, [[0, 3], [2]])
    base = _train_losses(model, batch)
    weights = model.criterion.loss_weight
    model.criterion.loss_weight = {k: v * (3.0 if "dice" in k else 1.0) for k, v in weights.items()}
    scaled = _train_losses(model, batch)
    for k in base:
        factor = 3.0 if "dice" in k else 1.0
        assert math.isclose(scaled[k].item(), factor * base[k].item(), rel_tol=1e-5), k
    # MASK_WEIGHT 20 is applied to loss_mask: the unweighted criterion output is 20 times less.
    model.criterion.loss_weight = {k: 1.0 for k in weights}
    unweighted = _train_losses(model, batch)
    assert math.isclose(base["loss_mask"].item(), 20 * unweighted["loss_mask"].item(), rel_tol=1e-5)


def test_bitmasks_and_bool_masks_give_the_same_losses():
    cfg = tiny_swin_cfg(**{"MODEL.SWIN.DROP_PATH_RATE": 0.0})
    torch.manual_seed(0)
    model = build_model(cfg)
    with_bool = _train_losses(model, _train_batch(ODD_SIZES, [[0, 1], [3]]))
    with_bitmasks = _train_losses(model, _train_batch(ODD_SIZES, [[0, 1], [3]], bitmasks=True))
    for k in with_bool:
        assert math.isclose(with_bool[k].item(), with_bitmasks[k].item(), rel_tol=1e-6), k


def test_padded_targets_are_background_top_left_aligned():
    model = build_model(tiny_swin_cfg())
    captured = []

    def record_targets(outputs, targets):
        captured.extend(targets)
        return {}

    model.criterion.forward = record_targets
    batch = _train_batch(ODD_SIZES, [[0, 1], [3]])
    _train_losses(model, batch)
    targets = captured
    for t, item in zip(targets, batch):
        h, w = item["instances"].image_size
        assert t["masks"].shape[-2:] == (64, 128)  # both padded to the batch (div. by 32)
        assert torch.equal(t["masks"][:, :h, :w], item["instances"].gt_masks)
        assert not t["masks"][:, h:, :].any() and not t["masks"][:, :, w:].any()
        assert torch.equal(t["labels"], item["instances"].gt_classes)


def test_images_without_segments_train_with_finite_losses():
    """
    Without any segment every query is unmatched: the mask losses are exactly 0 and the class
    loss of each layer is CLASS_WEIGHT times the mean "no object" cross-entropy of its logits
    (all queries have the same class weight, so the weighted mean is the plain mean).
    """
    torch.manual_seed(0)
    model = build_model(tiny_swin_cfg(**{"MODEL.MASK_FORMER.CLASS_WEIGHT": 2.0}))
    heads = []
    model.sem_seg_head.register_forward_hook(lambda module, args, out: heads.append(out))
    losses = _train_losses(model, _train_batch(ODD_SIZES, [[], []]))
    [outputs] = heads
    layers = {"": outputs, "_0": outputs["aux_outputs"][0]}
    assert set(losses) == {f"loss_{n}{s}" for n in ("ce", "mask", "dice") for s in layers}
    for suffix, layer in layers.items():
        assert losses[f"loss_mask{suffix}"].item() == 0
        assert losses[f"loss_dice{suffix}"].item() == 0
        logits = layer["pred_logits"].detach().double()
        assert logits.shape == (2, 5, 5)  # K + 1 = 5: "no object" is the last class
        expected = 2.0 * -torch.log_softmax(logits, -1)[..., -1].mean()
        assert losses[f"loss_ce{suffix}"].item() == pytest.approx(expected.item(), rel=1e-6)
    sum(losses.values()).backward()
    class_embed = model.sem_seg_head.predictor.class_embed.weight.grad
    assert torch.isfinite(class_embed).all() and class_embed.abs().sum() > 0


def test_training_without_instances_is_a_clear_error():
    model = build_model(tiny_swin_cfg()).train()
    with pytest.raises(ValueError, match="instances"):
        model([{"image": random_images([(64, 64)])[0]}])


@pytest.mark.parametrize("head", ["PerPixelBaselineHead", "PerPixelBaselinePlusHead"])
def test_per_pixel_baselines_under_semantic_segmentor(head):
    cfg = tiny_swin_cfg(
        **{
            "MODEL.META_ARCHITECTURE": "SemanticSegmentor",
            "MODEL.SEM_SEG_HEAD.NAME": head,
            "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 4,  # = NUM_CLASSES for the "plus" head
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    images = random_images(ODD_SIZES)
    g = torch.Generator().manual_seed(3)
    batch = [
        {"image": img, "sem_seg": torch.randint(0, 4, (h, w), generator=g)}
        for img, (h, w) in zip(images, ODD_SIZES)
    ]
    batch[0]["sem_seg"][:10] = 255  # ignored pixels
    logits = {}
    model.sem_seg_head.predictor.register_forward_hook(lambda m, i, o: logits.update(out=o))
    with EventStorage():
        losses = model.train()(batch)
    expected_names = {"loss_sem_seg"} | ({"loss_sem_seg_0"} if "Plus" in head else set())
    assert set(losses) == expected_names
    # The last-layer loss is the cross-entropy of the x4-upsampled stride-4 logits.
    out = logits["out"] if head == "PerPixelBaselineHead" else logits["out"]["pred_masks"]
    assert out.shape[1] == 4
    up = F.interpolate(out, scale_factor=4, mode="bilinear", align_corners=False)
    target = torch.full((2,) + tuple(up.shape[-2:]), 255, dtype=torch.int64)
    for i, (h, w) in enumerate(ODD_SIZES):
        target[i, :h, :w] = batch[i]["sem_seg"]
    expected = F.cross_entropy(up, target, ignore_index=255)
    assert math.isclose(losses["loss_sem_seg"].item(), expected.item(), rel_tol=1e-5)
    with torch.no_grad():
        results = model.eval()(
            [{"image": images[0]}, {"image": images[1], "height": 30, "width": 50}]
        )
    assert results[0]["sem_seg"].shape == (4, 61, 83)
    assert results[1]["sem_seg"].shape == (4, 30, 50)


def test_per_pixel_baseline_plus_needs_one_query_per_class():
    cfg = tiny_swin_cfg(
        **{
            "MODEL.META_ARCHITECTURE": "SemanticSegmentor",
            "MODEL.SEM_SEG_HEAD.NAME": "PerPixelBaselinePlusHead",
        }
    )
    with pytest.raises(ValueError, match="NUM_OBJECT_QUERIES"):
        build_model(cfg)


def test_unknown_pixel_decoder_and_in_feature_are_clear_errors():
    with pytest.raises(KeyError, match="PIXEL_DECODER_NAME"):
        build_model(tiny_swin_cfg(**{"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "Nope"}))
    with pytest.raises(ValueError, match="TRANSFORMER_IN_FEATURE"):
        build_model(tiny_swin_cfg(**{"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "res9"}))
    with pytest.raises(ValueError, match="no transformer encoder"):
        cfg = tiny_swin_cfg(**{"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "transformer_encoder"})
        build_model(cfg).eval()([{"image": random_images([(64, 64)])[0]}])


def test_at_least_one_inference_output_must_be_enabled():
    with pytest.raises(ValueError, match="SEMANTIC_ON"):
        build_model(tiny_swin_cfg(**{"MODEL.MASK_FORMER.TEST.SEMANTIC_ON": False}))


def test_pixel_embedding_feeds_the_mask_features_to_the_predictor():
    """TRANSFORMER_IN_FEATURE "pixel_embedding": the predictor attends to the pixel embeddings."""
    cfg = tiny_swin_cfg(
        **{
            "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "pixel_embedding",
            "MODEL.SEM_SEG_HEAD.MASK_DIM": 24,
        }
    )
    model = build_model(cfg).eval()
    head = model.sem_seg_head
    assert head.predictor.input_proj.in_channels == 24
    seen = {}
    head.predictor.register_forward_hook(lambda m, args, out: seen.update(args=args))
    with torch.no_grad():
        model([{"image": random_images([(64, 96)])[0]}])
    x, mask_features = seen["args"]
    assert x is mask_features and x.shape[1:] == (24, 16, 24)  # stride 4
