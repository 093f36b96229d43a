# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
One training step of a tiny MaskFormer (ResNet-18, small head) on the targets the train mapper
makes from each miniature dataset format: the losses are finite and positive, the gradients
reach the backbone and the classifier, and an optimizer step changes the weights. On the shapes
datasets: the losses carry their config weights, every parameter gets a gradient, and a small
step along it lowers the loss.
"""

import pytest
import torch
from data_formats import FORMATS, register_format, tiny_model_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from mask_former.data import build_train_mapper
from mask_former.modeling.criterion import SetCriterion


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: threads only add contention on a shared 2-core machine (seconds per test).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The first decoder layer's self-attention attends among the all-zero initial queries (DETR):
# with its biases initialised to 0 its output is 0, so its weights and the scale of the norm
# after it get no gradient in the first step.
FIRST_SELF_ATTENTION = {
    f"sem_seg_head.predictor.transformer.decoder.layers.0.{name}"
    for name in ("self_attn.in_proj_weight", "self_attn.out_proj.weight", "norm1.weight")
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_one_training_step(tmp_path, fmt):
    name, _, cfg = register_format(tmp_path, fmt)
    cfg = tiny_model_cfg(cfg)
    record = DatasetCatalog.get(name)[0]
    mapper = build_train_mapper(cfg)
    batch = [mapper(record), mapper(record)]

    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    before = {k: p.detach().clone() for k, p in params.items()}
    optimizer = torch.optim.SGD(params.values(), lr=0.1)
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() > 0, losses
    optimizer.zero_grad()
    total.backward()
    grads = {k: p.grad for k, p in params.items() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any("backbone" in k and g.abs().sum() > 0 for k, g in grads.items())
    assert any("class_embed" in k or "class_predictor" in k for k in grads), sorted(grads)[:5]
    optimizer.step()
    changed = [k for k, p in params.items() if not torch.equal(p.detach(), before[k])]
    assert len(changed) > len(params) // 2


def _shapes_batch(tmp_path, monkeypatch, kind, mapper_name):
    """The config of the tiny model and the mapped batch of a 2-image shapes train split."""
    from data_formats import mini_cfg
    from data_testutils import unique_prefix

    from mask_former.data import shapes_generator as shapes
    from mask_former.data.datasets import register_shapes

    monkeypatch.setattr(shapes, "SHAPES_SPLITS", {"train": (20211, 2), "val": (20212, 1)})
    prefix = unique_prefix()
    register_shapes(str(tmp_path), prefix)
    name = f"{prefix}shapes_{kind}_train"
    cfg = tiny_model_cfg(mini_cfg(name, mapper_name, 6, 255))
    cfg.INPUT.MIN_SIZE_TRAIN = (96, 128)
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (96, 96)
    cfg.INPUT.COLOR_AUG_SSD = True
    cfg.INPUT.SIZE_DIVISIBILITY = 96 if mapper_name != "detr_panoptic" else -1
    # Distinct loss weights, so that a weight applied to the wrong loss shows.
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 2.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 3.0
    mapper = build_train_mapper(cfg)
    batch = [mapper(r) for r in DatasetCatalog.get(name)]
    assert all(len(b["instances"]) > 0 for b in batch)
    return cfg, batch


def _losses_and_criterion_inputs(model, batch):
    """The model's training losses, and the (outputs, targets) its criterion was given."""
    seen = {}
    criterion_forward = model.criterion.forward

    def capture(outputs, targets):
        seen.update(outputs=outputs, targets=targets)
        return criterion_forward(outputs, targets)

    model.criterion.forward = capture
    with EventStorage():
        losses = model(batch)
    model.criterion.forward = criterion_forward
    return losses, seen["outputs"], seen["targets"]


def _assert_config_weights(cfg, model, losses, outputs, targets):
    """Each loss is its config weight times the unweighted loss of the same predictions."""
    mf = cfg.MODEL.MASK_FORMER
    weight = {"ce": mf.CLASS_WEIGHT, "mask": mf.MASK_WEIGHT, "dice": mf.DICE_WEIGHT}
    unit = SetCriterion(
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        matcher=model.criterion.matcher,
        no_object_weight=mf.NO_OBJECT_WEIGHT,
        num_aux_layers=mf.DEC_LAYERS - 1,
    )
    with torch.no_grad():
        unweighted = unit(outputs, targets)
    assert set(losses) == set(unweighted) == {f"loss_{n}{s}" for n in weight for s in ("", "_0")}
    for key, value in losses.items():
        expected = weight[key.split("_")[1]] * unweighted[key].item()
        assert value.item() == pytest.approx(expected, rel=1e-6), key


@pytest.mark.parametrize(
    "kind, mapper_name",
    [
        ("sem_seg", "mask_former_semantic"),
        ("panoptic", "mask_former_panoptic"),
        ("panoptic", "detr_panoptic"),
    ],
)
def test_one_training_step_on_shapes(tmp_path, monkeypatch, kind, mapper_name):
    cfg, batch = _shapes_batch(tmp_path, monkeypatch, kind, mapper_name)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    losses, outputs, targets = _losses_and_criterion_inputs(model, batch)
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() > 0
    _assert_config_weights(cfg, model, losses, outputs, targets)

    # Every trainable parameter gets a finite gradient, non-zero but for the first decoder
    # layer's self-attention ...
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD(params.values(), lr=1e-3)
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())
    zero = {k for k, p in params.items() if p.grad.abs().sum() == 0}
    assert zero <= FIRST_SELF_ATTENTION, sorted(zero - FIRST_SELF_ATTENTION)
    # ... and a small step along it lowers the loss of the same batch.
    optimizer.step()
    with EventStorage(), torch.no_grad():
        after = sum(model(batch).values()).item()
    assert after < total.item(), (after, total.item())
