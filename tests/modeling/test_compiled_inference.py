# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
MODEL.MASK_FORMER.TEST.COMPILE: the network of inference through torch.compile (inductor, frozen
weights) gives the eager model's results, keeps its state_dict keys, compiles a bounded number of
input shapes, and is dropped when the weights may change. The plumbing is tested with dynamo's
"aot_eager" backend (traced graphs, no code generation: seconds instead of the minute an inductor
compile takes on 2 cores); inductor's agreement with eager on the real models is measured by
``tools/benchmark.py`` (its "same argmax" column).
"""

import pytest
import torch
from detectron2.modeling import build_model

from mask_former.modeling import compiled
from tests.modeling.model_testing import random_images, tiny_swin_cfg


def _model(compile_on: bool):
    torch.manual_seed(0)
    cfg = tiny_swin_cfg(**{"MODEL.MASK_FORMER.TEST.COMPILE": compile_on})
    return build_model(cfg).eval()


def _inputs(size, seed=0):
    (image,) = random_images([size], seed)
    return [{"image": image, "height": size[0], "width": size[1]}]


@pytest.fixture(scope="module")
def models():
    """(eager, compiled) models with the same weights; the compiled one has run one 64x96 input."""
    backend, compiled.BACKEND = compiled.BACKEND, "aot_eager"
    try:
        yield _compiled_models()
    finally:
        compiled.BACKEND = backend


def _compiled_models():
    eager, comp = _model(False), _model(True)
    comp.load_state_dict(eager.state_dict())
    comp.compiled_network.max_shapes = 1
    with torch.no_grad():
        comp(_inputs((64, 96)))
    assert comp.compiled_network._compiled is not None
    return eager, comp


def test_compiled_results_equal_eager(models):
    eager, comp = models
    inputs = _inputs((64, 96), seed=1)
    with torch.no_grad():
        want, got = eager(inputs)[0]["sem_seg"], comp(inputs)[0]["sem_seg"]
    assert len(comp.compiled_network.compiled_shapes) == 1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert torch.equal(got.argmax(0), want.argmax(0))


def test_compile_keeps_the_state_dict_keys(models):
    eager, comp = models
    assert list(comp.state_dict()) == list(eager.state_dict())
    assert not any("_orig_mod" in k for k in comp.state_dict())


def test_shapes_beyond_the_bound_run_eagerly(models, monkeypatch):
    eager, comp = models
    calls = []
    network = comp.compiled_network.network
    monkeypatch.setattr(
        comp.compiled_network, "network", lambda *a: calls.append(a[2].shape) or network(*a)
    )
    inputs = _inputs((96, 64), seed=2)  # another padded shape: beyond max_shapes = 1
    with torch.no_grad():
        got = comp(inputs)[0]["sem_seg"]
        want = eager(inputs)[0]["sem_seg"]
    assert calls == [torch.Size([1, 3, 96, 64])], "the new shape runs the eager network"
    assert len(comp.compiled_network.compiled_shapes) == 1
    assert torch.equal(got, want)


def test_new_weights_or_gradients_do_not_use_the_frozen_network(models):
    eager, comp = models
    assert comp.compiled_network.compiled_shapes
    # Gradients on: eager (inductor's freezing is for inference only).
    out = comp.head_outputs(comp.pad_images([comp.normalize(_inputs((64, 96))[0]["image"])]).tensor)
    assert out["pred_masks"].requires_grad
    comp.load_state_dict(eager.state_dict())
    assert not comp.compiled_network.compiled_shapes, "loading weights drops the compiled network"
    comp.compiled_network._shapes.add("marker")
    comp.train()
    assert not comp.compiled_network.compiled_shapes, "training mode drops it too"
    comp.eval()


def test_compile_is_off_by_default():
    assert build_model(tiny_swin_cfg()).compiled_network is None
