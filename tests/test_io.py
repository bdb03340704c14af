"""Atomic writes: a failed write (no space, read-only) leaves the previous file intact."""

from __future__ import annotations

import errno
import os

import pytest

from mvcli import io
from mvcli.errors import WriteError


def _fail_with(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize(
    ("where", "code", "hint"),
    [("fsync", errno.ENOSPC, "free some space"), ("replace", errno.ENOSPC, "free some space"),
     ("mkstemp", errno.EROFS, "read-only")],
)  # fmt: skip
def test_injected_failure_keeps_the_previous_file(where, code, hint, tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    io.atomic_write_text(path, "good")
    target = io.tempfile if where == "mkstemp" else io.os
    monkeypatch.setattr(target, where, _fail_with(code))
    with pytest.raises(WriteError) as err:
        io.atomic_write_text(path, "new")
    assert str(path) in str(err.value) and os.strerror(code) in str(err.value)
    assert hint in str(err.value) and "left intact" in str(err.value)
    monkeypatch.undo()
    assert path.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary left


def test_failure_inside_the_writer_keeps_the_previous_file(tmp_path):
    path = tmp_path / "out.bin"
    io.atomic_write_bytes(path, b"good")

    def half_then_full(f):
        f.write(b"ne")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError, match="No space left on device"):
        io.atomic_write(path, half_then_full)
    assert path.read_bytes() == b"good" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    io.atomic_write_text(folder / "a.txt", "good")
    folder.chmod(0o555)
    try:
        with pytest.raises(WriteError, match="Permission denied"):
            io.atomic_write_text(folder / "a.txt", "new")
        assert (folder / "a.txt").read_text() == "good"
    finally:
        folder.chmod(0o755)
