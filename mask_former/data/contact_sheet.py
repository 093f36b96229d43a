# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
A contact sheet of the files the dataset doctor found faulty: one tile per file with an error
(a thumbnail of the file, the reasons under it), in a grid under a title line. The doctor's
``--contact-sheet FILE.png`` writes it.

A tile shows the file as read by :mod:`mask_former.data.io`: images as they are; label maps
and panoptic PNGs with one colour per value or segment (the ignore label and VOID black),
since their raw values look black; a file that cannot be decoded (or does not exist) gets a
grey placeholder crossed out. Text is drawn with detectron2's ``Visualizer``.

Shape shorthand in this module: H, W image height and width.
"""

import colorsys
import dataclasses
import os
import re
import textwrap
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from ..utils.atomic_io import atomic_output_path
from .doctor_report import ERROR, DatasetReport
from .io import UnreadableImageError, open_image, pil_to_array, rgb_to_ids
from .mappers.reading import FILE_ROLES

__all__ = ["FaultyFile", "faulty_files", "draw_contact_sheet", "write_contact_sheet"]

TILE = 200  # thumbnail side, pixels
_CAPTION = 86  # caption height under a thumbnail: the name and up to 5 lines of reasons
_TITLE = 30  # the title line's height
_GAP = 4
_CHARS = 36  # caption characters per line at _FONT
_FONT = 7  # points, detectron2's Visualizer.draw_text
_BACKGROUND = (32, 32, 32)
_PLACEHOLDER = (128, 128, 128)
_GOLDEN = 0.6180339887498949  # hue step: neighbouring values get distant colours
_FOLDERS = re.compile(r"[^\s'\"(]*[\\/]([^\s'\"\\/]+)")  # a path -> its last part


@dataclasses.dataclass
class FaultyFile:
    """A file with errors: its ``path``, the record ``field`` naming it, and the reasons."""

    path: str
    field: str
    reasons: List[str]
    ignore_label: Optional[int] = None


def faulty_files(reports: Sequence[DatasetReport], ignore_labels: Dict[str, int]) -> List:
    """
    The files with errors in ``reports``, in the order first found, each once with all its
    reasons ("kind: detail").

    Args:
        ignore_labels: dataset name -> ignore label, drawn black in label-map tiles.
    """
    files: Dict[str, FaultyFile] = {}
    for report in reports:
        for issue in report.issues:
            if issue.severity != ERROR or issue.path is None:
                continue
            entry = files.setdefault(
                issue.path,
                FaultyFile(issue.path, issue.field, [], ignore_labels.get(report.name)),
            )
            entry.reasons.append(f"{issue.kind}: {issue.detail}")
    return list(files.values())


def _value_colours(values: np.ndarray, black: Sequence[int]) -> np.ndarray:
    """(H, W) integer values -> (H, W, 3) uint8, one colour per value, ``black`` values black."""
    unique, inverse = np.unique(values, return_inverse=True)
    palette = np.array(
        [colorsys.hsv_to_rgb((int(v) * _GOLDEN) % 1.0, 0.65, 0.95) for v in unique]
    ).reshape(-1, 3)
    palette = np.rint(palette * 255).astype(np.uint8)
    palette[np.isin(unique, list(black))] = 0
    return palette[inverse.reshape(values.shape)]


def _file_pixels(faulty: FaultyFile) -> np.ndarray:
    """(H, W, 3) uint8 RGB of the tile's file; raises UnreadableImageError."""
    image = open_image(faulty.path, FILE_ROLES.get(faulty.field, "image"))
    if faulty.field == "pan_seg_file_name" and image.mode == "RGB":
        return _value_colours(rgb_to_ids(np.asarray(image)), black=[0])
    if faulty.field == "sem_seg_file_name" and image.mode not in ("RGB", "RGBA", "CMYK"):
        black = [] if faulty.ignore_label is None else [faulty.ignore_label]
        return _value_colours(np.asarray(image).astype(np.int64), black=black)
    return pil_to_array(image, "RGB")


