"""Atomic writes: complete new content or the old one, never a partial file or a stray temp."""

from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest

from mvcli.utils import io
from mvcli.utils.errors import WriteError
from mvcli.utils.io import atomic_open, atomic_write_bytes, atomic_write_text


def test_text_and_bytes_round_trip_and_create_parents(tmp_path):
    path = tmp_path / "a" / "b" / "out.json"
    atomic_write_text(path, "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert (path.stat().st_mode & 0o777) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_failure_mid_write_keeps_old_content_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.npy"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write(b"partial")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.npy"]


def test_context_manager_takes_writers_like_numpy(tmp_path):
    path = tmp_path / "x.npy"
    with atomic_open(path) as f:
        np.save(f, np.arange(3), allow_pickle=False)
    assert np.load(path).tolist() == [0, 1, 2]


def test_concurrent_writers_use_unique_temporaries(tmp_path):
    """Two writers of one file never share a temporary file (a fixed ``.tmp`` name did)."""
    path = tmp_path / "shared.txt"
    texts = [str(i) * 200_000 for i in range(8)]
    errors: list[BaseException] = []

    def write(text: str) -> None:
        try:
            atomic_write_text(path, text)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert path.read_text() in texts  # one writer's complete content
    assert [p.name for p in tmp_path.iterdir()] == ["shared.txt"]


def test_rejects_append_mode(tmp_path):
    with pytest.raises(ValueError, match="mode"), atomic_open(tmp_path / "x", "a"):
        pass


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
