#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The dataset doctor: check a registered dataset before training on it.

Usage:
    python tools/check_dataset.py --dataset ade20k_sem_seg_val
    python tools/check_dataset.py --config-file configs/ade20k-150/maskformer_R50_bs16_160k.yaml
    python tools/check_dataset.py --register my_datasets.py --dataset my_dataset_sem_seg_val

It checks that every file exists and decodes (read as the dataset mappers read it, with the
same error message for a bad file), that every image has its label map (detectron2's
``load_sem_seg`` only logs a warning with the two folders' file counts and leaves such images
out: they are named here), that image and label sizes agree, that label values are classes or
the ignore label, that panoptic JSON and PNGs agree, and that the category metadata is
complete; then prints a class-frequency table (see mask_former/data/doctor.py). With
``--config-file`` it checks every dataset of DATASETS.TRAIN and DATASETS.TEST, and
MODEL.SEM_SEG_HEAD.NUM_CLASSES against each. ``--contact-sheet FILE.png`` also draws the files
with errors, a thumbnail each with the reasons under it (mask_former/data/contact_sheet.py).

Exit status: 0 no errors (warnings, such as another split of the dataset being absent, are
fine), 1 errors, 2 usage error or unknown dataset.
"""

import argparse
import logging
import sys
from typing import List, Optional, Set

from detectron2.data import MetadataCatalog

import mask_former  # noqa: F401  (registers the datasets)
from mask_former.config import load_config
from mask_former.data.checks import check_num_classes, unknown_datasets
from mask_former.data.contact_sheet import write_contact_sheet
from mask_former.data.doctor import ERROR, DatasetReport, check_dataset
from mask_former.data.user_datasets import add_register_argument, import_registration

logger = logging.getLogger("mask_former.check_dataset")
_DESCRIPTION = """\
Check registered datasets before training on them: every image, label map and panoptic PNG
exists, decodes and has its image's size; label values are classes or the ignore label; the
panoptic JSON and PNGs agree; the class metadata is complete. Then print a class-frequency
table per dataset. Name the datasets (--dataset), or give a config (--config-file) to check its
DATASETS.TRAIN and DATASETS.TEST and its MODEL.SEM_SEG_HEAD.NUM_CLASSES against each.
Datasets of your own are registered by --register."""
_NAME_WIDTH = 24  # longer class names are cut in the table
_SHEET_TILES = 60  # files shown on the contact sheet


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 no errors (warnings only), 1 errors, 2 usage or unknown dataset.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", nargs="+", metavar="NAME", help="registered dataset names")
    source.add_argument(
        "--config-file", metavar="FILE", help="check DATASETS.TRAIN and DATASETS.TEST of a config"
    )
    add_register_argument(parser)
    parser.add_argument(
        "--max-images", type=int, default=None, metavar="N", help="check the files of N records"
    )
    parser.add_argument(
        "--max-listed",
        type=int,
        default=50,
        metavar="N",
        help="list at most N findings of each kind (0: all; default 50)",
    )
    parser.add_argument(
        "--contact-sheet",
        metavar="FILE.png",
        help="also write a picture of the faulty files: a thumbnail of each (a crossed-out "
        "placeholder for one that cannot be decoded) with the reasons under it",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config KEY VALUE pairs"
    )
    return parser


def _config_datasets(args: argparse.Namespace):
    """The datasets of ``--config-file`` and its MODEL.SEM_SEG_HEAD.NUM_CLASSES."""
    cfg = load_config(args.config_file, args.opts, cpu_fallback=False)
    names = list(dict.fromkeys(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)))
    return names, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES


def _listed(report: DatasetReport, severity: str, max_listed: int) -> List[str]:
    lines, shown = [], {}
    issues = [i for i in report.issues if i.severity == severity]
    for issue in issues:
        shown[issue.kind] = shown.get(issue.kind, 0) + 1
        if max_listed <= 0 or shown[issue.kind] <= max_listed:
            lines.append(f"  [{issue.kind}] {issue.detail}")
    for kind, count in shown.items():
        if 0 < max_listed < count:
            lines.append(f"  [{kind}] ... and {count - max_listed} more")
    title = "Errors" if severity == ERROR else "Warnings"
    return [f"{title} ({len(issues)}):"] + lines if issues else []


def _table(rows: List[List[str]], left: Set[int]) -> List[str]:
    """Rows of cells as aligned lines: the columns ``left`` left-aligned, the others right."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return [
        "  "
        + "  ".join(
            cell.ljust(w) if c in left else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(row, widths))
        ).rstrip()
        for row in rows
    ]


