"""Smaller ONNX variants of an exported network (fp16, int8) and what each costs.

Quantisation and fp16 conversion use ONNX Runtime's own tools, so every variant runs where
the fp32 ``model.onnx`` runs. For each variant the report gives the size on disk, the CPU
latency per action at batch 1 and 8, and the accuracy on a labelled split next to the fp32
model's (the drop is what compression cost).
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from mvcli.data.taxonomy import HEADS
from mvcli.deploy.export import example_inputs
from mvcli.task.metrics import (
    flat_compute,
    head_metrics,
    leaderboard,
    stage_metrics,
    wrong_predictions,
)

Quantization = Literal["int8"]
LATENCY_BATCHES = (1, 8)
FILE_NAMES = {
    "fp16": "model_fp16.onnx",
    "int8_dynamic": "model_int8_dynamic.onnx",
    "int8_static": "model_int8_static.onnx",
}
Feeds = dict[str, np.ndarray]
# (feeds or None, labels of the readable actions, labels of the unreadable ones): batch_feeds.
EvalBatch = tuple[Feeds | None, dict, dict]
_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def fold_pruning(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Make ``torch.nn.utils.prune`` reparametrisations permanent: ``w = w_orig * w_mask``.

    A checkpoint saved while pruning was still a reparametrisation (``ModelPruning`` with
    ``make_pruning_permanent: false``) holds ``<name>_orig`` and ``<name>_mask`` instead of
    ``<name>``; the network only has ``<name>``.
    """
    folded = {}
    for key, value in state_dict.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state_dict:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state_dict:
            base = key[: -len("_orig")]
            folded[base] = value * state_dict[base + "_mask"]
        else:
            folded[key] = value
    return folded


def sparsity(network: nn.Module) -> float:
    """Fraction of zero weights over the convolution and linear layers."""
    weights = [m.weight for m in network.modules() if isinstance(m, _PRUNABLE)]
    total = sum(w.numel() for w in weights)
    return float(sum((w == 0).sum() for w in weights) / total) if total else 0.0


def onnx_variants(
    onnx_path: Path,
    quantize: Quantization | None,
    half: bool,
    calibration: Iterable[Feeds] | None = None,
) -> dict[str, Path]:
    """Write the requested variants beside ``onnx_path``; returns name -> file, fp32 first.

    ``int8_dynamic`` stores the linear layers' weights in int8 and quantises their inputs on
    the fly (no data needed). ``int8_static`` (when ``calibration`` batches are given) also
    quantises the 3D convolutions, with activation ranges measured on those batches
    (post-training quantisation, QDQ format).
    """
    from onnxruntime import quantization as ortq

    onnx_path = Path(onnx_path)
    variants = {"fp32": onnx_path}
    if half:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # Inputs stay uint8/bool and outputs fp32: callers feed the same arrays as fp32.
        model = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
        variants["fp16"] = onnx_path.with_name(FILE_NAMES["fp16"])
        onnx.save(model, str(variants["fp16"]))
    if quantize == "int8":
        with _quiet_root_logger():
            _quantize_int8(ortq, onnx_path, variants, calibration)
    return variants


@contextlib.contextmanager
def _quiet_root_logger():
    """ORT logs (root logger) advice to pre-process the model with symbolic shape inference,
    which fails on this graph; the quantisation itself does not need it."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _quantize_int8(ortq, onnx_path: Path, variants: dict, calibration) -> None:
    """int8 weights for the linear layers, activations quantised at run time; and, given
    calibration batches, everything (convolutions too) with measured activation ranges."""
    variants["int8_dynamic"] = onnx_path.with_name(FILE_NAMES["int8_dynamic"])
    ortq.quantize_dynamic(
        onnx_path,
        variants["int8_dynamic"],
        op_types_to_quantize=["MatMul", "Gemm"],
        weight_type=ortq.QuantType.QInt8,
    )
    if calibration is not None:
        variants["int8_static"] = onnx_path.with_name(FILE_NAMES["int8_static"])
        ortq.quantize_static(
            onnx_path,
            variants["int8_static"],
            _Calibration(calibration),
            quant_format=ortq.QuantFormat.QDQ,
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],
            activation_type=ortq.QuantType.QUInt8,
            weight_type=ortq.QuantType.QInt8,
        )


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over an iterable of input feeds."""

    def __init__(self, feeds: Iterable[Feeds]) -> None:
        self._feeds: Iterator[Feeds] = iter(feeds)

    def get_next(self) -> Feeds | None:
        return next(self._feeds, None)


