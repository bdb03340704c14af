"""Streams predictions to disk per batch and assembles the official submission file."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from mvcli.callbacks.distributed import gather_lists
from mvcli.commandline.outputs import checkpoint_of, output_dir
from mvcli.data.taxonomy import HEADS, submission_entry
from mvcli.data.tta import tta_of
from mvcli.utils.errors import DataError, UsageError, WriteError
from mvcli.utils.io import atomic_write_text


class SubmissionWriter(BasePredictionWriter):
    """Writes ``predictions.json`` in the SoccerNet-MVFoul submission format.

    ``Actions`` holds exactly what the official evaluator reads; ``details`` adds, per
    action, the probabilities of every class, the top-2 of each head and the views used;
    ``failed`` lists actions with no readable view (left out of ``Actions``, so the
    evaluator counts them as missed); ``checkpoint`` and ``input`` (absolute paths) say what
    was predicted from what, ``tta`` with which test-time augmentation (``data.tta``: flip,
    window offsets, how the copies were averaged, how many; probabilities in ``details`` are
    the averaged ones). Each rank streams its rows to a part file per batch;
    the parts are merged at the end, so memory does not grow with the number of actions.

    Args:
        output_path: the JSON submission to write; default ``predictions.json`` in
            ``output_dir``. Not a ``.csv`` name: the CSV is always a separate file.
        output_dir: folder of ``predictions.json`` when ``output_path`` is unset; None: the
            run's log folder. ``mvcli predict`` fills it from ``--output_dir``, else with a
            new folder of the checkpoint's run, ``<run>/predict/<checkpoint stem>-<input
            name>`` (``-2``, ``-3``, ... when that exists).
        overwrite: replace existing output files instead of stopping before predicting.
        csv: also write a CSV next to the JSON (``predictions.json`` ->
            ``predictions.csv``), one row per action (for spreadsheets).
    """

    def __init__(
        self,
        output_path: Path | None = None,
        overwrite: bool = False,
        csv: bool = False,
        output_dir: Path | None = None,
    ) -> None:
        super().__init__(write_interval="batch")
        if output_path is not None and Path(output_path).suffix.lower() == ".csv":
            raise UsageError(
                f"--prediction_writer.output_path {output_path} names the JSON submission, not "
                "the CSV: give it a .json name; with --prediction_writer.csv true the CSV is "
                f"written next to it ({Path(output_path).with_suffix('.json').name} -> "
                f"{Path(output_path).name})"
            )
        self.output_path = Path(output_path) if output_path is not None else None
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.overwrite = overwrite
        self.csv = csv
        self._part: Path | None = None
        self._ckpt: str | None = None
        self._input: str | None = None
        self._tta: dict | None = None

    def resolve_path(self, trainer: Trainer) -> Path:
        if self.output_path is not None:
            return self.output_path
        return output_dir(trainer, self.output_dir) / "predictions.json"

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        path = self.resolve_path(trainer)
        targets = (path, csv_path(path)) if self.csv else (path,)
        # Rank 0 writes the output, so its view decides, for every rank alike.
        exists = [str(t) for t in targets if t.exists() and not self.overwrite]
        exists = trainer.strategy.broadcast(exists)
        if exists:
            raise UsageError(
                f"{exists[0]} exists; pass --prediction_writer.overwrite true or another "
                "--prediction_writer.output_path"
            )
        self._part = path.with_name(f"{path.name}.part{trainer.global_rank}")
        atomic_write_text(self._part, "")  # fails early, naming the file, if not writable
        self._ckpt = checkpoint_of(trainer)
        source = getattr(trainer.datamodule, "predict_input", None)
        self._input = str(Path(source).resolve()) if source is not None else None
        tta = tta_of(trainer.datamodule)
        self._tta = tta.record() if tta is not None else None

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        try:
            with self._part.open("a") as handle:
                for row in _rows(prediction):
                    handle.write(json.dumps(row) + "\n")
        except OSError as err:
            raise WriteError(self._part, err) from err

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every rank sends its rows to rank 0 (nodes need not share a filesystem), which
        # writes the one output; each action is predicted by exactly one rank (predict's
        # sampler does not repeat actions).
        path = self.resolve_path(trainer)  # a broadcast: asked on every rank
        rows = _read_part(self._part)
        self._part.unlink(missing_ok=True)
        written = 0
        if trainer.world_size > 1:
            rows = gather_lists(rows, trainer.world_size)
        if trainer.is_global_zero:
            payload = _assemble(rows, path, self._ckpt, self._input, self._tta)
            written, failed = len(payload["Actions"]), len(payload["failed"])
            rank_zero_info(
                f"predictions for {written} actions written to {path}"
                + (f"; {failed} actions had no readable view (see 'failed')" if failed else "")
            )
            if self.csv:
                write_csv(payload, csv_path(path))
                rank_zero_info(f"the same as a table (CSV): {csv_path(path)}")
        if trainer.strategy.broadcast(written) == 0:  # every rank stops alike
            raise NothingPredicted(
                f"nothing could be predicted: no action had a readable view (see 'failed' "
                f"in {path})"
            )


def _rows(prediction: dict) -> list[dict]:
    rows = []
    probs = prediction.get("probabilities", {})
    for i, action_id in enumerate(prediction["action_id"]):
        per_head = {h: probs[h][i] for h in HEADS}
        classes = {h: int(p.argmax()) for h, p in per_head.items()}
        rows.append(
            {
                "action_id": action_id,
                "entry": submission_entry(classes["offence_severity"], classes["action"]),
                "details": {
                    **{h: _head_detail(h, p) for h, p in per_head.items()},
                    "views": prediction["views"][i],
                    "skipped_views": prediction["skipped_views"][i],
                },
            }
        )
    for failed in prediction["failed"]:
        rows.append({"action_id": failed["action_id"], "failed": failed["skipped_views"]})
    return rows


def _head_detail(head: str, probs: torch.Tensor) -> dict:
    names = HEADS[head]
    top = probs.topk(2)
    return {
        "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs, strict=True)},
        "top2": [
            {"class": names[int(i)], "confidence": round(float(v), 6)}
            for v, i in zip(top.values, top.indices, strict=True)
        ],
    }


class NothingPredicted(DataError):
    """Every action of the prediction input lacked a readable view."""


def _read_part(part: Path) -> list[dict]:
    with part.open() as handle:
        return [json.loads(line) for line in handle]


def _assemble(
    rows: list[dict], path: Path, ckpt: str | None, source: str | None, tta: dict | None
) -> dict:
    actions, details, failed = {}, {}, {}
    for row in rows:
        if "failed" in row:
            failed[row["action_id"]] = row["failed"]
        else:
            actions[row["action_id"]] = row["entry"]
            details[row["action_id"]] = row["details"]
    order = sorted(actions, key=lambda a: (0, int(a)) if a.isdigit() else (1, a))
    payload = {
        "Actions": {a: actions[a] for a in order},
        "checkpoint": ckpt,
        "input": source,
        "tta": tta,
        "details": {a: details[a] for a in order},
        "failed": failed,
    }
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    return payload


CSV_COLUMNS = [
    "action_id",
    "Offence",
    "Severity",
    "Action class",
    "offence_severity",
    "offence_severity_confidence",
    "offence_severity_second",
    "action_confidence",
    "action_second",
    "views",
    "skipped_views",
]


def write_csv(payload: dict, path: Path) -> None:
    """One row per predicted action, then one per failed action (decisions left empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for action_id, entry in payload["Actions"].items():
        detail = payload["details"][action_id]
        os_top, action_top = detail["offence_severity"]["top2"], detail["action"]["top2"]
        writer.writerow(
            {
                "action_id": action_id,
                **entry,
                "offence_severity": os_top[0]["class"],
                "offence_severity_confidence": os_top[0]["confidence"],
                "offence_severity_second": os_top[1]["class"],
                "action_confidence": action_top[0]["confidence"],
                "action_second": action_top[1]["class"],
                "views": " ".join(detail["views"]),
                "skipped_views": " ".join(
                    f"{v['view']}:{v['reason']}" for v in detail["skipped_views"]
                ),
            }
        )
    for action_id, skipped in payload["failed"].items():
        writer.writerow(
            {
                "action_id": action_id,
                "skipped_views": " ".join(f"{v['view']}:{v['reason']}" for v in skipped),
            }
        )
    atomic_write_text(path, buffer.getvalue())


def csv_path(json_path: Path) -> Path:
    """The CSV beside a JSON submission: same name, ``.csv`` (never the JSON itself)."""
    path = json_path.with_suffix(".csv")
    return path if path != json_path else json_path.with_name(json_path.name + ".csv")
