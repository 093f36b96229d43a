# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Checkpoint safety: reading checkpoint files without running code from them.

Detectron2 loads ``.pkl`` files with :mod:`pickle`, which runs any code a file contains.
:func:`install_safe_loading`, which ``import mask_former`` calls (importing this module changes
nothing), replaces ``DetectionCheckpointer._load_file`` by :func:`load_checkpoint_file`: ``.pkl``
files go through a restricted unpickler that builds only containers, numbers, strings, numpy
arrays and tensors, ``.pth``/``.pyth`` files through ``torch.load(weights_only=True)``; anything
else is refused with :class:`UntrustedCheckpointError`, which names the file and the refused
global. A file that cannot be read as a checkpoint at all (missing, empty, cut short, not a
checkpoint) raises :class:`CheckpointError`, whose one-line message names the file and the
reason. Setting the environment variable ``MASK_FORMER_TRUST_CHECKPOINTS=1`` allows full
unpickling, for files the user trusts. The class is patched, rather than every project path
routed through a checkpointer of its own, because users' scripts (and detectron2's own
``DefaultPredictor`` and evaluation code) build a ``DetectionCheckpointer`` themselves: patching
it is the one place every path that loads ``MODEL.WEIGHTS`` passes. (The project's own
:class:`mask_former.checkpoint.TrainingCheckpointer` reads files safely, patched or not.)

The names of this module are also importable from :mod:`mask_former.checkpoint`.
"""

import io
import logging
import os
import pickle
import zipfile
from typing import Any, Callable, Dict, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

__all__ = [
    "TRUST_ENV",
    "CheckpointError",
    "UntrustedCheckpointError",
    "checkpoints_trusted",
    "restricted_pickle_load",
    "load_checkpoint_file",
    "install_safe_loading",
]

logger = logging.getLogger(__name__)

TRUST_ENV = "MASK_FORMER_TRUST_CHECKPOINTS"

# The globals a checkpoint of weights needs: numpy arrays and scalars (numpy < 2 and >= 2 module
# names), ordered dicts, Python-2-era bytes (pickled as _codecs.encode), and tensors as pickled
# by pickle.dump (tools/convert-pretrained-swin-model-to-d2.py writes those).
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("torch._utils", "_rebuild_tensor_v2"),
}


def _storage_from_bytes(data: bytes) -> Any:
    # torch.storage._load_from_bytes, which a pickled tensor names, unpickles with
    # weights_only=False; the storage is read here the safe way.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


_REPLACED_GLOBALS: Dict[tuple, Callable] = {
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
}


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs more than plain data to unpickle; its message names file and global."""

    def __init__(self, path: str, refused: str):
        super().__init__(
            f"Refused to load {path}: unpickling it would call {refused}, which a checkpoint of "
            f"weights does not need. Only if you trust this file, set {TRUST_ENV}=1 to unpickle "
            "it fully."
        )
        self.path, self.refused = path, refused

    def __reduce__(self):  # picklable, so that it crosses process boundaries (launch, workers)
        return type(self), (self.path, self.refused)


