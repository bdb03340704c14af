"""Where a run's files go: one rule for metrics, confusion matrices and predictions."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Trainer

from mvcli.utils.errors import UsageError


def output_dir(trainer: Trainer, chosen: Path | str | None = None) -> Path:
    """Folder for the files of validate/test/predict: ``chosen`` (a writer callback's
    ``output_dir`` argument, which the CLI fills from ``--output_dir`` or the run folder of
    ``--ckpt_path``), else the run's log folder (:func:`log_folder`).

    Without ``chosen`` this asks ``trainer.log_dir``, a broadcast under DDP: every rank must
    call it, together.
    """
    return Path(chosen) if chosen else log_folder(trainer)


def log_folder(trainer: Trainer) -> Path:
    """The run's log folder (the logger's), else ``trainer.default_root_dir``.

    ``trainer.log_dir`` is a broadcast under DDP: every rank must ask, together.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


def resume_command(trainer: Trainer) -> str:
    """The command that continues this fit from its ``last.ckpt``."""
    config = log_folder(trainer) / "config.yaml"
    option = f"--config {config}" if config.is_file() else "--config <your configs>"
    return f"mvcli fit {option} --ckpt_path last"


def checkpoint_of(trainer: Trainer) -> str | None:
    """The absolute path of the checkpoint the trainer evaluates (None: the model's own
    weights), recorded in every output file."""
    path = trainer.ckpt_path
    return str(Path(path).resolve()) if path and Path(path).is_file() else path


def run_dir_of(ckpt_path: Path) -> Path:
    """The run folder a checkpoint belongs to: ``<run>/checkpoints/x.ckpt`` -> ``<run>``."""
    parent = Path(ckpt_path).resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def fresh_folder(base: Path) -> Path:
    """``base`` when it does not exist, else the first free ``base-2``, ``base-3``, ...

    Nothing is created: the writers create the folder when they write into it.
    """
    base = Path(base)
    if not base.exists():
        return base
    number = 2
    while base.with_name(f"{base.name}-{number}").exists():
        number += 1
    return base.with_name(f"{base.name}-{number}")


def evaluation_folder(ckpt_path: Path, subcommand: str, input_name: str | None = None) -> Path:
    """Where validate/test/predict/export write without an explicit output: a folder of
    their own in the checkpoint's run, named after the checkpoint (and the input read):
    ``<run>/<subcommand>/<checkpoint stem>[-<input name>]``, numbered ``-2``, ``-3``, ...
    when that exists, so no earlier output is ever replaced."""
    name = Path(ckpt_path).stem + (f"-{input_name}" if input_name else "")
    return fresh_folder(run_dir_of(ckpt_path) / subcommand / name)


def new_run_folder(root: Path, name: str = "mvcli") -> Path:
    """``<root>/<name>/version_<n>``, the first number after the existing ones (as the
    TensorBoard logger numbers its runs): the run folder of a run without a logger."""
    parent = Path(root) / name
    numbers = [
        int(p.name.removeprefix("version_"))
        for p in (parent.iterdir() if parent.is_dir() else [])
        if p.name.startswith("version_") and p.name.removeprefix("version_").isdigit()
    ]
    return parent / f"version_{max(numbers, default=-1) + 1}"


# What a run folder may hold when its command failed before producing anything: the
# loggers' and the CLI's bookkeeping (removed with the folder, so run numbers do not shift).
_BOOKKEEPING = ("events.out.tfevents.*", "config.yaml", "hparams.yaml", "metrics.csv",
                "augmented_batch.png")  # fmt: skip


def remove_if_unfinished(folder: Path) -> bool:
    """Delete ``folder`` when it holds nothing but bookkeeping files (no checkpoint, no
    history, no metrics, predictions or export): a command that failed before its first
    result leaves no run behind. Returns whether it was removed."""
    import shutil

    folder = Path(folder)
    if not folder.is_dir():
        return False
    files = [p for p in folder.rglob("*") if not p.is_dir()]
    if any(not any(p.match(pattern) for pattern in _BOOKKEEPING) for p in files):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


def check_explicit_outputs(subcommand: str, config) -> None:
    """An output path given explicitly (``--output_dir``, ``--<section>.output_dir``,
    ``--prediction_writer.output_path``) must not hold this command's files already: checked
    on the parsed options, before any data is read or checkpoint loaded.

    Raises:
        UsageError: a file this command would write exists, naming it and what to pass.
    """
    chosen = config.get("output_dir")
    if subcommand == "predict":
        if config.get("prediction_writer.overwrite"):
            return
        folder = config.get("prediction_writer.output_dir") or chosen
        path = config.get("prediction_writer.output_path")
        path = Path(path) if path else (Path(folder) / "predictions.json" if folder else None)
        targets = [path] if path is not None else []
        if path is not None and config.get("prediction_writer.csv"):
            targets.append(path.with_suffix(".csv"))
        hint = "pass --prediction_writer.overwrite true or another --prediction_writer.output_path"
    elif subcommand in ("validate", "test"):
        targets = []
        folder = config.get("metrics_writer.output_dir") or chosen
        if folder:
            targets.append(Path(folder) / f"{subcommand}_metrics.json")
        folder = config.get("confusion.output_dir") or chosen
        if folder and subcommand == "test":
            targets.append(Path(folder) / "test_per_class.csv")
        hint = "pass another --output_dir (or leave it out: a new folder in the checkpoint's run)"
    elif subcommand == "export":
        targets = [Path(chosen) / "export.json"] if chosen else []
        hint = "pass another --output_dir (or leave it out: a new folder in the checkpoint's run)"
    else:
        return
    for target in targets:
        if target.exists():
            raise UsageError(f"{target} exists; {hint}")


def training_root(saved: str | Path | None, ckpt_path: Path) -> Path | None:
    """The training data a checkpoint names (``data.root`` saved at training), if it exists
    here: as saved when absolute; a relative one (older checkpoints) is tried from the working
    folder, then from the folders above the checkpoint's run. None when not found."""
    if not saved:
        return None
    saved = Path(saved).expanduser()
    if saved.is_absolute():
        candidates = [saved]
    else:
        above = list(run_dir_of(ckpt_path).parents)[:4]
        candidates = [Path.cwd() / saved, *(folder / saved for folder in above)]
    for candidate in candidates:
        if any((candidate / split / "annotations.json").is_file() for split in _SPLITS):
            return candidate.resolve()
    return None


_SPLITS = ("Train", "Valid", "Test", "Chall")
