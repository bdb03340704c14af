"""Atomic writes: complete new content or the old one, never a partial file or a stray temp."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mvcli.io import atomic_open, atomic_write_bytes, atomic_write_text


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
