"""Lightning's Trainer plus mvcli's own subcommands.

LightningCLI turns each Trainer method named in :meth:`mvcli.cli.MVCLI.subcommands` into a
subcommand whose arguments come from the method's typed signature, so a subcommand of ours is
a method here taking ``model`` and ``datamodule`` like ``fit`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from mvcli.callbacks.tuning import lr_curve
from mvcli.commandline.outputs import evaluation_folder, log_folder
from mvcli.data.annotations import Split
from mvcli.data.datamodule import PREPROCESSING_KEYS
from mvcli.deploy.compress import (
    Quantization,
    compress_export,
    fold_pruning,
    format_table,
    sparsity,
)
from mvcli.deploy.export import FORMATS, ExportFormat, export_network
from mvcli.utils.checkpoints import load_checkpoint
from mvcli.utils.errors import UsageError
from mvcli.utils.io import atomic_write_text

# Subcommand name -> arguments LightningCLI fills itself (not exposed as options).
EXTRA_SUBCOMMANDS: dict[str, set[str]] = {
    "export": {"model", "datamodule"},
    "cache": {"model", "datamodule"},
    "lr_find": {"model", "datamodule"},
}
CacheSplit = Literal[Split, "predict"]
LabelledSplit = Literal["Train", "Valid", "Test"]
LRFinderMode = Literal["exponential", "linear"]


class MVTrainer(Trainer):
    """The Trainer used by ``mvcli``; extra subcommands are methods registered above."""

    def cache(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        splits: list[CacheSplit] | None = None,
    ) -> dict:
        """Build the decoded-clip cache (``data.cache_dir``) ahead of training (under
        torchrun or SLURM, once per node: by local rank 0).

        Args:
            model: unused (built from the config like in every subcommand).
            datamodule: the data module whose views are cached.
            splits: what to cache: splits of ``data.root`` or ``predict`` (what ``predict``
                reads); default: the labelled splits present (Train, Valid, Test).
        """
        if datamodule is None or not hasattr(datamodule, "build_cache"):
            raise ValueError("cache needs mvcli's data module (the `data:` section)")
        if self.local_rank != 0:
            # One builder per node, as for fit's prepare_data (the cache may be node-local).
            return {}
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
        quantize: Quantization | None = None,
        half: bool = False,
        eval_split: LabelledSplit | None = None,
        calibration_split: LabelledSplit | None = "Train",
        calibration_batches: int = 8,
        latency_repeats: int = 10,
    ) -> dict:
        """Export a checkpoint's network as a state dict, ONNX and a torch.export program
        (under torchrun or SLURM, by global rank 0 only).

        With ``--quantize``/``--half``, smaller ONNX variants too, each measured against the
        fp32 ONNX model: size, CPU latency per action (batch 1 and 8), accuracy on a split.

        Args:
            model: the LightningModule (built from the checkpoint's hyperparameters).
            datamodule: its data module; its preprocessing is recorded in the manifest.
            ckpt_path: checkpoint to export.
            output_dir: destination folder, which must not hold an export yet (default: a new
                folder of the checkpoint's run, ``<run>/export/<checkpoint stem>``, numbered
                ``-2``, ``-3``, ... when that exists).
            formats: any of ``state_dict``, ``onnx``, ``torch_export`` (default: all).
            opset: ONNX opset (default: the exporter's).
            tolerance: largest logit difference allowed between an export and PyTorch.
            quantize: ``int8``: also write int8 ONNX models: linear layers quantised
                dynamically (``model_int8_dynamic.onnx``) and, calibrated on
                ``calibration_split``, the 3D convolutions too (``model_int8_static.onnx``).
            half: also write an fp16 ONNX model (``model_fp16.onnx``).
            eval_split: labelled split of ``data.root`` on which each variant's accuracy is
                compared with fp32 (default: Test when present; else no accuracy).
            calibration_split: split whose first batches calibrate static int8 (null: none).
            calibration_batches: batches used for calibration.
            latency_repeats: timed runs per latency figure (the median is reported).
        """
        if ckpt_path is None:
            raise UsageError("`mvcli export` needs --ckpt_path: the checkpoint to export")
        ckpt_path = Path(ckpt_path).resolve()
        if not self.is_global_zero:
            return {}  # one process writes the files (under torchrun, every process runs this)
        if output_dir is not None and (Path(output_dir) / "export.json").exists():
            raise UsageError(
                f"{Path(output_dir) / 'export.json'} exists; pass another --output_dir (or leave "
                "it out: a new folder in the checkpoint's run)"
            )
        output_dir = Path(output_dir or evaluation_folder(ckpt_path, "export"))
        checkpoint = load_checkpoint(ckpt_path)
        # A pruned checkpoint may still hold the pruning reparametrisation: made permanent.
        model.load_state_dict(fold_pruning(checkpoint["state_dict"]))
        formats = list(formats or FORMATS)
        if (quantize or half) and "onnx" not in formats:
            formats.append("onnx")  # the variants are made from it
        hparams = getattr(datamodule, "hparams", {})
        preprocessing = {k: hparams[k] for k in PREPROCESSING_KEYS if k in hparams}
        # The normalisation the model really applies (data.mean/std None: the backbone's).
        clip = model.hparams.clip
        preprocessing |= {k: list(clip[k]) for k in ("mean", "std")}
        manifest = export_network(
            model.network,
            output_dir,
            frames=clip["num_frames"],
            height=clip["height"],
            width=clip["width"],
            formats=formats,
            metadata={
                "checkpoint": str(ckpt_path),
                "preprocessing": preprocessing,
                "backbone": model.hparams.backbone,
                "pooling": model.hparams.pooling,
                "weight_sparsity": sparsity(model.network),
            },
            opset=opset,
            tolerance=tolerance,
        )
        rank_zero_info(f"exported {', '.join(manifest['files'].values())} to {output_dir}")
        for fmt, errors in manifest["parity_max_abs_error"].items():
            rank_zero_info(f"  {fmt}: max |logit difference| vs PyTorch {max(errors.values()):.2e}")
        if quantize or half:
            size = {"frames": clip["num_frames"], "height": clip["height"], "width": clip["width"]}
            manifest["compression"] = compress_export(
                output_dir / manifest["files"]["onnx"],
                datamodule,
                size,
                quantize=quantize,
                half=half,
                eval_split=eval_split,
                calibration_split=calibration_split,
                calibration_batches=calibration_batches,
                repeats=latency_repeats,
                checkpoint_root=checkpoint.get("datamodule_hyper_parameters", {}).get("root"),
            )
            atomic_write_text(output_dir / "export.json", json.dumps(manifest, indent=2) + "\n")
            report = manifest["compression"]
            rank_zero_info(format_table(report["variants"], report["eval_split"]))
        return manifest

    def lr_find(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        min_lr: float = 1e-6,
        max_lr: float = 1.0,
        num_training: int = 100,
        mode: LRFinderMode = "exponential",
        early_stop_threshold: float | None = 4.0,
    ) -> dict:
        """Lightning's learning-rate range test on the config: suggests the heads' LR.

        Trains ``num_training`` batches from the config's starting point while the LR grows
        from ``min_lr`` to ``max_lr`` (every parameter group at the same LR), records the
        loss, then puts the model back. The suggestion is a tenth of the LR at the minimum of
        the smoothed loss (the raw per-step losses, bias-corrected: Lightning's own curve and
        suggestion are not; see :mod:`mvcli.callbacks.tuning`). Saves the loss-vs-LR plot
        (smoothed curve, raw losses, suggestion and minimum marked) as ``lr_find.png`` and the
        curve as ``lr_find.json`` (LRs, raw and smoothed losses, suggestion) in the log folder
        and prints the suggestion with the YAML line to use it.

        Args:
            model: the LightningModule of the config.
            datamodule: its data module.
            min_lr: smallest LR tried.
            max_lr: largest LR tried.
            num_training: batches (LR values) tried.
            mode: how the LR grows: ``exponential`` or ``linear``.
            early_stop_threshold: stop once the loss exceeds this multiple of the best loss
                (None: never).
        """
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on a training node
        import matplotlib.pyplot as plt
        from lightning.pytorch.tuner import Tuner

        start = self.global_step
        finder = Tuner(self).lr_find(
            model,
            datamodule=datamodule,
            min_lr=min_lr,
            max_lr=max_lr,
            num_training=num_training,
            mode=mode,
            early_stop_threshold=early_stop_threshold,
            update_attr=False,
        )
        if finder is None:
            raise ValueError("lr_find did not run (it is skipped under trainer.fast_dev_run)")
        curve = lr_curve(finder.results["lr"], finder.results["loss"], start_step=start)
        suggestion = curve.suggestion
        folder = log_folder(self)
        folder.mkdir(parents=True, exist_ok=True)
        plot = folder / "lr_find.png"
        figure = curve.plot(log_x=mode == "exponential")
        figure.savefig(plot, dpi=120, bbox_inches="tight")
        plt.close(figure)
        atomic_write_text(folder / "lr_find.json", json.dumps(curve.to_dict(), indent=1) + "\n")
        tried = len(curve.lrs)
        if suggestion is None or curve.minimum is None:
            print(f"lr_find: no suggestion from {tried} LRs (the loss never falls); plot: {plot}")
        else:
            lowest = curve.lrs[curve.minimum]
            print(
                f"lr_find: suggested heads' LR {suggestion:.3g} (a tenth of {lowest:.3g}, the "
                f"smoothed loss's minimum; {tried} LRs tried); plot: {plot}\n"
                f"  YAML: model: {{optimizer: {{init_args: {{lr: {suggestion:.3g}}}}}}}\n"
                f"  CLI:  --model.optimizer.init_args.lr {suggestion:.3g}"
            )
        return {"suggestion": suggestion, "plot": str(plot), "lrs_tried": tried, "curve": curve}
