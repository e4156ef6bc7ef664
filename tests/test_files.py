"""The one durable write: temporary name, fsync, rename, fsync of the folder."""

from __future__ import annotations

import os

import pytest

from b12comment.files import replace_durably, write_atomically


def test_write_atomically_puts_the_bytes_in_place_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_bytes(b"old")
    write_atomically(target, b"new bytes")
    assert target.read_bytes() == b"new bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "sub" / "report.json"  # the folder does not exist: the write fails
    with pytest.raises(OSError):
        write_atomically(target, b"x")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_replace_durably_renames_a_finished_file(tmp_path):
    tmp, dst = tmp_path / ".out.partial", tmp_path / "out.hl7"
    tmp.write_bytes(b"MSH|^~\\&|\r")
    replace_durably(tmp, dst)
    assert dst.read_bytes() == b"MSH|^~\\&|\r" and not tmp.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_write_into_a_read_only_folder_fails_cleanly(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            write_atomically(folder / "f", b"x")
    finally:
        folder.chmod(0o700)
