# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Checkpoint files that survive interruption.

:class:`AtomicCheckpointer` writes each checkpoint and ``last_checkpoint`` to a temporary file
renamed over the destination, so a killed run leaves the previous ones intact; on resume, a
``last_checkpoint`` naming a missing or partial file (:func:`is_partial_checkpoint`) is not
trusted (the newest complete checkpoint is used), and temporary files of killed writes are
removed. It reads files with :func:`mask_former.safe_loading.load_checkpoint_file`, whether or not
``DetectionCheckpointer`` itself was patched.
"""

import logging
import os
import zipfile
from typing import Any, Dict, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..safe_loading import load_checkpoint_file
from ..utils.atomic_io import atomic_write, remove_stale_temporaries
from .metadata import METADATA_KEY

__all__ = ["AtomicCheckpointer", "is_partial_checkpoint"]

logger = logging.getLogger(__name__)


def is_partial_checkpoint(path: str) -> bool:
    """
    Whether ``path`` is empty or unreadable, or a ``torch.save`` zip archive without its end
    (the central directory, written last) or its "data.pkl": an interrupted write. Files of the
    legacy (non-zip) format are not judged here: unpickling one cut short fails by itself.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return True
    if head != b"PK\x03\x04":
        return not head
    try:
        with zipfile.ZipFile(path) as archive:
            return not any(n.split("/")[-1] == "data.pkl" for n in archive.namelist())
    except zipfile.BadZipFile:
        return True


class AtomicCheckpointer(DetectionCheckpointer):
    """
    ``DetectionCheckpointer`` whose checkpoints and ``last_checkpoint`` are written atomically
    and whose resume trusts ``last_checkpoint`` only if it names a complete file (see
    :meth:`get_checkpoint_file`); files are read safely (see the module docstring).
    """

    # The class metadata saved in every checkpoint under "metadata" (plain containers, see
    # mask_former.checkpoint.metadata); the Trainer sets it from its train dataset.
    metadata: Optional[Dict[str, Any]] = None

    def save(self, name: str, **kwargs: Any) -> None:
        """
        fvcore's ``save`` (model, checkpointables, ``kwargs``), written atomically, with
        :attr:`metadata` under "metadata" when set.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        if self.metadata:
            data[METADATA_KEY] = self.metadata
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        with atomic_write(path) as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Write ``last_checkpoint`` atomically: it names the old or the new file, never half."""
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

    def get_all_checkpoint_files(self) -> List[str]:
        """The .pth files of ``save_dir``, without temporary files of unfinished writes."""
        files = super().get_all_checkpoint_files()
        return [p for p in files if not os.path.basename(p).startswith(".")]

    def has_checkpoint(self) -> bool:
        """Whether there is a complete checkpoint to resume from (see get_checkpoint_file)."""
        return bool(self.get_checkpoint_file())

    def get_checkpoint_file(self) -> str:
        """
        The file ``last_checkpoint`` names if it is complete; otherwise (a file written by a
        non-atomic writer and cut short, or deleted) the newest complete checkpoint, with a
        warning; "" if there is none. Temporary files of killed writes are removed first.
        """
        if not os.path.isfile(os.path.join(self.save_dir, "last_checkpoint")):
            return ""
        if self.save_to_disk:
            for stale in remove_stale_temporaries(os.path.join(self.save_dir, "*.pth")):
                logger.warning("Removed %s, left by a checkpoint write that was killed", stale)
        named = super().get_checkpoint_file()
        if os.path.isfile(named) and not is_partial_checkpoint(named):
            return named
        complete = [p for p in self.get_all_checkpoint_files() if not is_partial_checkpoint(p)]
        fallback = max(complete, key=os.path.getmtime, default="")
        logger.warning(
            "last_checkpoint in %s names %s, which is missing or incomplete: using %s",
            self.save_dir,
            os.path.basename(named) or "nothing",
            fallback or "no checkpoint",
        )
        return fallback

    def _load_file(self, filename: str) -> Dict:
        return load_checkpoint_file(filename)
