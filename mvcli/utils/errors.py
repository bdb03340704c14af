"""The errors mvcli reports to users as one paragraph, and how ``mvcli.__main__.run`` exits on them.

A :class:`UsageError` is a wrong argument or option (exit 2, like argparse); a
:class:`DataError` is input or output that cannot be used: a dataset, a checkpoint, a file
that cannot be written (exit 1). Both carry a message that names the file, field or argument,
what was expected and how to fix it, so no traceback is needed (``MVCLI_DEBUG=1`` shows it).
"""

from __future__ import annotations

import errno
import os
import sys
import traceback

EXIT_DATA = 1
EXIT_USAGE = 2
DEBUG_ENV = "MVCLI_DEBUG"
# What lowers the memory one training action needs (out-of-memory messages).
SETTINGS_HINT = (
    "data.frames_per_clip, data.img_height/data.img_width, data.num_views, "
    "trainer.precision (16-mixed or bf16-mixed), model.speed.checkpointing stage, a smaller "
    "model.backbone, or a freezing strategy, e.g. --freezing FixedFreezing (frozen stages "
    "keep no gradients)"
)


class MvcliError(Exception):
    """An error whose message is complete for the user; ``exit_code`` is what run() returns."""

    exit_code = EXIT_DATA


class UsageError(MvcliError, ValueError):
    """A wrong argument, option or combination of them."""

    exit_code = EXIT_USAGE


class DataError(MvcliError, ValueError):
    """Input that cannot be used (dataset, annotations, checkpoint) or output not written."""


class WriteError(DataError):
    """A file that could not be written; the previous version of it is left intact."""

    def __init__(self, path: os.PathLike | str, err: OSError) -> None:
        why = err.strerror or str(err)
        hint = _WRITE_HINTS.get(err.errno, "check the folder's permissions and free space")
        super().__init__(
            f"could not write {path}: {why}; any previous version of the file is left intact "
            f"({hint})"
        )
        self.path = str(path)
        self.errno = err.errno


_WRITE_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "the folder is not writable: fix its permissions or write elsewhere",
    errno.EPERM: "the folder is not writable: fix its permissions or write elsewhere",
}


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0", "false", "False")


def exit_code(err: BaseException) -> int | None:
    """The exit code of an error reported without traceback; None: a bug, show it all."""
    if isinstance(err, MvcliError):
        return err.exit_code
    if _out_of_memory(err):
        return EXIT_DATA
    if isinstance(err, (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)):
        return EXIT_DATA
    if isinstance(err, OSError) and err.errno in _WRITE_HINTS:
        return EXIT_DATA
    return None


def report(err: BaseException, stream=None) -> int:
    """Write ``mvcli: <message>`` (plus the traceback when debugging); returns the exit code.

    Errors that are not known user errors keep their type in the message and exit 1: they
    are likely bugs, so the hint says how to get the traceback for a report.
    """
    stream = stream or sys.stderr
    code = exit_code(err)
    if debug_enabled():
        traceback.print_exception(type(err), err, err.__traceback__, file=stream)
    if code is None:
        code = EXIT_DATA
        message = f"{type(err).__name__}: {err}"
        hint = f"run again with {DEBUG_ENV}=1 for the traceback"
    else:
        message = _out_of_memory_message(err) if _out_of_memory(err) else str(err)
        hint = "" if debug_enabled() else f"({DEBUG_ENV}=1 shows the traceback)"
    stream.write(f"mvcli: {message}" + (f" {hint}" if hint else "") + "\n")
    return code


def _out_of_memory(err: BaseException) -> bool:
    """A device out-of-memory error that batch splitting did not handle (multi-process runs,
    evaluation, ``oom_recovery.enabled false``)."""
    import torch

    return isinstance(err, torch.OutOfMemoryError)


def _out_of_memory_message(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else "out of memory"
    return (
        f"out of memory ({first}). Lower the memory a batch needs: data.batch_size "
        f"(data.eval_batch_size when evaluating), {SETTINGS_HINT}. A fit resumes with "
        "--ckpt_path last (plus the changed settings)."
    )