def batch_feeds(loader: Iterable[dict], limit: int | None = None) -> Iterator[EvalBatch]:
    """Per batch: ONNX feeds (None when no action of it is readable), the labels of its
    readable actions, and the labels of its unreadable labelled actions (scored as wrong)."""
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            return
        unreadable = {
            h: torch.tensor([f[h] for f in batch["failed"] if h in f], dtype=torch.long)
            for h in HEADS
        }
        unreadable = {h: t for h, t in unreadable.items() if len(t)}
        if batch["video"] is None:
            yield None, {}, unreadable
            continue
        feeds = {"video": batch["video"].numpy(), "view_mask": batch["view_mask"].numpy()}
        yield feeds, {h: batch[h] for h in HEADS if h in batch}, unreadable


def measure_variants(
    variants: dict[str, Path],
    size: dict[str, int],
    views: int,
    eval_batches: Callable[[], Iterable[EvalBatch]] | None,
    repeats: int = 10,
) -> dict[str, dict]:
    """Size, latency per action and (with ``eval_batches``) accuracy of each variant.

    Accuracy is the leaderboard value (mean balanced accuracy of the heads) and each head's
    accuracy; ``leaderboard_drop`` and ``agreement`` (same predicted class as fp32, both heads)
    compare with the first variant, fp32.
    """
    import onnxruntime

    report: dict[str, dict] = {}
    reference: dict[str, np.ndarray] | None = None
    for name, path in variants.items():
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        entry = {
            "file": Path(path).name,
            "size_mb": os.path.getsize(path) / 2**20,
            "latency_ms_per_action": {
                f"batch_{b}": _latency(session, size, views, b, repeats) for b in LATENCY_BATCHES
            },
        }
        if eval_batches is not None:
            scores, predictions = _evaluate(session, eval_batches())
            entry.update(scores)
            if reference is None:
                reference = predictions
            fp32 = next(iter(report.values()), entry)
            entry["leaderboard_drop"] = fp32["leaderboard"] - scores["leaderboard"]
            same = np.all([predictions[h] == reference[h] for h in reference], axis=0)
            entry["agreement"] = float(same.mean()) if same.size else float("nan")
        report[name] = entry
    return report


def _latency(session, size: dict[str, int], views: int, batch: int, repeats: int) -> float:
    """Median milliseconds per action over ``repeats`` runs, after one warm-up run."""
    video, mask = example_inputs(**size, batch=batch, views=views, seed=batch)
    feeds = {"video": video.numpy(), "view_mask": mask.numpy()}
    session.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000 / batch


