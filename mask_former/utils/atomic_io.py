# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Atomic file output: a result file either appears complete or not at all.

Every writer goes to a temporary file in the destination's folder (same file system, so the
final rename is atomic) and renames it over the destination only after the write succeeded.
On any error the temporary file is deleted and the destination is left as it was, so an
interrupted conversion never leaves a truncated checkpoint that would be loaded later. A process
killed outright (SIGKILL, power loss) cannot delete its temporary file: it stays, hidden
(``.<stem>.<random>.tmp<ext>``), until :func:`remove_stale_temporaries` is called for the path.
"""

import contextlib
import glob
import os
import tempfile
from typing import IO, Iterator, List

__all__ = ["atomic_output_path", "atomic_write", "remove_stale_temporaries"]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output_path(path: str, allow_empty: bool = False) -> Iterator[str]:
    """
    Yield a temporary path to write ``path`` through; it is renamed to ``path`` on success.

    The temporary name keeps the extension of ``path``, so writers that pick a format from the
    file name (OpenCV, matplotlib) behave as they would with ``path`` itself.

    Args:
        path (str): the destination file. Its folder must exist.
        allow_empty (bool): accept an empty result; by default an empty file is taken as a
            writer that failed silently (OpenCV's imwrite returns False rather than raising).
    """
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Output folder does not exist: {folder} (for {path})")
    stem, ext = os.path.splitext(name)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        if not allow_empty and (not os.path.exists(tmp) or os.path.getsize(tmp) == 0):
            raise OSError(f"Nothing was written for {path}")
        # mkstemp creates the file readable by its owner only; give it the usual permissions.
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator[IO]:
    """
    Open a file object that is atomically renamed to ``path`` when the block exits cleanly.

    Args:
        path (str): the destination file. Its folder must exist.
        mode (str): "wb" or "w".
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write supports modes 'wb' and 'w', got {mode!r}")
    with atomic_output_path(path, allow_empty=True) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def remove_stale_temporaries(path: str) -> List[str]:
    """
    Delete the temporary files that writes of ``path`` left when their process was killed
    before the rename; call it only while no other process writes ``path``.

    Args:
        path (str): the destination; its file name may be a glob pattern ("*.pth").
    Returns:
        the deleted files.
    """
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    stale = sorted(glob.glob(os.path.join(glob.escape(folder), f".{stem}.*.tmp{ext}")))
    for tmp in stale:
        os.remove(tmp)
    return stale
