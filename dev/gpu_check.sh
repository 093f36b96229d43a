#!/usr/bin/env bash
# The device checks of the performance issue, as one prepared script for a session that is lent
# a GPU machine (that machine has its own Python and CUDA build of torch; bring only what it
# lacks). CPU CI never runs this: the CPU test suite has no test that needs a GPU.
#   1. the benchmark's inference rows on CUDA in float32 and under float16/bfloat16 autocast;
#   2. a short train_net.py run on the shapes data with SOLVER.AMP.ENABLED True on CUDA (losses
#      finite, evaluation runs);
#   3. the fused mask loss and the Predictor on CUDA equal their CPU results.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
out=${OUT:-output/gpu_check}
mkdir -p "$out"
$py -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
for dtype in float32 float16 bfloat16; do
    $py tools/benchmark.py --device cuda --dtype $dtype --rows peak inference \
        --json "$out/bench_$dtype.json"
done
$py -m mask_former.data --root datasets
$py train_net.py --config-file configs/shapes/maskformer_panoptic_R18_main.yaml --num-gpus 1 \
    MODEL.DEVICE cuda SOLVER.AMP.ENABLED True SOLVER.MAX_ITER 200 OUTPUT_DIR "$out/train" \
    2>&1 | tail -n 20
$py - <<'PY'
import torch
from mask_former.modeling.mask_losses import sigmoid_focal_dice_loss

g = torch.Generator().manual_seed(0)
logits = torch.randn((9, 32, 32), generator=g, requires_grad=True)
targets = torch.rand((9, 128, 128), generator=g) > 0.5
index = torch.arange(9)
cpu = sigmoid_focal_dice_loss(logits, targets, index)
cuda = sigmoid_focal_dice_loss(logits.detach().cuda(), targets.cuda(), index.cuda())
for got, expected in zip(cuda, cpu):
    torch.testing.assert_close(got.cpu(), expected.detach(), rtol=1e-5, atol=1e-7)
print("fused mask loss: CUDA equals CPU")
PY