def format_class_table(report: DatasetReport) -> List[str]:
    """Pixels, images (and panoptic segments) per class, and the ignored pixels."""
    if not report.class_names or not report.num_checked:
        return []
    total = sum(report.pixels.values()) + report.ignore_pixels
    share = lambda n: f"{100.0 * n / total:.1f}%" if total else "-"  # noqa: E731
    header = ["id", "class"] + ["kind"] * bool(report.thing_ids) + ["pixels", "%", "images"]
    rows = [header + ["segments"] * (report.segments is not None)]
    for i, name in enumerate(report.class_names):
        name = name if len(name) <= _NAME_WIDTH else name[: _NAME_WIDTH - 3] + "..."
        row = [str(i), name] + (
            ["thing" if i in report.thing_ids else "stuff"] if report.thing_ids else []
        )
        pixels = report.pixels.get(i, 0)
        row += [f"{pixels:,}", share(pixels), str(report.images.get(i, 0))]
        rows.append(row + ([str(report.segments.get(i, 0))] if report.segments is not None else []))
    ignored = [f"{report.ignore_pixels:,}", share(report.ignore_pixels), ""]
    rows.append(
        ["", "(ignore)"]
        + [""] * bool(report.thing_ids)
        + ignored
        + [""] * (len(rows[0]) - len(header))
    )
    lines = [f"Class frequency ({report.num_checked} images checked):"] + _table(
        rows, left={1, 2} if report.thing_ids else {1}
    )
    absent = [n for i, n in enumerate(report.class_names) if not report.images.get(i)]
    if absent:
        lines.append(f"  Never labelled in these images: {', '.join(absent)}")
    return lines


def format_report(report: DatasetReport, max_listed: int = 50) -> str:
    """The readable report of one dataset."""
    kind = report.evaluator_type or "no evaluator_type"
    lines = [f"== {report.name} ({kind}; {report.num_records} records) =="]
    lines += [f"  {key}: {path}" for key, path in report.paths.items()]
    lines += _listed(report, ERROR, max_listed) + _listed(report, "warning", max_listed)
    lines += format_class_table(report)
    verdict = "FAILED" if report.errors else "OK"
    lines.append(f"{verdict}: {len(report.errors)} errors, {len(report.warnings)} warnings")
    return "\n".join(lines)


def run(names: List[str], args: argparse.Namespace, num_classes: Optional[int]) -> int:
    """Check each dataset and print its report; returns the exit status."""
    import tqdm

    failed, reports = 0, []
    for name in names:
        wrap = None if args.no_progress else lambda it, n=name: tqdm.tqdm(it, desc=n, leave=False)
        report = check_dataset(name, max_images=args.max_images, progress=wrap)
        if num_classes is not None:
            try:
                check_num_classes(num_classes, [name])
            except ValueError as e:
                report.add(ERROR, "config", str(e))
        print(format_report(report, args.max_listed), flush=True)
        print(flush=True)
        failed += bool(report.errors)
        reports.append(report)
    if len(names) > 1:
        print(f"{failed} of {len(names)} datasets have errors" if failed else "All datasets OK")
    if args.contact_sheet:
        _write_contact_sheet(reports, args.contact_sheet)
    return 1 if failed else 0


def _write_contact_sheet(reports: List[DatasetReport], path: str) -> None:
    ignore = {r.name: MetadataCatalog.get(r.name).get("ignore_label", None) for r in reports}
    count = write_contact_sheet(reports, path, ignore_labels=ignore, max_tiles=_SHEET_TILES)
    shown = f" (the first {_SHEET_TILES})" if count > _SHEET_TILES else ""
    print(f"Contact sheet of {count} faulty files{shown}: {path}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        for target in args.register:
            import_registration(target)
        names, num_classes = _config_datasets(args) if args.config_file else (args.dataset, None)
    except (ImportError, FileNotFoundError, KeyError, ValueError, AssertionError) as e:
        print(f"check_dataset.py: error: {e}", file=sys.stderr)
        return 2
    unknown = unknown_datasets(names)
    if unknown or not names:
        for message in unknown or ["the config names no datasets"]:
            print(f"check_dataset.py: error: {message}", file=sys.stderr)
        return 2
    return run(names, args, num_classes)


if __name__ == "__main__":
    sys.exit(main())
