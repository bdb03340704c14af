"""validate/test/predict given a checkpoint write into its run folder, or where the user says."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from mvcli.__main__ import run
from mvcli.cli import main
from mvcli.commandline.outputs import run_dir_of
from tests.conftest import CONFIGS, tiny_args


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
    folder = run / "predict" / "best-Chall"  # <checkpoint stem>-<input name>
    preds = json.loads((folder / "predictions.json").read_text())
    assert len(preds["Actions"]) == 4
    assert preds["checkpoint"] == str(ckpt.resolve())
    assert preds["input"] == str((synthetic_root / "Chall").resolve())
    assert Path(cli.trainer.log_dir) == folder  # no new runs/mvcli/version_<n>


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


# -- issue 22: every output its own place, nothing silently replaced -------------------------
def _copy_run(fit, run: Path, root: str | None = None) -> Path:
    """The shared fit's last checkpoint in ``<run>/checkpoints/last.ckpt``; ``root`` replaces
    the training data location it saved (as an older or moved run would have it)."""
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    checkpoint = torch.load(Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt",
                            weights_only=True)  # fmt: skip
    if root is not None:
        checkpoint["datamodule_hyper_parameters"]["root"] = root
    torch.save(checkpoint, ckpt)
    return ckpt


def test_predicting_new_clips_twice_gets_two_files_recording_their_sources(
    trained, synthetic_root, tmp_path, caplog
):
    """Item 2: the second `predict --ckpt_path CK --data.predict_root DIR` exited 2
    (predictions.json exists)."""
    ckpt = _copy_run(trained[1], tmp_path / "run")
    args = [
        "predict",
        "--ckpt_path",
        str(ckpt),
        "--data.predict_root",
        str(synthetic_root / "Chall"),
    ]
    run([*args, "--data.num_workers", "0"])
    run([*args, "--data.num_workers", "0"])
    first, second = (tmp_path / "run/predict/last-Chall", tmp_path / "run/predict/last-Chall-2")
    for folder in (first, second):
        path = folder / "predictions.json"
        assert f"written to {path}" in caplog.text  # each says where
        assert json.loads(path.read_text())["input"] == str((synthetic_root / "Chall").resolve())


def test_an_explicit_output_that_exists_stops_before_the_checkpoint_is_read(tmp_path, capsys):
    not_a_checkpoint = tmp_path / "x.ckpt"
    not_a_checkpoint.write_text("not read")
    (tmp_path / "p.json").write_text("{}")
    (tmp_path / "out").mkdir()
    (tmp_path / "out/test_metrics.json").write_text("{}")
    (tmp_path / "out/export.json").write_text("{}")
    for argv, line in [
        (["predict", "--prediction_writer.output_path", str(tmp_path / "p.json")],
         f"{tmp_path / 'p.json'} exists; pass --prediction_writer.overwrite true"),
        (["test", "--output_dir", str(tmp_path / "out")],
         f"{tmp_path / 'out/test_metrics.json'} exists; pass another --output_dir"),
        (["export", "--output_dir", str(tmp_path / "out")],
         f"{tmp_path / 'out/export.json'} exists; pass another --output_dir"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            run([*argv, "--ckpt_path", str(not_a_checkpoint), "--data.root", "nowhere"])
        assert exit_info.value.code == 2
        assert line in capsys.readouterr().err
    assert (tmp_path / "p.json").read_text() == "{}"


def test_testing_two_checkpoints_and_exporting_twice_replace_nothing(trained, tmp_path):
    """Item 3: test of another checkpoint overwrote test_metrics.json, the PNGs and the
    per-class table, unsaid; export replaced an earlier export folder."""
    common, fit = trained
    run_dir = Path(fit.trainer.log_dir)
    written = []
    for ckpt in (
        fit.trainer.checkpoint_callback.best_model_path,
        run_dir / "checkpoints/last.ckpt",
    ):
        cli = main(["test", *common, "--ckpt_path", str(ckpt)])
        folder = Path(cli.config["test"]["metrics_writer"]["output_dir"])
        assert folder.parent == run_dir / "test" and folder.name.startswith(Path(ckpt).stem)
        metrics = json.loads((folder / "test_metrics.json").read_text())
        assert metrics["checkpoint"] == str(Path(ckpt).resolve())
        assert (folder / "test_per_class.csv").is_file()
        written.append(folder)
    assert len(set(written)) == 2
    last = run_dir / "checkpoints/last.ckpt"
    exports = [
        main(["export", "--ckpt_path", str(last), "--formats", "[state_dict]"]) for _ in "ab"
    ]
    folders = [run_dir / "export/last", run_dir / "export/last-2"]
    for folder in folders:
        assert json.loads((folder / "export.json").read_text())["checkpoint"] == str(last.resolve())
    assert len(exports) == 2


def test_a_fit_without_logger_writes_into_a_run_folder(synthetic_root, tmp_path):
    """Item 4: --trainer.logger false wrote checkpoints/, history.json, augmented_batch.png and
    config.yaml into the current folder."""
    args = ["fit", "--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, tmp_path)]
    fit = main([*args, "--trainer.default_root_dir", "null", "--trainer.logger", "false",
                "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"])  # fmt: skip
    run_dir = tmp_path / "runs/mvcli/version_0"  # the working folder: tmp_path
    assert Path(fit.trainer.log_dir).resolve() == run_dir
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    for name in ("checkpoints/last.ckpt", "history.json", "augmented_batch.png", "config.yaml"):
        assert (run_dir / name).is_file(), name


def test_a_failed_fit_leaves_no_run_folder(synthetic_root, tmp_path, capsys):
    """Item 7b: a fit failing before its first epoch left runs/demo/version_N (an 88-byte
    events file), and later runs were numbered after it."""
    runs = tmp_path / "runs"
    args = ["fit", "--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, runs)]
    with pytest.raises(SystemExit) as exit_info:
        run([*args, "--data.root", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 1 and "annotations.json not found" in capsys.readouterr().err
    assert not runs.exists()
    fit = main([*args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"])
    assert Path(fit.trainer.log_dir) == runs / "demo/version_0"


def test_a_checkpoint_alone_finds_its_training_data_from_any_folder(
    trained, synthetic_root, tmp_path, monkeypatch, caplog, capsys
):
    """Items 8 and 10: validate without --config stopped at "data.root is not set"; export
    --quantize int8 from another folder measured nothing, silently. An older checkpoint's
    relative root is found from the folders above its run."""
    project = tmp_path / "project"
    shutil.copytree(synthetic_root, project / "data")
    ckpt = _copy_run(trained[1], project / "runs/demo/version_0", root="data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run(["validate", "--ckpt_path", str(ckpt), "--data.num_workers", "0"])
    metrics = project / "runs/demo/version_0/validate/last/validate_metrics.json"
    assert json.loads(metrics.read_text())["data"] == str((project / "data/Valid").resolve())
    quick = ["--latency_repeats", "1", "--calibration_batches", "1", "--data.num_workers", "0"]
    run(["export", "--ckpt_path", str(ckpt), "--formats", "[onnx]", "--quantize", "int8", *quick])
    export = json.loads((project / "runs/demo/version_0/export/last/export.json").read_text())
    assert export["compression"]["eval_split"] == "Test"
    assert "int8_static" in export["compression"]["variants"]
    # The data gone: one line says which option to pass.
    gone = _copy_run(trained[1], tmp_path / "moved/run", root=str(tmp_path / "gone"))
    with pytest.raises(SystemExit) as exit_info:
        run(["validate", "--ckpt_path", str(gone)])
    assert exit_info.value.code == 2
    assert f"was trained on {tmp_path / 'gone'}, not found here: pass --data.root DIR" in (
        capsys.readouterr().err
    )
    run(["export", "--ckpt_path", str(gone), "--formats", "[onnx]", "--quantize", "int8",
         "--latency_repeats", "1"])  # fmt: skip
    assert (
        f"export: no accuracy comparison and no static int8: the training data "
        f"{tmp_path / 'gone'} is not found here; pass --data.root DIR" in caplog.text
    )


def test_the_recipes_cache_lives_beside_the_data_and_says_its_size(
    synthetic_root, tmp_path, caplog
):
    """Item 9: configs/mvfoul.yaml's cache went to ./data/mvfoul-cache, under the working
    folder."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert yaml.safe_load((CONFIGS / "mvfoul.yaml").read_text())["data"]["cache_dir"] == "auto"
    args = ["cache", "--config", str(CONFIGS / "demo.yaml"), *tiny_args(root, tmp_path / "runs")]
    main([*args, "--data.cache_dir", "auto", "--splits", "[Valid]"])
    assert (root / ".mvcli-cache").is_dir() and not list(elsewhere.iterdir())
    assert re.search(r"clip cache Valid: \d+ views, .* [\d.]+ (KiB|MiB)", caplog.text)