def _evaluate(session, batches: Iterable[EvalBatch]) -> tuple[dict, dict]:
    """Scores as ``mvcli test`` gives them: an unreadable labelled action counts as wrong."""
    metrics = stage_metrics({h: head_metrics(len(names)) for h, names in HEADS.items()}, "eval")
    predictions: dict[str, list[np.ndarray]] = {h: [] for h in HEADS}
    actions = unreadable_actions = 0
    for feeds, labels, unreadable in batches:
        for head, target in unreadable.items():
            wrong = wrong_predictions(target, len(HEADS[head]))
            metrics.task_metrics[head].update(wrong, target)
        unreadable_actions += max((len(t) for t in unreadable.values()), default=0)
        if feeds is None:
            continue
        outputs = dict(zip(HEADS, session.run(None, feeds), strict=True))
        actions += len(feeds["video"])
        for head, logits in outputs.items():
            predictions[head].append(logits.argmax(-1))
            if head in labels:
                metrics.task_metrics[head].update(torch.from_numpy(logits), labels[head])
    values = flat_compute(metrics)
    scores = {"actions": actions, "unreadable_actions": unreadable_actions}
    scores["leaderboard"] = float(leaderboard(values, list(HEADS), "eval"))
    scores |= {k.removeprefix("eval/"): float(v) for k, v in values.items()}
    return scores, {h: np.concatenate(p) if p else np.array([]) for h, p in predictions.items()}


def format_table(report: dict[str, dict], split: str | None) -> str:
    """The report as an aligned text table, one row per variant."""
    accuracy = split is not None and all("leaderboard" in e for e in report.values())
    header = ["variant", "size MB", "ms/action b1", "ms/action b8"]
    if accuracy:
        header += [f"{split} leaderboard", "drop", "agreement"]
    rows = [header]
    for name, entry in report.items():
        latency = entry["latency_ms_per_action"]
        row = [name, f"{entry['size_mb']:.2f}", f"{latency['batch_1']:.1f}"]
        row.append(f"{latency['batch_8']:.1f}")
        if accuracy:
            row += [
                f"{entry['leaderboard']:.4f}",
                f"{entry['leaderboard_drop']:+.4f}",
                f"{entry['agreement']:.1%}",
            ]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


def compress_export(
    onnx_path: Path,
    datamodule,
    size: dict[str, int],
    *,
    quantize: Quantization | None,
    half: bool,
    eval_split: str | None,
    calibration_split: str | None,
    calibration_batches: int,
    repeats: int,
    checkpoint_root: str | None = None,
) -> dict:
    """Variants of ``onnx_path`` and their report (what ``mvcli export`` adds to export.json).

    The data come from mvcli's data module (``data.root``, else the checkpoint's):
    ``eval_split`` (default: Test when present) for accuracy, the first
    ``calibration_batches`` batches of ``calibration_split`` for static int8.
    """
    # data.root defaults to the checkpoint's training data when it is found here (the CLI's
    # checkpoint_defaults): unset, the data is not here.
    root = getattr(datamodule, "root", None)
    if root is None and (eval_split is not None or calibration_split is not None):
        where = (
            f"the training data {checkpoint_root} is not found here"
            if checkpoint_root
            else ("data.root is not set")
        )
        skipped = ["accuracy comparison"] + (["static int8"] if quantize == "int8" else [])
        rank_zero_info(
            f"export: no {' and no '.join(skipped)}: {where}; pass --data.root DIR, the "
            "dataset folder holding Train/Valid/Test"
        )
        eval_split = calibration_split = None
    if eval_split is None and root is not None and (root / "Test/annotations.json").is_file():
        eval_split = "Test"

    calibration = None
    if quantize == "int8" and calibration_split is not None and root is not None:
        calibration_loader = datamodule.split_loader(calibration_split)
        batches = batch_feeds(calibration_loader, calibration_batches)
        calibration = [f for f, _, _ in batches if f is not None]
    variants = onnx_variants(onnx_path, quantize, half, calibration)
    if eval_split is not None:
        eval_loader = datamodule.split_loader(eval_split)

        def eval_batches():
            return batch_feeds(eval_loader)
    else:
        eval_batches = None
    views = getattr(datamodule, "hparams", {}).get("num_views") or 2
    report = measure_variants(variants, size, views, eval_batches, repeats)
    return {
        "eval_split": eval_split,
        "calibration": None
        if calibration is None
        else {"split": calibration_split, "batches": len(calibration)},
        "latency": {"views": views, "cpu_threads": torch.get_num_threads(), "repeats": repeats},
        "variants": report,
    }
