"""validate/test/predict given a checkpoint write into its run folder, or where the user says."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mvcli.cli import main
from mvcli.commandline.outputs import run_dir_of


def test_run_dir_of(tmp_path):
    assert run_dir_of(tmp_path / "runs/demo/version_3/checkpoints/last.ckpt") == (
        tmp_path / "runs/demo/version_3"
    )
    assert run_dir_of(tmp_path / "elsewhere/model.ckpt") == tmp_path / "elsewhere"


def test_predict_with_only_a_checkpoint_writes_into_its_run(trained, synthetic_root, tmp_path):
    _, fit = trained
    run = tmp_path / "myrun"
    ckpt = run / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(fit.trainer.checkpoint_callback.best_model_path, ckpt)
    args = ["--ckpt_path", str(ckpt), "--data.predict_root", str(synthetic_root / "Chall")]
    cli = main(["predict", *args, "--data.num_workers", "0"])
    preds = json.loads((run / "predictions.json").read_text())
    assert len(preds["Actions"]) == 4
    assert Path(cli.trainer.log_dir) == run / "predict"  # no new runs/mvcli/version_<n>


def test_validate_into_a_named_folder(trained, tmp_path, caplog):
    common, fit = trained
    best = fit.trainer.checkpoint_callback.best_model_path
    out = tmp_path / "evaluation"
    fit_config = Path(fit.trainer.log_dir) / "config.yaml"
    before = fit_config.read_text()
    main(["validate", *common, "--ckpt_path", best, "--output_dir", str(out)])
    metrics = json.loads((out / "validate_metrics.json").read_text())
    assert "val/leaderboard" in metrics
    assert (out / "validate" / "config.yaml").is_file()  # the logger's files, beside
    assert f"wrote {out / 'validate_metrics.json'}" in caplog.text
    assert fit_config.read_text() == before  # evaluations never overwrite the fit's config
