# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
What a report reads from a ``train_net.py`` output folder: the files (``config.yaml``,
``metrics.json``, the last checkpoint) and the series of ``metrics.json``.

``metrics.json`` holds one JSON record per line, as detectron2's JSON writer writes it: the
training scalars every period (``total_loss``, ``loss_ce``, ``loss_mask``, ``loss_dice`` and
their deep-supervision variants ``loss_ce_0``, ..., ``lr``) and the evaluation results
(``panoptic_seg/PQ``, ``sem_seg/mIoU``, ``sem_seg/IoU-<class>``, ...), each with its
``iteration``. A resumed run writes some iterations twice: the later record wins.
"""

import dataclasses
import json
import logging
import os
from typing import Dict, List, Tuple

from torch import nn

from ..checkpoint import AtomicCheckpointer

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "ReportInputError",
    "RunFiles",
    "RunMetrics",
    "find_run_files",
    "read_metrics",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
FINAL_CHECKPOINT = "model_final.pth"


class ReportInputError(ValueError):
    """A report cannot be made from a folder: the message names the file at fault, on one line."""


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """The files of one run that the report reads (absolute paths)."""

    output_dir: str
    config: str
    metrics: str
    checkpoint: str


def _required(output_dir: str, name: str, what: str) -> str:
    path = os.path.join(output_dir, name)
    if not os.path.isfile(path):
        raise ReportInputError(
            f"{path} does not exist: {what} (is {output_dir} a train_net.py output folder?)"
        )
    return path


def _last_checkpoint(output_dir: str) -> str:
    """
    The checkpoint ``last_checkpoint`` names, if complete (else the newest complete one, as a
    resumed training would take it); without ``last_checkpoint``: ``model_final.pth``.
    """
    # No model is loaded here: the checkpointer only finds the file (and writes nothing).
    found = AtomicCheckpointer(nn.Module(), output_dir, save_to_disk=False).get_checkpoint_file()
    if found:
        return os.path.abspath(found)
    final = os.path.join(output_dir, FINAL_CHECKPOINT)
    if os.path.isfile(final):
        return final
    raise ReportInputError(
        f"{os.path.join(output_dir, 'last_checkpoint')} and {final} do not exist: "
        "no checkpoint to evaluate"
    )


def find_run_files(output_dir: str) -> RunFiles:
    """
    The config, metrics and last checkpoint of the run in ``output_dir``.

    Raises:
        ReportInputError: ``output_dir`` is not a folder, or one of the files is missing (the
            message names it).
    """
    output_dir = os.path.abspath(output_dir)
    if not os.path.isdir(output_dir):
        raise ReportInputError(f"{output_dir} is not a folder")
    config = _required(output_dir, CONFIG_FILE, "the run's config")
    metrics = _required(output_dir, METRICS_FILE, "the training metrics")
    return RunFiles(output_dir, config, metrics, _last_checkpoint(output_dir))


def _is_loss(key: str) -> bool:
    return key == "total_loss" or key.startswith("loss_")


@dataclasses.dataclass
class RunMetrics:
    """
    The series of a run's ``metrics.json``.

    Attributes:
        training: iteration -> its training scalars (losses, ``lr``, ...), by iteration.
        evaluations: iteration -> its evaluation results (keys with a "/", such as
            ``sem_seg/mIoU``), by iteration.
    """

    training: Dict[int, Dict[str, float]]
    evaluations: Dict[int, Dict[str, float]]

    def loss_keys(self) -> List[str]:
        """The loss keys logged (``total_loss``, ``loss_ce``, ``loss_ce_0``, ...), sorted."""
        return sorted({k for record in self.training.values() for k in record if _is_loss(k)})

    def series(self, key: str, evaluation: bool = False) -> Tuple[List[int], List[float]]:
        """(iterations, values) of ``key`` in the training (or evaluation) records."""
        records = self.evaluations if evaluation else self.training
        points = [(i, r[key]) for i, r in sorted(records.items()) if key in r]
        return [i for i, _ in points], [v for _, v in points]

    @property
    def final(self) -> Dict[str, float]:
        """The last evaluation results ({} when the run was never evaluated)."""
        return self.evaluations[max(self.evaluations)] if self.evaluations else {}

    @property
    def last_iteration(self) -> int:
        """The last iteration of any record (-1 when there is none)."""
        return max([*self.training, *self.evaluations], default=-1)


def _parse_lines(path: str) -> List[Dict]:
    with open(path) as f:
        lines = [(n, line) for n, line in enumerate(f, start=1) if line.strip()]
    records = []
    for n, line in lines:
        try:
            record = json.loads(line)
        except ValueError as e:
            if n == lines[-1][0]:  # a write cut short by a killed run: its last line
                logger.warning("%s:%d is not JSON (a cut-off last line?): skipped", path, n)
                continue
            raise ReportInputError(f"{path}:{n} is not a JSON record: {e}") from None
        if not isinstance(record, dict):
            raise ReportInputError(f"{path}:{n} is not a JSON object")
        records.append(record)
    return records


def read_metrics(path: str) -> RunMetrics:
    """
    Read a ``metrics.json``. Each record is split into its training scalars and its evaluation
    results; records without an ``iteration`` are left out.

    Raises:
        ReportInputError: a line (other than a cut-off last line) is not a JSON object (the
            message names the file and line).
    """
    training: Dict[int, Dict[str, float]] = {}
    evaluations: Dict[int, Dict[str, float]] = {}
    for record in _parse_lines(path):
        if not isinstance(record.get("iteration"), int):
            continue
        iteration = record["iteration"]
        numbers = {
            k: float(v)
            for k, v in record.items()
            if isinstance(v, (int, float)) and k != "iteration"
        }
        scalars = {k: v for k, v in numbers.items() if "/" not in k}
        results = {k: v for k, v in numbers.items() if "/" in k}
        if any(_is_loss(k) for k in scalars):
            training[iteration] = scalars
        if results:
            evaluations[iteration] = results
    return RunMetrics(dict(sorted(training.items())), dict(sorted(evaluations.items())))
