# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The custom-dataset guide of datasets/README.md ("Your own dataset: register, check, train,
evaluate") works as written: its Python blocks are saved under the names of their first-line
comments, and its shell commands run in order, as a user runs them from the repository root,
with a fresh datasets root and only the training kept tiny (trailing config options appended
to each train_my.py command).
"""

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import List, Tuple

import pytest
from PIL import Image

from mask_former import load_config
from tests.paths import REPO_ROOT

GUIDE = REPO_ROOT / "datasets" / "README.md"
HEADING = "## Your own dataset: register, check, train, evaluate"
# Appended to every train_my.py command: 2 iterations of 2 images, a smaller decoder, no workers.
TINY = (
    "SOLVER.MAX_ITER 2 SOLVER.IMS_PER_BATCH 2 SOLVER.CHECKPOINT_PERIOD 1000 "
    "DATALOADER.NUM_WORKERS 0 MODEL.MASK_FORMER.DEC_LAYERS 1 "
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES 8 INPUT.CROP.SIZE (64,64) SEED 1"
)
# The configs of the guide's training commands.
CONFIGS_USED = (
    "configs/shapes/maskformer_R18_bs8_1200.yaml",
    "configs/shapes/maskformer_panoptic_R18_bs8_1200.yaml",
)
# What the repository root holds that the guide's commands use (linked into the work folder).
REPO_PATHS = ("train_net.py", "tools", "configs", ".venv")


def guide_blocks(text: str) -> List[Tuple[str, str]]:
    """The (language, code) fenced blocks of the guide's section, in order."""
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```(\w*)\n(.*?)^```", section, flags=re.S | re.M)


def shell_commands(code: str) -> List[str]:
    """The commands of a bash block, backslash continuations joined."""
    return [c.strip() for c in code.replace("\\\n", " ").splitlines() if c.strip()]


def _workspace(tmp_path: Path) -> Path:
    """A folder that looks like the repository root to the guide's commands."""
    work = tmp_path / "repo"
    work.mkdir()
    for name in REPO_PATHS:
        (work / name).symlink_to(REPO_ROOT / name)
    return work


def _run(command: str, cwd: Path, env) -> subprocess.CompletedProcess:
    if "train_my.py" in command:
        command += " " + " ".join(shlex.quote(word) for word in TINY.split())
    result = subprocess.run(
        command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def test_the_guide_has_its_files_and_commands():
    blocks = guide_blocks(GUIDE.read_text())
    files = [code.splitlines()[0] for lang, code in blocks if lang == "python"]
    assert files == ["# make_my_dataset.py", "# my_datasets.py", "# train_my.py"]
    commands = [c for lang, code in blocks if lang == "bash" for c in shell_commands(code)]
    assert [c.split()[1] for c in commands] == [
        "make_my_dataset.py",
        "tools/check_dataset.py",
        *["tools/visualize_data.py"] * 2,
        *["train_my.py"] * 4,
    ]


def test_every_model_command_sets_num_classes():
    blocks = guide_blocks(GUIDE.read_text())
    commands = [c for lang, code in blocks if lang == "bash" for c in shell_commands(code)]
    model_commands = [c for c in commands if "train_my.py" in c]
    assert sum("--eval-only" in c for c in model_commands) == 2
    for command in model_commands:
        assert "MODEL.SEM_SEG_HEAD.NUM_CLASSES 6" in command, command
    configs = {re.search(r"--config-file (\S+)", c).group(1) for c in model_commands}
    assert configs == set(CONFIGS_USED)


def test_the_guide_states_the_training_length_of_its_configs():
    section = GUIDE.read_text().split(HEADING, 1)[1].split("\n## ", 1)[0]
    text = " ".join(section.split())
    match = re.search(r"runs the config's (\d+) iterations of (\d+) images", text)
    assert match, "the guide says how many iterations its training commands run"
    for config in CONFIGS_USED:
        cfg = load_config(REPO_ROOT / config, cpu_fallback=False)
        assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH) == tuple(map(int, match.groups()))
    assert "append `SOLVER.MAX_ITER 200` to a training command" in text
    low, high = map(int, re.search(r"plan on (\d+) to (\d+) minutes per model", text).groups())
    seconds = re.search(r"an iteration of these small models takes ([\d.]+) to ([\d.]+) s", text)
    fastest, slowest = map(float, seconds.groups())
    iterations = int(match.group(1))
    # The minutes follow from the stated speeds (rounded), evaluation aside.
    assert low <= fastest * iterations / 60 + 1 and slowest * iterations / 60 <= high


@pytest.mark.skipif(not (REPO_ROOT / ".venv" / "bin" / "python").exists(), reason="needs .venv")
def test_the_guide_runs_as_written(tmp_path):
    work = _workspace(tmp_path)
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "datasets"), "OMP_NUM_THREADS": "2"}
    outputs = []
    for lang, code in guide_blocks(GUIDE.read_text()):
        if lang == "python":
            name = code.splitlines()[0].lstrip("# ").strip()
            (work / name).write_text(code)
        elif lang == "bash":
            outputs += [_run(command, work, env) for command in shell_commands(code)]
    doctor = outputs[1].stdout
    for name in ("my_sem_seg_train", "my_sem_seg_val", "my_panoptic_train", "my_panoptic_val"):
        assert f"== {name} " in doctor
    assert "All datasets OK" in doctor and "Class frequency (16 images checked)" in doctor
    # The pictures: one per record as stored (4 val images), 4 crops after the train mapper.
    pictures = work / "output" / "pictures"
    assert len(list((pictures / "my_panoptic_val").glob("*.png"))) == 4
    crops = sorted((pictures / "my_panoptic_train").glob("*.png"))
    assert [Image.open(p).size for p in crops] == [(128, 128)] * 4  # the config's crop
    for run in ("my_sem_seg", "my_panoptic"):
        assert (work / "output" / run / "model_final.pth").is_file()
    # The --eval-only runs log detectron2's "copypaste:" result lines.
    semantic_eval, panoptic_eval = (outputs[i].stdout + outputs[i].stderr for i in (5, 7))
    assert "copypaste: mIoU" in semantic_eval
    assert "copypaste: PQ" in panoptic_eval and "copypaste: mIoU" in panoptic_eval
