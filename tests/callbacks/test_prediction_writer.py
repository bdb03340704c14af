"""SubmissionWriter: the JSON submission is never replaced; failed writes keep the old file."""

from __future__ import annotations

import errno
import json
import os

import pytest

from mvcli.__main__ import run
from mvcli.callbacks.prediction_writer import csv_path
from mvcli.utils import io


def _args(trained, out, *extra):
    common, fit = trained
    best = fit.trainer.checkpoint_callback.best_model_path
    return ["predict", *common, "--ckpt_path", best, "--prediction_writer.output_path", str(out),
            *extra]  # fmt: skip


def test_csv_output_path_is_refused(trained, tmp_path, capsys):
    """The reported case: output_path preds.csv + csv true wrote the CSV over the JSON."""
    out = tmp_path / "preds.csv"
    with pytest.raises(SystemExit) as exit_info:
        run(_args(trained, out, "--prediction_writer.csv", "true"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "JSON submission, not the CSV" in err
    assert not out.exists()


def test_csv_is_a_separate_file(trained, tmp_path, caplog):
    out = tmp_path / "preds.json"
    run(_args(trained, out, "--prediction_writer.csv", "true"))
    assert "Actions" in json.loads(out.read_text())
    assert (tmp_path / "preds.csv").read_text().startswith("action_id,")
    assert f"written to {out}" in caplog.text and f"(CSV): {tmp_path / 'preds.csv'}" in caplog.text
    assert csv_path(tmp_path / "preds") == tmp_path / "preds.csv"


def test_failed_write_keeps_the_previous_predictions(trained, tmp_path, monkeypatch, capsys):
    out = tmp_path / "preds.json"
    run(_args(trained, out))
    good = out.read_text()
    real_replace = os.replace

    def full_disk(src, dst):
        if str(dst) == str(out):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        run(_args(trained, out, "--prediction_writer.overwrite", "true"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert f"could not write {out}: No space left on device" in err and "Traceback" not in err
    assert out.read_text() == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
