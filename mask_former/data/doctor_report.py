# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
What the dataset doctor (:mod:`mask_former.data.doctor`) finds: each :class:`Issue` and the
:class:`DatasetReport` of a dataset, read by ``tools/check_dataset.py`` and by the contact
sheet of the faulty files (:mod:`mask_former.data.contact_sheet`).
"""

import dataclasses
from collections import Counter
from typing import Dict, List, Optional, Set

__all__ = ["ERROR", "WARNING", "Issue", "DatasetReport"]

ERROR, WARNING = "error", "warning"


@dataclasses.dataclass(frozen=True)
class Issue:
    """One finding: ``severity`` ERROR or WARNING, a short ``kind``, and a ``detail`` that
    names the file (or metadata key) concerned; for a finding on one file of a record, also
    its ``path`` and the record ``field`` that names it ("file_name", "sem_seg_file_name" or
    "pan_seg_file_name")."""

    severity: str
    kind: str
    detail: str
    path: Optional[str] = None
    field: Optional[str] = None


@dataclasses.dataclass
class DatasetReport:
    """
    The findings on one dataset and its class counts.

    Attributes:
        pixels, images, segments: contiguous class id -> labelled pixels, images in which
            the class occurs, and panoptic segments (None for semantic data).
        ignore_pixels: pixels with the ignore label (or VOID in a panoptic PNG).
    """

    name: str
    evaluator_type: Optional[str] = None
    paths: Dict[str, str] = dataclasses.field(default_factory=dict)
    num_records: int = 0
    num_checked: int = 0
    class_names: List[str] = dataclasses.field(default_factory=list)
    thing_ids: Set[int] = dataclasses.field(default_factory=set)
    issues: List[Issue] = dataclasses.field(default_factory=list)
    pixels: Counter = dataclasses.field(default_factory=Counter)
    images: Counter = dataclasses.field(default_factory=Counter)
    segments: Optional[Counter] = None
    ignore_pixels: int = 0

    def add(self, severity: str, kind: str, detail: str, *, path=None, field=None) -> None:
        self.issues.append(Issue(severity, kind, detail, path, field))

    def add_listed(self, severity: str, kind: str, detail: str, items: List, **file) -> None:
        """One finding listing ``items`` (the first 10) after ``detail``, if there are any;
        ``file``: the ``path`` and ``field`` of :meth:`add`."""
        if items:
            more = f" and {len(items) - 10} more" if len(items) > 10 else ""
            self.add(severity, kind, f"{detail}: {items[:10]}{more}", **file)

    @property
    def errors(self) -> List[Issue]:
        return [i for i in self.issues if i.severity == ERROR]

    @property
    def warnings(self) -> List[Issue]:
        return [i for i in self.issues if i.severity == WARNING]
