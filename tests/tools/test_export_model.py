# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
tools/export_model.py: tiny MaskFormers exported to ONNX and run in onnxruntime match PyTorch
at image sizes that are not multiples of 32 (the graph pads), for the Swin backbone with the
base pixel decoder and for a ResNet with the transformer-encoder pixel decoder; by default with
the torch.export-based exporter (``dynamo=True``), the TorchScript-based one as the fallback.
"""

import logging
import operator
import sys
import warnings

import numpy as np

# The interop requirements (make setup installs them): a missing package fails, not skips.
import onnx
import onnxruntime as ort
import pytest
import torch
from detectron2.modeling import build_model
from tools_testing import load_script

from mask_former.export import raw_mask_logits
from mask_former.modeling.inference import semantic_inference
from tests.modeling.model_testing import random_images, tiny_resnet_cfg, tiny_swin_cfg

# Image sizes of the comparisons: neither is a multiple of 32, nor the traced size.
SIZES = [(45, 77), (100, 61)]
ATOL = 1e-4


@pytest.fixture(scope="module")
def export_model():
    return load_script("tools/export_model.py")


def _session(path) -> "ort.InferenceSession":
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # tiny graphs: threads would only contend for the CPU
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _Records(logging.Handler):
    """The log records of the onnx packages (onnxscript, onnx_ir, torch.onnx)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("onnx", "torch.onnx")):
            self.records.append(record)


@pytest.fixture(scope="module")
def swin_export(export_model, tmp_path_factory):
    """
    The tiny Swin model exported (semantic output, (3, H, W) input) with ``export`` and its
    default exporter; also the ``dynamo`` argument of each torch.onnx.export call and the
    warnings that reached the caller.
    """
    calls = []
    real_export = torch.onnx.export

    def spy(*args, **kwargs):
        calls.append(kwargs.get("dynamo"))
        return real_export(*args, **kwargs)

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("swin") / "model.onnx"
    records = _Records()
    root = logging.getLogger()
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patch.setattr(torch.onnx, "export", spy)
        patch.setattr(root, "level", logging.INFO)  # as a script with logging.basicConfig
        root.addHandler(records)
        try:
            wrapper = export_model.export(tiny_swin_cfg(), str(path))
        finally:
            root.removeHandler(records)
    return path, wrapper.model, calls, caught + records.records


@pytest.fixture(scope="module")
def resnet_raw_export(export_model, tmp_path_factory):
    """
    The tiny ResNet model, saved as a checkpoint and exported by the command line with raw
    outputs and a (1, 3, H, W) input, loading the checkpoint through MODEL.WEIGHTS.
    """
    folder = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(1)
    cfg = tiny_resnet_cfg()
    model = build_model(cfg).eval()
    torch.save({"model": model.state_dict()}, folder / "model.pth")
    (folder / "config.yaml").write_text(cfg.dump())
    args = ["--config-file", str(folder / "config.yaml"), "--output", str(folder / "m.onnx")]
    args += ["--raw-outputs", "--batched", "--opts", "MODEL.WEIGHTS", str(folder / "model.pth")]
    assert export_model.main(args) == 0  # includes the tool's own onnxruntime verification
    return folder / "m.onnx", model


def test_semantic_graph_matches_pytorch_at_two_sizes(swin_export):
    path, model, _, _ = swin_export
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["sem_seg"]
    for image in random_images(SIZES, seed=3):
        (got,) = session.run(None, {"image": image.numpy()})
        with torch.no_grad():
            expected = model([{"image": image}])[0]["sem_seg"].numpy()
        assert got.shape == expected.shape == (4,) + tuple(image.shape[1:])
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_raw_graph_matches_pytorch_at_two_sizes(resnet_raw_export):
    path, model = resnet_raw_export
    session = _session(path)
    assert [o.name for o in session.get_outputs()] == ["pred_logits", "pred_masks"]
    for image in random_images(SIZES, seed=4):
        pred_logits, pred_masks = session.run(None, {"image": image[None].numpy()})
        with torch.no_grad():
            outputs = model.head_outputs(model.preprocess_image([{"image": image}]).tensor)
            expected_sem_seg = model([{"image": image}])[0]["sem_seg"]
        np.testing.assert_allclose(pred_logits, outputs["pred_logits"][0], rtol=0, atol=ATOL)
        np.testing.assert_allclose(pred_masks, outputs["pred_masks"][0], rtol=0, atol=ATOL)
        # Post-processing in Python from the raw outputs gives the model's results.
        masks = raw_mask_logits(torch.from_numpy(pred_masks), image.shape[1:], 32)
        sem_seg = semantic_inference(torch.from_numpy(pred_logits), masks)
        torch.testing.assert_close(sem_seg, expected_sem_seg, rtol=0, atol=ATOL)


