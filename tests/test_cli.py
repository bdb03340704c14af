"""The CLI through the same entry point users call: main(args)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mvcli import __version__
from mvcli.cli import checkpoint_defaults, main
from mvcli.deploy.scoring import score
from mvcli.models.backbones import KINETICS_MEAN, KINETICS_STD
from mvcli.utils.errors import UsageError
from tests.conftest import CONFIGS, tiny_args
from tests.evaluator import official_evaluate

# Full recipes; every other file is an overlay.
BASE_CONFIGS = {"demo.yaml", "mvfoul.yaml", "vars_baseline.yaml", "sota.yaml"}
# Recipes whose backbone needs its full-size input: smoke-run with the tiny one (their size
# and weights are checked by test_published_recipes_build_at_full_size).
FULL_SIZE_ONLY = {"vars_baseline.yaml", "sota.yaml"}
EXTRAS = {"logger_mlflow.yaml": "mlflow", "logger_wandb.yaml": "wandb"}  # optional installs


def _config_stack(name: str) -> list[str]:
    if name in BASE_CONFIGS:
        return ["--config", str(CONFIGS / name)]
    return ["--config", str(CONFIGS / "demo.yaml"), "--config", str(CONFIGS / name)]


def _log_dir(cli) -> Path:
    return Path(cli.trainer.log_dir)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_help_shows_argument_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "how the views of an action are combined" in out
    assert "views drawn at random per action in training" in out


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_config_smoke_runs(name, synthetic_root, tmp_path, torch_hub):
    if name in EXTRAS:
        pytest.importorskip(EXTRAS[name])
    args = ["fit", *_config_stack(name), *tiny_args(synthetic_root, tmp_path)]
    # One process here: multi-process configs run under torchrun in test_distributed.py.
    args += ["--trainer.devices", "1", "--trainer.num_nodes", "1"]
    if name in FULL_SIZE_ONLY:
        args += ["--model.backbone", "tiny", "--model.pretrained", "null"]
    cli = main([*args, "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu"])
    assert cli.trainer.state.finished


def test_configs_stack(tmp_path, synthetic_root):
    cli = main([*_config_stack("debug.yaml"), *tiny_args(synthetic_root, tmp_path)], run=False)
    assert cli.config.trainer.fast_dev_run is True  # from the overlay
    assert cli.config.model.backbone == "tiny"  # from demo.yaml


def test_links_carry_data_values_to_the_model(tmp_path, synthetic_root):
    cli = main(
        [
            *_config_stack("demo.yaml"),
            *tiny_args(synthetic_root, tmp_path),
            "--data.frames_per_clip",
            "6",
            "--data.mean",
            "[0.5,0.5,0.5]",
        ],
        run=False,
    )
    hparams = cli.model.hparams
    assert hparams.clip["num_frames"] == 6
    assert (hparams.clip["height"], hparams.clip["width"]) == (32, 56)
    assert tuple(hparams.clip["mean"]) == (0.5, 0.5, 0.5)
    assert hparams.num_classes == {"offence_severity": 4, "action": 8}


def test_env_vars_set_arguments(tmp_path, synthetic_root, monkeypatch):
    monkeypatch.setenv("MVCLI_FIT__DATA__NUM_VIEWS", "3")
    monkeypatch.setenv("MVCLI_FIT__MODEL__BACKBONE", "tiny")
    monkeypatch.setenv("MVCLI_FIT__TRAINER__MAX_EPOCHS", "1")
    monkeypatch.setenv("MVCLI_FIT__TRAINER__LIMIT_VAL_BATCHES", "1")
    cli = main(["fit", *tiny_args(synthetic_root, tmp_path), "--trainer.limit_train_batches", "1"])
    assert cli.datamodule.hparams.num_views == 3
    assert cli.config.fit.seed_everything == 42  # fixed default seed
    assert cli.trainer.current_epoch == 1


# The weights are loaded for one recipe (the other costs another ~200 MB file to write).
@pytest.mark.parametrize(
    ("name", "backbone", "size", "mean", "std", "weights"),
    [
        # Before: configs/mvfoul.yaml trained r2plus1d_18 from random weights.
        ("mvfoul.yaml", "r2plus1d_18", (16, 224, 398), KINETICS_MEAN, KINETICS_STD, True),
        # Before: every backbone got the Kinetics statistics, MViT and Swin3D included.
        ("vars_baseline.yaml", "mvit_v2_s", (16, 224, 224), (0.45,) * 3, (0.225,) * 3, True),
        (
            "sota.yaml",
            "swin3d_s",
            (32, 224, 398),
            (0.485, 0.456, 0.406),
            (0.229, 0.224, 0.225),
            False,
        ),
    ],
)
def test_published_recipes_build_at_full_size(name, backbone, size, mean, std, weights, torch_hub):
    """Each recipe builds its backbone at its size, with torchvision's weights (from the hub
    cache), normalised with the mean/std those weights expect."""
    extra = [] if weights else ["--model.pretrained", "null"]
    cli = main(["--config", str(CONFIGS / name), "--data.cache_dir", "null", *extra], run=False)
    hp, clip = cli.model.hparams, cli.model.hparams.clip
    assert (hp.backbone, clip["num_frames"], clip["height"], clip["width"]) == (backbone, *size)
    assert clip["mean"] == pytest.approx(mean) and clip["std"] == pytest.approx(std)
    assert cli.datamodule.hparams.mean is None  # unset: the backbone's, resolved once
    net = cli.model.network
    torch.testing.assert_close(net.shift.flatten(), -torch.tensor(mean) / torch.tensor(std))
    if weights:
        path = next((torch_hub / "checkpoints").glob(f"{backbone}-*"))
        cached = torch.load(path, weights_only=True)
        key = next(iter(cached))
        torch.testing.assert_close(net.backbone.state_dict()[key], cached[key])


def test_vars_baseline_recipe_values():
    config = yaml.safe_load((CONFIGS / "vars_baseline.yaml").read_text())
    model, data = config["model"], config["data"]
    assert (model["backbone"], model["pretrained"], model["pooling"]) == (
        "mvit_v2_s",
        "torchvision",
        "attention",
    )
    assert (data["center_frame"], data["target_fps"], data["frames_per_clip"]) == (75, 17.0, 16)
    assert model["optimizer"]["init_args"]["lr"] == 1e-4
    assert (config["trainer"]["max_epochs"], data["batch_size"]) == (60, 2)


def test_explicit_mean_wins_over_the_backbones(tmp_path, synthetic_root):
    args = [*_config_stack("demo.yaml"), *tiny_args(synthetic_root, tmp_path)]
    cli = main([*args, "--model.backbone", "swin3d_t", "--data.std", "[0.5,0.5,0.5]"], run=False)
    assert cli.model.hparams.clip["std"] == (0.5, 0.5, 0.5)
    clip = cli.model.hparams.clip
    assert clip["mean"] == pytest.approx((0.485, 0.456, 0.406))  # still the weights'


def test_checkpoint_keeps_normalisation_and_drops_old_flip_key(trained, tmp_path):
    _, fit = trained
    ckpt = torch.load(fit.trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert ckpt["hyper_parameters"]["clip"]["mean"] == pytest.approx((0.43216, 0.394666, 0.37645))
    assert ckpt["datamodule_hyper_parameters"]["augmentation"]["preset"] == "mild"
    # A checkpoint of an older mvcli (flip in the model) still restores.
    ckpt["hyper_parameters"]["hflip_prob"] = 0.5
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    defaults = checkpoint_defaults(old)
    assert "model.hflip_prob" not in defaults and defaults["model.backbone"] == "tiny"


def test_backbone_size_error_before_training(tmp_path, synthetic_root):
    args = [*_config_stack("demo.yaml"), *tiny_args(synthetic_root, tmp_path)]
    with pytest.raises(ValueError, match="s3d.*frames_per_clip"):
        main([*args, "--model.backbone", "s3d", "--data.frames_per_clip", "4"], run=False)


def test_print_config_reproduces_the_run(tmp_path, synthetic_root, capsys):
    args = [
        *_config_stack("demo.yaml"),
        *tiny_args(synthetic_root, tmp_path),
        "--model.pooling",
        "attention",
        "--data.num_views",
        "3",
    ]

    def printed(*argv: str) -> str:
        with pytest.raises(SystemExit):
            main(["fit", *argv, "--print_config"])
        return capsys.readouterr().out

    first = printed(*args)
    config_file = tmp_path / "printed.yaml"
    config_file.write_text(first)
    assert printed("--config", str(config_file)) == first
    config = yaml.safe_load(first)
    assert config["model"]["pooling"] == "attention"
    assert config["model"]["optimizer"]["class_path"] == "torch.optim.AdamW"
    assert config["data"]["num_views"] == 3
    # The printed file runs as is.
    cli = main(["fit", "--config", str(config_file), "--trainer.fast_dev_run", "true"])
    assert cli.trainer.state.finished


def test_fit_saves_config_and_checkpoints(trained):
    _, fit = trained
    fit_dir = _log_dir(fit)
    assert (fit_dir / "config.yaml").is_file()
    saved = yaml.safe_load((fit_dir / "config.yaml").read_text())
    assert saved["model"]["backbone"] == "tiny" and saved["data"]["frames_per_clip"] == 8
    ckpts = sorted(p.name for p in (fit_dir / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and len(ckpts) == 2
    last = torch.load(fit_dir / "checkpoints/last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, fit.trainer.global_step)  # latest epoch
    best = Path(fit.trainer.checkpoint_callback.best_model_path)
    assert best.name in ckpts
    score = fit.trainer.checkpoint_callback.best_model_score
    assert best.name.startswith("epoch00") and f"leaderboard{float(score):.4f}" in best.name


def test_limit_checked_values_are_plain_numbers_where_saved(trained):
    # --data.batch_size/frames_per_clip/img_height... are jsonargparse PositiveInt: their
    # values (linked into the model's too) must reach hparams and checkpoints as plain int.
    _, fit = trained
    last = torch.load(_log_dir(fit) / "checkpoints/last.ckpt", weights_only=True)
    data, model = last["datamodule_hyper_parameters"], last["hyper_parameters"]
    clip = model["clip"]
    assert (data["batch_size"], data["frames_per_clip"], clip["num_frames"]) == (4, 8, 8)
    for value in (data["batch_size"], data["img_height"], clip["num_frames"], clip["width"]):
        assert type(value) is int
    assert type(model["loss"]["effective_beta"]) is float  # UnitIntervalClosedOpen when parsed
    assert type(fit.datamodule.hparams.batch_size) is int


@pytest.mark.parametrize(("stage", "prefix"), [("validate", "val"), ("test", "test")])
def test_validate_and_test_write_metrics(trained, stage, prefix):
    common, fit = trained
    cli = main([stage, *common, "--ckpt_path", fit.trainer.checkpoint_callback.best_model_path])
    # Written into the run the checkpoint came from; its logs in <run>/<stage>/.
    assert _log_dir(cli) == _log_dir(fit) / stage
    metrics = json.loads((_log_dir(fit) / f"{stage}_metrics.json").read_text())
    names = [
        "acc_offence_severity",
        "bacc_offence_severity",
        "acc_action",
        "bacc_action",
        "leaderboard",
        "loss",
    ]
    for name in names:
        assert 0.0 <= metrics[f"{prefix}/{name}"] < float("inf"), name
    board = (metrics[f"{prefix}/bacc_offence_severity"] + metrics[f"{prefix}/bacc_action"]) / 2
    assert metrics[f"{prefix}/leaderboard"] == pytest.approx(board)


def test_predict_writes_submission(trained, tmp_path):
    common, fit = trained
    best = fit.trainer.checkpoint_callback.best_model_path
    out = tmp_path / "preds" / "predictions.json"
    cli = main(
        [
            "predict",
            *common,
            "--ckpt_path",
            best,
            "--data.predict_split",
            "Chall",
            "--prediction_writer.output_path",
            str(out),
        ]
    )
    preds = json.loads(out.read_text())
    assert len(preds["Actions"]) == 4
    for action_id, entry in preds["Actions"].items():
        assert set(entry) == {"Action class", "Offence", "Severity"}
        detail = preds["details"][action_id]
        probs = detail["action"]["probabilities"]
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
        assert detail["action"]["top2"][0]["class"] == entry["Action class"]
    assert preds["checkpoint"] == best
    assert cli.config_init.predict.return_predictions is False
    assert not list(out.parent.glob("*.part*"))
    with pytest.raises(UsageError, match="overwrite"):
        main(["predict", *common, "--ckpt_path", best, "--prediction_writer.output_path", str(out)])


def test_predict_on_real_sample_scores_with_official_evaluator(trained, sample_root, tmp_path):
    common, fit = trained
    out = tmp_path / "sample.json"
    main(
        [
            "predict",
            *common,
            "--ckpt_path",
            fit.trainer.checkpoint_callback.best_model_path,
            "--data.predict_root",
            str(sample_root / "Test"),
            "--data.center_frame",
            "75",
            "--prediction_writer.output_path",
            str(out),
        ]
    )
    preds = json.loads(out.read_text())
    assert sorted(preds["Actions"]) == ["0", "1", "2", "3", "4"]
    assert preds["details"]["4"]["views"] == ["clip_0.mp4", "clip_1.mp4", "clip_3.mp4"]
    official = official_evaluate(sample_root / "Test/annotations.json", out)
    assert 0 <= official["accuracy_action"] <= 100  # counted all five, no crash
    ours = score(out, sample_root / "Test/annotations.json")
    assert ours["counted"] == 5 and ours["missing"] == 0
    assert ours["accuracy_action"] == pytest.approx(official["accuracy_action"])
    assert 0 <= ours["leaderboard_value"] <= 100  # absent classes: no NaN
