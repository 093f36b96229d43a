# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Checks of a config against the datasets it names, run where the model and the data meet: in
the ``from_config`` of the dataset mappers, before the first record is read; and the one-line
message of the tools for a dataset name that is not registered.
"""

import difflib
import logging
from typing import List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["dataset_num_classes", "check_num_classes", "unknown_datasets"]

logger = logging.getLogger(__name__)

NUM_CLASSES_KEY = "MODEL.SEM_SEG_HEAD.NUM_CLASSES"


def dataset_num_classes(dataset_name: str) -> Optional[Tuple[int, str]]:
    """
    The number of classes that the metadata of ``dataset_name`` names, and the key it comes
    from: ``stuff_classes`` (every class of the semantic and panoptic datasets; the list that
    SemSegEvaluator counts), else ``thing_classes``; None when the metadata names no classes.
    """
    metadata = MetadataCatalog.get(dataset_name)
    for key in ("stuff_classes", "thing_classes"):
        names = metadata.get(key, None)
        if names is not None:
            return len(names), key
    return None


def check_num_classes(num_classes: int, dataset_names: Sequence[str]) -> None:
    """
    Raise if ``num_classes`` (MODEL.SEM_SEG_HEAD.NUM_CLASSES) is not the number of classes of
    each of ``dataset_names``; datasets whose metadata names no classes are not checked.

    Fewer classes in the model than in the data: the labels from ``num_classes`` up have no
    output (the mappers would stop at the first such label). More: the original MaskFormer
    trains such a model, but it predicts classes that the dataset cannot name, which breaks
    (or silently skews) the semantic evaluation and the drawings, so this is an error too.
    """
    for name in dataset_names:
        found = dataset_num_classes(name)
        if found is None:
            logger.debug("Dataset %r names no classes: %s not checked", name, NUM_CLASSES_KEY)
            continue
        count, key = found
        if num_classes == count:
            continue
        if num_classes < count:
            why = f"its labels {num_classes}..{count - 1} would have no output of the model"
        else:
            why = f"the model would predict {num_classes - count} classes the dataset cannot name"
        raise ValueError(
            f"{NUM_CLASSES_KEY} is {num_classes} but dataset {name!r} has {count} classes "
            f"(len of its metadata {key}): {why}. Set {NUM_CLASSES_KEY} {count}."
        )


def unknown_datasets(names: Sequence[str]) -> List[str]:
    """
    One message per name of ``names`` that is not registered, with the registered names
    closest to it: "unknown dataset 'x' (not registered); did you mean a, b?".
    """
    registered = DatasetCatalog.list()
    messages = []
    for name in names:
        if name not in registered:
            close = difflib.get_close_matches(name, registered, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            messages.append(f"unknown dataset {name!r} (not registered){hint}")
    return messages
