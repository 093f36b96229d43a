# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""The mapper errors' former home; they live in :mod:`mask_former.data.errors`."""

from ..errors import (  # noqa: F401
    DataError,
    DataFileNotFoundError,
    ImageSizeMismatchError,
    MapperError,
    naming_the_record,
)