class CheckpointError(ValueError):
    """
    A checkpoint that cannot be used: unreadable, or (:class:`~mask_former.checkpoint.weights.
    WeightsMismatchError`) weights that do not fit the model. ``path`` is the file, ``reason``
    a few words; the message is one line: "Cannot load checkpoint PATH: REASON".
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"Cannot load checkpoint {path}: {reason}")
        self.path, self.reason = path, reason

    def __reduce__(self):  # picklable, so that it crosses process boundaries (launch, workers)
        return type(self), (self.path, self.reason)


def checkpoints_trusted() -> bool:
    """Whether the user allowed full unpickling (``MASK_FORMER_TRUST_CHECKPOINTS=1``)."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds containers, numbers, strings, numpy arrays and tensors; refuses any other global."""

    def __init__(self, file: Any, path: str):
        super().__init__(file, encoding="latin1")  # latin1: Python-2-era numpy pickles
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _REPLACED_GLOBALS:
            return _REPLACED_GLOBALS[module, name]
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise UntrustedCheckpointError(self._path, f"{module}.{name}")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _unreadable_reason(path: str, error: BaseException) -> str:
    """A few words on why ``path`` could not be read, from its first bytes and ``error``."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK":  # torch.save's zip format
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "truncated or corrupt (not a complete zip archive)"
        if not any(n.split("/")[-1] == "data.pkl" for n in names):
            return "not a checkpoint (a zip archive without data.pkl)"
        return f"corrupt ({_first_line(error)})"
    if head[:1] != b"\x80":  # every pickle of protocol 2 or later starts with PROTO
        return "not a checkpoint (neither a PyTorch zip archive nor a pickle)"
    if isinstance(error, EOFError) or "truncated" in str(error):
        return "truncated or corrupt (the pickle data ends early)"
    return f"not readable as weights ({_first_line(error)})"


def _check_file(path: str) -> None:
    """A local path that is no file, or an empty one, raises :class:`CheckpointError`."""
    if not os.path.exists(path):
        raise CheckpointError(path, "no such file")
    if not os.path.isfile(path):
        raise CheckpointError(path, "not a file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(path, "empty file (0 bytes)")


def restricted_pickle_load(path: str, trusted: bool = False) -> Any:
    """Unpickle the file ``path`` with :class:`_RestrictedUnpickler` (``pickle`` if trusted)."""
    with PathManager.open(path, "rb") as f:
        if trusted:
            return pickle.load(f, encoding="latin1")
        return _RestrictedUnpickler(f, path).load()


def _torch_load(path: str, trusted: bool) -> Any:
    """``torch.load`` with ``weights_only`` unless trusted; a refusal names the globals."""
    try:
        with PathManager.open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError:
        if trusted:
            raise
        try:
            refused = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not a zip checkpoint: torch's message says what it found
            refused = []
        if not refused:
            raise
        raise UntrustedCheckpointError(path, ", ".join(refused)) from None


def _detectron2_pkl_layout(data: Any, path: str) -> Dict:
    """Detectron2's reading of a .pkl: model-zoo format, or Caffe2/Detectron1 blobs."""
    if not isinstance(data, dict):
        raise CheckpointError(path, f"not a checkpoint (holds a {type(data).__name__}, not a dict)")
    if "model" in data and "__author__" in data:
        logger.info("Reading a file from '%s'", data["__author__"])
        return data
    data = data.get("blobs", data)  # detection models have "blobs", ImageNet models do not
    data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
    return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}


def load_checkpoint_file(path: str, trusted: Optional[bool] = None) -> Dict:
    """
    Read a checkpoint the way ``DetectionCheckpointer._load_file`` does (.pkl model-zoo and
    Caffe2 layouts, pycls .pyth, native .pth), but safely: see the module docstring.

    Args:
        path: a local file.
        trusted: allow full unpickling; default: :func:`checkpoints_trusted`.
    Raises:
        UntrustedCheckpointError: the file needs a global beyond plain data.
        CheckpointError: the file is missing, empty, cut short or not a checkpoint.
    """
    trusted = checkpoints_trusted() if trusted is None else trusted
    local = os.path.isfile(path) or "://" not in path
    if local:
        _check_file(path)
    try:
        return _read_checkpoint(path, trusted)
    except (UntrustedCheckpointError, CheckpointError):
        raise
    except Exception as e:  # zipfile/PytorchStreamReader, pickle, EOF, KeyError of torch.load...
        if not local:
            raise CheckpointError(path, f"unreadable ({_first_line(e)})") from e
        raise CheckpointError(path, _unreadable_reason(path, e)) from e


def _read_checkpoint(path: str, trusted: bool) -> Dict:
    """:func:`load_checkpoint_file` without the translation of low-level errors."""
    if path.endswith(".pkl"):
        return _detectron2_pkl_layout(restricted_pickle_load(path, trusted), path)
    loaded = _torch_load(path, trusted)
    if path.endswith(".pyth"):  # pycls
        if not isinstance(loaded, dict) or "model_state" not in loaded:
            raise CheckpointError(path, "not a pycls checkpoint (no 'model_state')")
        state = {
            k: v for k, v in loaded["model_state"].items() if not k.endswith("num_batches_tracked")
        }
        return {"model": state, "__author__": "pycls", "matching_heuristics": True}
    if not isinstance(loaded, dict) or "model" not in loaded:
        loaded = {"model": loaded}
    return loaded


def _safe_load_file(self: DetectionCheckpointer, filename: str) -> Dict:
    return load_checkpoint_file(filename)


_safe_load_file._mask_former_safe = True


def install_safe_loading() -> None:
    """
    Make every ``DetectionCheckpointer`` read files with :func:`load_checkpoint_file`
    (idempotent). ``import mask_former`` calls it.
    """
    if not getattr(DetectionCheckpointer._load_file, "_mask_former_safe", False):
        DetectionCheckpointer._load_file = _safe_load_file
