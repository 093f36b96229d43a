# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The errors that the dataset mappers raise on bad input. Each message names the file (or the
record) and what is wrong with it, in its first line, also when it comes from a DataLoader
worker: PyTorch re-raises a worker's exception in the main process as ``type(message)`` with
the message "Caught <type> in DataLoader worker process <n>. Original Traceback ...", which
would bury the file name at the end of the worker's traceback. These types move it back up.
"""

import contextlib
from typing import Any, Dict, Iterator

from detectron2.data.detection_utils import SizeMismatchError

__all__ = [
    "DataError",
    "DataFileNotFoundError",
    "ImageSizeMismatchError",
    "MapperError",
    "naming_the_record",
]

_WORKER_PREFIX = "Caught "
_WORKER_TRACEBACK = "\nOriginal Traceback"


def _message_first(message: str, cls: type) -> str:
    """
    ``message`` unchanged, unless it is PyTorch's re-raise of a worker's exception of type
    ``cls``: then the worker's own message (the last line of its traceback) comes first.
    """
    if not (message.startswith(_WORKER_PREFIX) and _WORKER_TRACEBACK in message):
        return message
    # The traceback ends with "<module>.<qualname>: <message>".
    marker = f"{cls.__module__}.{cls.__qualname__}: "
    at = message.rfind(marker)
    if at < 0:
        return message
    original = message[at + len(marker) :].strip()
    where = message.split("\n", 1)[0][len(_WORKER_PREFIX) + len(cls.__name__) + 1 :]
    return f"{original} [{where.rstrip('.')}; the worker's traceback follows]\n{message}"


class _NamesTheFileFirst:
    """Mixin of the mapper errors: keeps the line that names the file first (see module doc)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(_message_first(str(message), type(self)))


class DataError(_NamesTheFileFirst, ValueError):
    """A file or dataset record with bad content (unreadable image, labels out of range...)."""


class DataFileNotFoundError(_NamesTheFileFirst, FileNotFoundError):
    """A file that a dataset record names does not exist."""


class ImageSizeMismatchError(_NamesTheFileFirst, SizeMismatchError):
    """An image whose size is not the height/width of its dataset record."""


class MapperError(_NamesTheFileFirst, RuntimeError):
    """Any other failure while mapping a record; the cause is chained."""


_MAPPER_ERRORS = (DataError, DataFileNotFoundError, ImageSizeMismatchError, MapperError)


@contextlib.contextmanager
def naming_the_record(dataset_dict: Dict[str, Any]) -> Iterator[None]:
    """
    Let the mapper errors through; re-raise any other exception as :class:`MapperError`
    naming the record's image, so that even an unexpected failure says which file caused it.
    """
    try:
        yield
    except _MAPPER_ERRORS:
        raise
    except Exception as e:
        raise MapperError(
            f"Mapping the dataset record of {dataset_dict.get('file_name')!r} failed: "
            f"{type(e).__name__}: {e}"
        ) from e
