"""Atomic file writing: a file is either its old content or its complete new content, never a
partial write, even if the process is killed or the disk fills up mid-write.

Each write goes to a unique temporary file in the destination's folder (so concurrent writers
never share one, and the final rename stays on one file system), is flushed and fsynced,
then renamed over the destination with ``os.replace`` (atomic on POSIX and Windows). On any
error the temporary file is removed and the destination is left untouched; an ``OSError``
(no space, read-only, ...) becomes a :class:`~mvcli.utils.errors.WriteError` naming the file
and why.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, BinaryIO

from mvcli.utils.errors import WriteError

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", mode_bits: int = 0o644) -> Iterator[IO]:
    """Open a temporary file to write ``path``'s new content; on a clean exit it replaces
    ``path``.

    Args:
        path: the destination; missing parent folders are created.
        mode: ``"wb"`` (bytes) or ``"w"`` (text, UTF-8).
        mode_bits: permissions of the written file (mkstemp's default, 0o600, would make
            outputs unreadable to other users of a shared machine).

    Raises:
        WriteError: the folder or file could not be written; ``path`` is unchanged.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        encoding = "utf-8" if mode == "w" else None
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode_bits)
        os.replace(tmp, path)
    except OSError as err:
        _remove(tmp)
        raise WriteError(path, err) from err
    except BaseException:
        _remove(tmp)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file, then rename it to ``path``."""
    with atomic_open(path, "wb") as f:
        write(f)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def _remove(tmp: str | None) -> None:
    if tmp is not None:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
