"""Lightning's Trainer plus mvcli's own subcommands.

LightningCLI turns each Trainer method named in :meth:`mvcli.cli.MVCLI.subcommands` into a
subcommand whose arguments come from the method's typed signature, so a subcommand of ours is
a method here taking ``model`` and ``datamodule`` like ``fit`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from mvcli.data.datamodule import PREPROCESSING_KEYS
from mvcli.export import FORMATS, ExportFormat, export_network

# Subcommand name -> arguments LightningCLI fills itself (not exposed as options).
EXTRA_SUBCOMMANDS: dict[str, set[str]] = {
    "export": {"model", "datamodule"},
    "cache": {"model", "datamodule"},
}
CacheSplit = Literal["Train", "Valid", "Test", "Chall", "predict"]


class MVTrainer(Trainer):
    """The Trainer used by ``mvcli``; extra subcommands are methods registered above."""

    def cache(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        splits: list[CacheSplit] | None = None,
    ) -> dict:
        """Build the decoded-clip cache (``data.cache_dir``) ahead of training.

        Args:
            model: unused (built from the config like in every subcommand).
            datamodule: the data module whose views are cached.
            splits: what to cache: splits of ``data.root`` or ``predict`` (what ``predict``
                reads); default: the labelled splits present (Train, Valid, Test).
        """
        if datamodule is None or not hasattr(datamodule, "build_cache"):
            raise ValueError("cache needs mvcli's data module (the `data:` section)")
        progress = self.progress_bar_callback is not None
        return datamodule.build_cache(splits, progress=progress)

    def export(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        ckpt_path: Path | None = None,
        output_dir: Path | None = None,
        formats: list[ExportFormat] | None = None,
        opset: int | None = None,
        tolerance: float = 1e-4,
    ) -> dict:
        """Export a checkpoint's network as a state dict, ONNX and a torch.export program.

        Args:
            model: the LightningModule (built from the checkpoint's hyperparameters).
            datamodule: its data module; its preprocessing is recorded in the manifest.
            ckpt_path: checkpoint to export.
            output_dir: destination folder (default: ``<checkpoint name>_export`` beside it).
            formats: any of ``state_dict``, ``onnx``, ``torch_export`` (default: all).
            opset: ONNX opset (default: the exporter's).
            tolerance: largest logit difference allowed between an export and PyTorch.
        """
        if ckpt_path is None:
            raise ValueError("export needs --ckpt_path: the checkpoint to export")
        ckpt_path = Path(ckpt_path)
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["state_dict"])
        output_dir = Path(output_dir or ckpt_path.with_name(ckpt_path.stem + "_export"))
        hparams = getattr(datamodule, "hparams", {})
        preprocessing = {k: hparams[k] for k in PREPROCESSING_KEYS if k in hparams}
        # The normalisation the model really applies (data.mean/std None: the backbone's).
        preprocessing |= {k: list(model.hparams[k]) for k in ("mean", "std")}
        manifest = export_network(
            model.network,
            output_dir,
            frames=model.hparams.num_frames,
            height=model.hparams.img_height,
            width=model.hparams.img_width,
            formats=formats or list(FORMATS),
            metadata={
                "checkpoint": str(ckpt_path),
                "preprocessing": preprocessing,
                "backbone": model.hparams.backbone,
                "pooling": model.hparams.pooling,
            },
            opset=opset,
            tolerance=tolerance,
        )
        rank_zero_info(f"exported {', '.join(manifest['files'].values())} to {output_dir}")
        for fmt, errors in manifest["parity_max_abs_error"].items():
            rank_zero_info(f"  {fmt}: max |logit difference| vs PyTorch {max(errors.values()):.2e}")
        return manifest