def _thumbnail(faulty: FaultyFile) -> Optional[np.ndarray]:
    """The thumbnail, (TILE, <= TILE, 3) or (<= TILE, TILE, 3), or None when undecodable."""
    try:
        pixels = _file_pixels(faulty)
    except UnreadableImageError:
        return None
    height, width = pixels.shape[:2]
    factor = TILE / max(height, width)  # small files are enlarged too, to be seen
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    labels = faulty.field != "file_name" or factor > 1
    resample = Image.NEAREST if labels else Image.BILINEAR
    return np.asarray(Image.fromarray(pixels).resize(size, resample))


def _caption(faulty: FaultyFile) -> str:
    """The file's name, then its reasons with every path cut to its file name."""
    name = os.path.basename(faulty.path)
    reasons = _FOLDERS.sub(r"\1", "; ".join(faulty.reasons))
    lines = textwrap.wrap(reasons, _CHARS, max_lines=5, placeholder=" ...")
    return "\n".join([textwrap.shorten(name, _CHARS, placeholder="...")] + lines)


def _origin(index: int, columns: int):
    """The (x, y) of tile ``index``'s top-left corner."""
    return (
        _GAP + (index % columns) * (TILE + _GAP),
        _TITLE + (index // columns) * (TILE + _CAPTION + _GAP),
    )


def draw_contact_sheet(files: Sequence[FaultyFile], title: str, columns: int = 6) -> np.ndarray:
    """
    The contact sheet of ``files``: a title line, then a grid of tiles, ``columns`` wide.

    Returns:
        np.ndarray: (H, W, 3) uint8 RGB.
    """
    columns = max(1, min(columns, len(files)))
    rows = -(-len(files) // columns)
    height = _TITLE + rows * (TILE + _CAPTION + _GAP)
    width = max(_GAP + columns * (TILE + _GAP), 2 * TILE)  # room for the title
    sheet = np.empty((height, width, 3), np.uint8)
    sheet[:] = _BACKGROUND
    undecodable = []
    for index, faulty in enumerate(files):
        x, y = _origin(index, columns)
        thumb = _thumbnail(faulty)
        if thumb is None:
            sheet[y : y + TILE, x : x + TILE] = _PLACEHOLDER
            undecodable.append((x, y))
        else:
            sheet[y : y + thumb.shape[0], x : x + thumb.shape[1]] = thumb
    visualizer = Visualizer(sheet)
    visualizer.draw_text(title, (_GAP, 6), font_size=9, color="w", horizontal_alignment="left")
    for x, y in undecodable:  # crossed out
        visualizer.draw_line([x, x + TILE], [y, y + TILE], color="k")
        visualizer.draw_line([x + TILE, x], [y, y + TILE], color="k")
    for index, faulty in enumerate(files):
        x, y = _origin(index, columns)
        visualizer.draw_text(
            _caption(faulty),
            (x, y + TILE + 3),
            font_size=_FONT,
            color="w",
            horizontal_alignment="left",
        )
    return visualizer.output.get_image()


def write_contact_sheet(
    reports: Sequence[DatasetReport],
    path: str,
    *,
    ignore_labels: Optional[Dict[str, int]] = None,
    max_tiles: int = 60,
) -> int:
    """
    Write the contact sheet of the files with errors in ``reports`` to ``path`` (PNG,
    atomically): at most ``max_tiles`` tiles (0: all), the title says how many there are. With
    no faulty file the sheet is only its title, so an earlier sheet is never left behind.

    Returns:
        int: the number of faulty files.
    """
    files = faulty_files(reports, ignore_labels or {})
    shown = files if max_tiles <= 0 else files[:max_tiles]
    names = ", ".join(r.name for r in reports)
    title = f"{len(files)} faulty files in {names}"
    if len(shown) < len(files):
        title += f" (the first {len(shown)} shown)"
    if not files:
        title = f"No faulty files in {names}"
    drawing = draw_contact_sheet(shown, title)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with atomic_output_path(path) as tmp:
        Image.fromarray(drawing).save(tmp, format="PNG")
    return len(files)
