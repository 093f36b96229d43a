# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""Outputs of the tools appear complete or not at all."""

import os

import pytest

from mask_former.utils import atomic_output_path, atomic_write


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.pkl"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(str(target)) as f:
            f.write(b"half of the new content")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.pkl"]  # no temporary file left behind

    with atomic_write(str(target)) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out.pkl"]
    # Normal permissions (not the owner-only mode of temporary files).
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask


def test_atomic_output_path_keeps_extension_and_rejects_empty_output(tmp_path):
    target = tmp_path / "vis.png"
    with atomic_output_path(str(target)) as tmp:
        assert tmp.endswith(".png") and os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "wb") as f:
            f.write(b"png bytes")
    assert target.read_bytes() == b"png bytes"

    empty = tmp_path / "empty.png"
    with pytest.raises(OSError, match="Nothing was written"):
        with atomic_output_path(str(empty)):
            pass  # a writer that silently failed
    assert not empty.exists()


def test_missing_output_folder_is_named(tmp_path):
    missing = tmp_path / "no" / "such" / "out.pkl"
    with pytest.raises(FileNotFoundError, match="no/such"):
        with atomic_write(str(missing)):
            pass


def test_atomic_write_allows_an_empty_file(tmp_path):
    target = tmp_path / "empty.txt"
    with atomic_write(str(target), "w"):
        pass
    assert target.read_text() == ""
