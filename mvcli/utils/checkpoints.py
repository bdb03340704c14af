"""Checkpoint files: checked before anything else runs (each problem its own clear message),
written atomically, kept periodically, and found again for ``--ckpt_path last``.

``mvcli validate|test|predict|export --ckpt_path X`` (and ``fit`` resuming from X) read X
here first, before any data is scanned or any model is built, so a wrong path, a truncated
download, a file that is not a checkpoint, another model's checkpoint or one written by a
newer mvcli stops the run at once with a message naming the file. Loading is
``weights_only=True`` (no code from the file is run).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import fsspec
import torch
from jsonargparse import typing as jsonargparse_typing
from jsonargparse.typing import NonNegativeInt
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from mvcli import __version__
from mvcli.utils.errors import DataError
from mvcli.utils.io import atomic_write

# Lightning's own ckpt_path values, resolved by the Trainer (not files).
SPECIAL_CKPT_PATHS = frozenset({"last", "best", "hpc", "registry"})
VERSION_KEY = "mvcli_version"
# Limit-checked numbers (int/float subclasses that only validate their value): checkpoints of
# mvcli <= 0.1.0 hold some in scheduler states (LinearWarmup.warmup_steps); allowed for the
# weights_only loading of this module and of Lightning's resume.
torch.serialization.add_safe_globals(
    [
        getattr(jsonargparse_typing, name)
        for name in ("PositiveInt", "NonNegativeInt", "PositiveFloat", "NonNegativeFloat")
    ]
)
_HOW = "pass --ckpt_path with a .ckpt written by `mvcli fit` (in <log_dir>/checkpoints/)"


def _allow_limit_checked_numbers() -> None:
    """Let ``weights_only`` loading accept jsonargparse's and mvcli's limit-checked numbers.

    They are ``int``/``float`` subclasses that run no code when unpickled. Arguments of
    components given by ``class_path`` keep those types, and 0.1.0 saved one in a scheduler's
    state (``LinearWarmup.warmup_steps``): its checkpoints load only with these allowed.
    """
    import jsonargparse.typing as jsonargparse_types

    from mvcli.commandline import limits

    allowed: list[Any] = []
    for module, names in (
        (jsonargparse_types, ("NonNegativeInt", "PositiveInt", "NonNegativeFloat",
                              "PositiveFloat", "ClosedUnitInterval", "OpenUnitInterval")),
        (limits, limits.__all__),
    ):  # fmt: skip
        for name in names:
            cls = getattr(module, name)
            allowed.append(cls)
            # By its module's path at pickling: the path before the package moved too.
            allowed.append((cls, f"{cls.__module__}.{name}"))
            if module is limits:
                allowed.append((cls, f"mvcli.limits.{name}"))
    torch.serialization.add_safe_globals(allowed)


_allow_limit_checked_numbers()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` (on the CPU), checked to be one of mvcli's.

    Raises:
        DataError: missing, a folder, unreadable/truncated, not a Lightning checkpoint,
            another model's, or from a newer mvcli; the message says which and what to do.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"checkpoint {path} not found; {_HOW}")
    if not path.is_file():
        raise DataError(f"checkpoint {path} is not a file; {_HOW}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive (index at the end)
        raise _unreadable(path, ValueError("not a zip archive"))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only" in str(err):
            raise DataError(
                f"checkpoint {path} holds objects other than tensors and plain values, which "
                "mvcli does not load (they could run code); re-save it with `mvcli fit` or "
                "keep only its state_dict"
            ) from err
        raise _unreadable(path, err) from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise _unreadable(path, err) from err
    check_checkpoint(checkpoint, path)
    return checkpoint


def check_checkpoint(checkpoint: Any, path: str | Path) -> None:
    """Raise :class:`DataError` unless ``checkpoint`` is an mvcli checkpoint we can read."""
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise DataError(
            f"{path} is a PyTorch file but not a Lightning checkpoint (no 'state_dict'); {_HOW}"
        )
    if "pytorch-lightning_version" not in checkpoint:
        raise DataError(
            f"{path} is not a Lightning checkpoint (no 'pytorch-lightning_version'); a bare "
            f"state dict or weights file goes to --model.pretrained instead; {_HOW}"
        )
    hparams = checkpoint.get("hyper_parameters") or {}
    state = checkpoint["state_dict"]
    if "backbone" not in hparams or not any(str(k).startswith("network.") for k in state):
        raise DataError(
            f"{path} is a Lightning checkpoint of another model, not of mvcli's MVFoulModule "
            f"(hyperparameters {sorted(hparams)[:6]}); {_HOW}"
        )
    written_by = checkpoint.get(VERSION_KEY)
    if written_by is not None and _version(str(written_by)) > _version(__version__):
        raise DataError(
            f"checkpoint {path} was written by mvcli {written_by}, newer than this mvcli "
            f"{__version__}; upgrade mvcli to read it"
        )


def _unreadable(path: Path, err: BaseException) -> DataError:
    return DataError(
        f"checkpoint {path} cannot be read: truncated, damaged or not a PyTorch checkpoint "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); copy it "
        f"again or {_HOW}"
    )


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's local checkpoint IO, written through :func:`mvcli.utils.io.atomic_write`.

    A kill during a save leaves the previous checkpoint of that name (``last.ckpt``) intact,
    never a truncated one; a write that fails (full disk, read-only folder) raises a
    :class:`~mvcli.utils.errors.WriteError` naming the file. Remote paths are Lightning's as usual.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or fsspec.utils.get_protocol(str(path)) != "file":
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda f: torch.save(checkpoint, f))


# -- run-time checkpoint files: periodic keeps, last.ckpt outside the schedule, --ckpt_path last
LAST_NAME = ModelCheckpoint.CHECKPOINT_NAME_LAST  # "last"


class PeriodicCheckpoint(ModelCheckpoint):
    """Keeps a checkpoint every ``every_n_epochs`` epochs (``periodic-epoch<NNN>.ckpt``).

    A class of its own so that Lightning tells its state from the ``last`` checkpoint's (two
    ``ModelCheckpoint`` without monitor and with the same period share a state key).

    Args:
        every_n_epochs: epochs between two kept checkpoints; 0 turns them off.
        dirpath: folder (default: the run's ``checkpoints`` folder, beside best and last).
        filename: file name pattern (``{epoch}`` and logged metrics can be used).
    """

    def __init__(
        self,
        every_n_epochs: NonNegativeInt = 0,
        dirpath: Path | None = None,
        filename: str = "periodic-epoch{epoch:03d}",
    ) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=None,
            save_top_k=-1,
            every_n_epochs=every_n_epochs,
            auto_insert_metric_name=False,
        )


def _last_callback(trainer: Trainer) -> ModelCheckpoint | None:
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and not isinstance(callback, PeriodicCheckpoint):
            if (callback.filename == LAST_NAME or callback.save_last) and callback.dirpath:
                return callback
    return None


def last_checkpoint_path(trainer: Trainer) -> str | None:
    """Where this run's ``last.ckpt`` is (or would be) written."""
    callback = _last_callback(trainer)
    if callback is None:
        return None
    return os.path.join(callback.dirpath, LAST_NAME + callback.FILE_EXTENSION)


def save_last_checkpoint(trainer: Trainer) -> str | None:
    """Write the current state to ``last.ckpt`` outside the epoch-end schedule (a signal, an
    OOM stop), as the last-checkpoint callback's own file: the resumed run then overwrites
    it, rather than writing ``last-v1.ckpt`` beside it."""
    callback = _last_callback(trainer)
    path = last_checkpoint_path(trainer)
    if callback is None or path is None:
        return None
    if callback.filename == LAST_NAME:
        callback.best_model_path = path
    callback.last_model_path = path
    trainer.save_checkpoint(path)
    return path


def newest_last_checkpoint(folder: Path) -> Path | None:
    """The most recently written ``last*.ckpt`` under ``folder``."""
    found = list(folder.glob(f"**/{LAST_NAME}*.ckpt")) if folder.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
