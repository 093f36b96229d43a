# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""tools/analyze_model.py on the tiny shapes MaskFormer (no dataset needed with a fixed size)."""

import logging

import pytest
import torch
from detectron2.modeling import build_model
from fvcore.nn import FlopCountAnalysis
from torch import nn

CONFIG = "configs/shapes/maskformer_panoptic_R18_bs8_1200.yaml"


def _conv_macs_by_hooks(module: nn.Module, run) -> int:
    """Multiply-accumulates of every Conv2d in ``module``, from the output shapes of a run."""
    total = 0

    def hook(conv, inputs, output):
        nonlocal total
        kh, kw = conv.kernel_size
        total += output.numel() * (conv.in_channels // conv.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    run()
    for h in handles:
        h.remove()
    return total


def test_flops_and_parameters_of_the_shapes_model(tool, capsys):
    analyze = tool("analyze_model")
    # 64 x 64 inputs keep the traced runs short.
    opts = ["INPUT.CROP.SIZE", "[64, 64]"]
    report = analyze.main(
        ["--tasks", "parameter", "flop", "activation", "--num-inputs", "1",
         "--use-fixed-input-size", "--config-file", CONFIG] + opts
    )  # fmt: skip
    args = analyze.parse_args(["--tasks", "flop", "--config-file", CONFIG] + opts)
    assert args.opts == opts
    cfg = analyze.setup(args)
    assert cfg.is_frozen() and cfg.DATALOADER.NUM_WORKERS == 0 and cfg.INPUT.CROP.SIZE == [64, 64]
    model = build_model(cfg).eval()
    num_params = sum(p.numel() for p in model.parameters())
    assert f"{num_params / 1e6:.3f}M" in report  # first row of the parameter table
    assert "Total GFLOPs" in report and "over 1 input(s)" in report
    assert "Total M activations" in report
    # The input size it measured, after each count, and a progress bar of the inputs.
    assert report.count("Input size (H x W): 64 x 64 (1 input)\n") == 1
    assert report.endswith("Input size (H x W): 64 x 64 (1 input)")
    captured = capsys.readouterr()
    assert report in captured.out
    assert "flop count: 100%" in captured.err and "activation count: 100%" in captured.err
    assert "1/1" in captured.err

    # The backbone's count is exactly its convolutions' multiply-accumulates (BatchNorm,
    # ReLU and max-pooling are not counted), computed here from forward hooks.
    size = cfg.INPUT.CROP.SIZE[0]
    (image,) = list(analyze.iter_images(cfg, 1, fixed_input_size=True))
    assert image.shape == (3, size, size)
    with torch.no_grad():
        (analysis,) = analyze.run_analyses(FlopCountAnalysis, model, [image])
        expected = _conv_macs_by_hooks(model.backbone, lambda: model([{"image": image}]))
    assert analysis.by_module()["model.backbone"] == expected
    # ResNet-18 stem: 64 x 3 x 7 x 7 weights applied at (64 / 2)^2 positions.
    assert analysis.by_module()["model.backbone.stem.conv1"] == 64 * 3 * 49 * 32 * 32
    total = analysis.total()
    assert expected < total < 1.5 * expected  # the head is small next to the backbone
    assert f"Total GFLOPs: {total / 1e9:.3f} +- 0.000" in report


def test_bad_arguments_are_rejected(tool):
    analyze = tool("analyze_model")
    with pytest.raises(SystemExit):
        analyze.main(["--tasks", "flop", "--num-inputs", "0", "--config-file", CONFIG])
    with pytest.raises(SystemExit):
        analyze.main(["--tasks", "speed", "--config-file", CONFIG])


def test_training_flags_of_old_command_lines_are_ignored_with_a_warning(tool, caplog):
    # The tool once took detectron2's training parser: its flags still parse, and say so.
    analyze = tool("analyze_model")
    argv = ["--tasks", "flop", "--num-gpus", "2", "--resume", "--config-file", CONFIG]
    argv += ["MODEL.WEIGHTS", ""]
    with caplog.at_level(logging.WARNING, logger="mask_former.analyze_model"):
        args = analyze.parse_args(argv)
    assert args.opts == ["MODEL.WEIGHTS", ""] and args.tasks == ["flop"]
    warned = sorted(r.getMessage().split()[0] for r in caplog.records)
    assert warned == ["--num-gpus", "--resume"]


def test_help_says_which_flags_are_ignored(tool, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool("analyze_model").parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--config-file", "--tasks", "--num-inputs", "--use-fixed-input-size", "opts"):
        assert flag in text
    # Flags it accepts only so that old command lines run say that they are ignored.
    used, ignored = text.split("training flags this tool once accepted", 1)
    used = used.split("options:", 1)[1]  # after the usage line, which names every flag
    for flag in ("--eval-only", "--resume", "--num-gpus", "--num-machines", "--dist-url"):
        assert flag not in used and flag in ignored
    assert ignored.count("accepted for old command lines and ignored") == 6


def test_input_sizes_are_summarized(tool):
    sizes = tool("analyze_model").format_input_sizes
    assert sizes([(64, 64)] * 3) == "Input size (H x W): 64 x 64 (3 inputs)"
    text = sizes([(512, 683), (512, 512), (512, 683), (480, 640)], most=2)
    assert text == (
        "Input sizes (H x W) of the 4 inputs: 512 x 683 (2), 512 x 512 (1), and 1 other "
        "sizes; mean 504 x 630"
    )


def test_no_progress_bar_when_asked(tool, capsys):
    analyze = tool("analyze_model")
    argv = ["--tasks", "flop", "--num-inputs", "1", "--use-fixed-input-size", "--no-progress"]
    report = analyze.main(argv + ["--config-file", CONFIG, "INPUT.CROP.SIZE", "[32, 32]"])
    assert report.endswith("Input size (H x W): 32 x 32 (1 input)")
    assert "flop count" not in capsys.readouterr().err


class _ProductInto(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        result = torch.empty(a.shape[0], b.shape[1])
        torch.mm(a, b, out=result)  # traced with the out tensor as a third input
        return result


def test_products_written_into_their_result_are_counted(tool):
    analysis = FlopCountAnalysis(_ProductInto(), (torch.ones(2, 3), torch.ones(3, 5)))
    analysis.set_op_handle("aten::mm", tool("analyze_model")._mm_flops)
    assert analysis.total() == 2 * 3 * 5