def test_metadata_and_restored_model(swin_export):
    path, model, _, _ = swin_export
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["input_format"] == "BGR"
    assert props["size_divisibility"] == "32"
    assert props["outputs"] == "sem_seg"
    assert props["exporter"] == "dynamo"
    # The export computes the last decoder layer only; the model keeps deep supervision.
    assert model.sem_seg_head.predictor.deep_supervision
    assert not model.training


def test_onnx_latency(export_model, swin_export):
    path, *_ = swin_export
    seconds = export_model.onnx_latency(str(path), 50, 70, warmup=1, repeats=3, threads=1)
    assert len(seconds) == 3 and all(s > 0 for s in seconds)


def test_floor_division_of_sizes_rounds_down(tmp_path):
    from mask_former.inference.export import _floor_division_for_onnx

    class PaddedWindows(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(-(-x.shape[1] // 7) * 7)  # the Swin padded-grid arithmetic

    path = str(tmp_path / "fd.onnx")
    with _floor_division_for_onnx(17):
        torch.onnx.export(
            PaddedWindows(), (torch.zeros(1, 6),), path, dynamo=False, opset_version=17,
            input_names=["x"], dynamic_axes={"x": {1: "n"}},
        )  # fmt: skip
    session = _session(path)
    for n in (6, 7, 13):
        (out,) = session.run(None, {"x": np.zeros((1, n), np.float32)})
        assert out.shape == (-(-n // 7) * 7,)


def test_missing_onnxruntime_is_a_clear_error(export_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(export_model.MissingPackageError, match="needs the 'onnxruntime' package"):
        export_model.import_onnx_packages()
    # The command line stops before reading the config.
    assert export_model.main(["--config-file", "missing.yaml", "--output", "unused.onnx"]) == 2


def test_wrapper_prepares_the_image_with_the_models_functions(swin_export):
    """Normalised and zero-padded to multiples of 32 at the bottom and right (by hand here)."""
    from mask_former.inference.exportable import ExportableMaskFormer

    _, model, _, _ = swin_export
    wrapper = ExportableMaskFormer(model)
    image = torch.rand(3, 45, 77) * 255
    mean = torch.tensor(model.pixel_mean.flatten().tolist()).view(3, 1, 1)
    std = torch.tensor(model.pixel_std.flatten().tolist()).view(3, 1, 1)
    expected = torch.zeros(1, 3, 64, 96)
    expected[0, :, :45, :77] = (image - mean) / std
    torch.testing.assert_close(wrapper.preprocess(image), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(wrapper.preprocess(image[None]), expected, rtol=0, atol=1e-6)
    # The same function prepares the model's own batches.
    torch.testing.assert_close(
        model.preprocess_image([{"image": image}]).tensor, expected, rtol=0, atol=1e-6
    )


def test_the_tool_calls_the_package(export_model):
    from mask_former.inference import export as package

    for name in ("MissingPackageError", "import_onnx_packages", "onnx_session", "onnx_latency",
                 "verify_export", "export"):  # fmt: skip
        assert getattr(export_model, name) is getattr(package, name), name


def _torch_export_nodes(path) -> int:
    """Nodes that carry the torch.export provenance the dynamo exporter records (fx op)."""
    nodes = onnx.load(str(path)).graph.node
    return sum(
        any(p.key == "namespace" and "aten." in p.value for p in node.metadata_props)
        for node in nodes
    )


def test_the_default_exporter_is_torch_export(swin_export):
    path, _, calls, caught = swin_export
    assert calls == [True]  # one torch.onnx.export(..., dynamo=True) call
    assert _torch_export_nodes(path) > 100
    # The TorchScript exporter's deprecation (or any other warning) does not reach the user,
    # nor the onnx packages' log lines about their graph rewrites.
    assert [getattr(w, "message", None) or w.getMessage() for w in caught] == []


def test_torchscript_fallback_agrees_with_pytorch_and_the_default(
    export_model, swin_export, tmp_path
):
    default_path, model, _, _ = swin_export
    torch.manual_seed(0)  # the same weights as the default export's
    path = tmp_path / "torchscript.onnx"
    wrapper = export_model.export(tiny_swin_cfg(), str(path), exporter="torchscript")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(wrapper.model.state_dict()[name], value, rtol=0, atol=0)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["exporter"] == "torchscript" and props["outputs"] == "sem_seg"
    assert _torch_export_nodes(path) == 0  # made by the TorchScript exporter indeed
    sessions = [_session(default_path), _session(path)]
    for image in random_images(SIZES + [(237, 181)], seed=5):
        with torch.no_grad():
            expected = model([{"image": image}])[0]["sem_seg"].numpy()
        default, fallback = (s.run(None, {"image": image.numpy()})[0] for s in sessions)
        np.testing.assert_allclose(fallback, expected, rtol=0, atol=ATOL)
        np.testing.assert_allclose(default, expected, rtol=0, atol=ATOL)
        np.testing.assert_allclose(default, fallback, rtol=0, atol=ATOL)


def test_dynamo_floor_division_of_sizes_rounds_down(tmp_path):
    from mask_former.inference.export import _floor_division_table

    class PaddedWindows(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(-(-x.shape[1] // 7) * 7)  # the Swin padded-grid arithmetic

    table = _floor_division_table()
    assert list(table) == [operator.floordiv]
    program = torch.onnx.export(
        PaddedWindows().eval(), (torch.zeros(1, 6),), dynamo=True, verbose=False,
        input_names=["x"], dynamic_shapes={"x": {1: torch.export.Dim("n", min=1)}},
        custom_translation_table=table,
    )  # fmt: skip
    program.save(str(tmp_path / "fd.onnx"))
    session = _session(tmp_path / "fd.onnx")
    for n in (1, 6, 7, 13, 15):
        (out,) = session.run(None, {"x": np.zeros((1, n), np.float32)})
        assert out.shape == (-(-n // 7) * 7,)


def test_padding_under_torch_export_is_the_models(swin_export, monkeypatch):
    from mask_former.inference.exportable import ExportableMaskFormer, pad_to_multiple

    _, model, _, _ = swin_export
    wrapper = ExportableMaskFormer(model)
    for image in random_images([(45, 77), (64, 96), (1, 33), (100, 61)], seed=6):
        expected = model.pad_images([model.normalize(image)]).tensor
        assert expected.shape[-2] % 32 == 0 and expected.shape[-1] % 32 == 0
        torch.testing.assert_close(pad_to_multiple(model.normalize(image), 32), expected)
        # The wrapper takes this path while torch.export traces it.
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
        torch.testing.assert_close(wrapper.preprocess(image), expected)
        monkeypatch.undo()


@pytest.mark.parametrize("weights", ["garbage", "other_model"])
def test_unusable_weights_exit_1_with_one_line(export_model, tmp_path, capsys, weights):
    cfg = tiny_resnet_cfg()
    (tmp_path / "config.yaml").write_text(cfg.dump())
    path = tmp_path / "model.pth"
    if weights == "garbage":
        path.write_bytes(b"not a checkpoint")
    else:  # a checkpoint of another model: fits none of this one's parameters
        torch.save({"model": {"backbone.other.weight": torch.zeros(3)}}, path)
    args = ["--config-file", str(tmp_path / "config.yaml"), "--output", str(tmp_path / "m.onnx")]
    assert export_model.main(args + ["--opts", "MODEL.WEIGHTS", str(path)]) == 1
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith(f"Cannot load checkpoint {path}: ")
    assert not (tmp_path / "m.onnx").exists()


def test_missing_onnxscript_fails_the_default_exporter_only(export_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(export_model.MissingPackageError, match="needs the 'onnxscript' package"):
        export_model.import_onnx_packages("dynamo")
    export_model.import_onnx_packages("torchscript")  # the fallback does not need it
    assert export_model.main(["--config-file", "missing.yaml", "--output", "unused.onnx"]) == 2
