"""The CLI through the same entry point users call: main(args)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from mvcli import __version__
from mvcli.cli import checkpoint_defaults, main
from mvcli.commandline import renamed
from mvcli.deploy.scoring import score
from mvcli.models.backbones import KINETICS_MEAN, KINETICS_STD
from mvcli.utils.errors import UsageError
from tests.conftest import CONFIGS, tiny_args
from tests.evaluator import official_evaluate

# Full recipes; every other file is an overlay (on demo.yaml, or on mvfoul.yaml for these).
BASE_CONFIGS = {"demo.yaml", "mvfoul.yaml"}
ON_MVFOUL = {"vars_baseline.yaml", "sota.yaml", "videomae.yaml", "vjepa2.yaml"}
# Hugging Face recipes: smoke-run with a tiny local model (tests/models/test_hf.py).
HF_CONFIGS = {"videomae.yaml", "vjepa2.yaml"}
# Recipes whose backbone needs its full-size input: smoke-run with the tiny one (their size
# and weights are checked by test_published_recipes_build_at_full_size).
FULL_SIZE_ONLY = {"vars_baseline.yaml", "sota.yaml"}
EXTRAS = {"logger_mlflow.yaml": "mlflow", "logger_wandb.yaml": "wandb"}  # optional installs


def _config_stack(name: str) -> list[str]:
    if name in BASE_CONFIGS:
        return ["--config", str(CONFIGS / name)]
    base = "mvfoul.yaml" if name in ON_MVFOUL else "demo.yaml"
    return ["--config", str(CONFIGS / base), "--config", str(CONFIGS / name)]


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
    if name in HF_CONFIGS:
        pytest.importorskip("transformers")
        from tests.models.test_hf import tiny_for_any_clip

        args += ["--model.backbone", tiny_for_any_clip(tmp_path / "hf_model")]
    cli = main([*args, "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu"])
    assert cli.trainer.state.finished


def test_final_fit_overlay_on_the_real_data_recipe(synthetic_root, tmp_path, torch_hub):
    # mvfoul.yaml's early stopping watches val/leaderboard: the overlay takes it out.
    args = ["fit", "--config", str(CONFIGS / "mvfoul.yaml"), "--config",
            str(CONFIGS / "final_fit.yaml"), *tiny_args(synthetic_root, tmp_path),
            "--model.backbone", "tiny", "--model.pretrained", "null"]  # fmt: skip
    cli = main([*args, "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu"])
    assert cli.trainer.state.finished and cli.trainer.early_stopping_callback is None
    assert cli.datamodule.hparams.train_splits == ["Train", "Valid"]


def test_a_fit_without_validation_refuses_what_watches_val_metrics(synthetic_root, tmp_path):
    overlay = tmp_path / "watching.yaml"
    overlay.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.EarlyStopping\n"
        "      init_args: {monitor: val/leaderboard, mode: max}\n"
        "model:\n"
        "  lr_scheduler:\n"
        "    class_path: torch.optim.lr_scheduler.ReduceLROnPlateau\n"
        "    init_args: {mode: max}\n"
    )
    args = ["fit", *_config_stack("demo.yaml"), "--config", str(overlay),
            *tiny_args(synthetic_root, tmp_path), "--data.train_splits", "[Train, Valid]",
            "--data.val_split", "null"]  # fmt: skip
    with pytest.raises(UsageError) as error:
        main(args)
    message = str(error.value)
    assert message.startswith("data.val_split is null (no validation)")
    assert "checkpoint.monitor is val/leaderboard (pass --checkpoint.save_top_k 0" in message
    assert "trainer.callbacks' EarlyStopping monitors val/leaderboard" in message
    assert "model.lr_scheduler is ReduceLROnPlateau" in message
    assert not list(tmp_path.glob("demo/version_*"))  # refused before the first epoch


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
    cli = main([*_config_stack(name), "--data.cache_dir", "null", *extra], run=False)
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


def _printed(argv: list[str], capsys) -> dict:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *argv, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_vars_baseline_recipe_values(capsys):
    config = _printed(_config_stack("vars_baseline.yaml"), capsys)
    model, data = config["model"], config["data"]
    assert (model["backbone"], model["pretrained"], model["pooling"]) == (
        "mvit_v2_s",
        "torchvision",
        "attention",
    )
    assert (data["center_frame"], data["target_fps"], data["frames_per_clip"]) == (75, 17.0, 16)
    assert model["optimizer"]["init_args"]["lr"] == 1e-4
    assert (config["trainer"]["max_epochs"], data["batch_size"]) == (60, 2)


# What each recipe set before it was an overlay on mvfoul.yaml (sota.yaml, vars_baseline.yaml:
# standalone files; small_gpu.yaml, high_performance.yaml: overlays restating mvfoul.yaml),
# copied as they were. Their cosines had a T_max kept equal to the run's epochs (less the
# warmup) by hand: now unset and filled from the run (mvcli.task.schedulers.CosineToEnd).
OLD_RECIPES = {
    "sota.yaml": {
        "seed_everything": 42,
        "trainer": {
            "accelerator": "auto",
            "devices": "auto",
            "precision": "bf16-mixed",
            "max_epochs": 40,
            "accumulate_grad_batches": 4,
            "gradient_clip_val": 1.0,
            "gradient_clip_algorithm": "norm",
            "log_every_n_steps": 20,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "sota"},
            },
        },
        "model": {
            "backbone": "swin3d_s",
            "pretrained": "torchvision",
            "pooling": "max",
            "head_dropout": 0.3,
            "loss": "plain",
            "label_smoothing": 0.1,
            "backbone_lr_ratio": 0.1,
            "optimizer": {
                "class_path": "torch.optim.AdamW",
                "init_args": {"lr": 0.0003, "weight_decay": 0.05},
            },
            "lr_scheduler": {
                "class_path": "mvcli.task.schedulers.LinearWarmup",
                "init_args": {
                    "warmup_steps": 2,
                    "scheduler": {
                        "class_path": "torch.optim.lr_scheduler.CosineAnnealingLR",
                        "init_args": {"T_max": 38},
                    },
                },
            },
        },
        "data": {
            "root": "data/mvfoul",
            "frames_per_clip": 32,
            "center_frame": 75,
            "source_fps": 25.0,
            "target_fps": 25.0,
            "img_height": 224,
            "img_width": 398,
            "cache_dir": "data/mvfoul-cache-sota",
            "num_views": 4,
            "batch_size": 4,
            "eval_batch_size": 4,
            "num_workers": 16,
            "sampler": "balanced_joint",
            "augmentation": {"preset": "moderate", "mix_prob": 0.2},
        },
    },
    "vars_baseline.yaml": {
        "seed_everything": 42,
        "trainer": {
            "accelerator": "auto",
            "devices": "auto",
            "precision": "32-true",
            "max_epochs": 60,
            "log_every_n_steps": 50,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "vars_baseline"},
            },
        },
        "model": {
            "backbone": "mvit_v2_s",
            "pretrained": "torchvision",
            "pooling": "attention",
            "head_dropout": 0.0,
            "loss": "weighted",
            "class_weighting": "inverse",
            "backbone_lr_ratio": 1.0,
            "optimizer": {
                "class_path": "torch.optim.AdamW",
                "init_args": {
                    "lr": 0.0001,
                    "betas": [0.9, 0.999],
                    "eps": 1e-07,
                    "weight_decay": 0.001,
                },
            },
            "lr_scheduler": {
                "class_path": "torch.optim.lr_scheduler.StepLR",
                "init_args": {"step_size": 3, "gamma": 0.1},
            },
            "lr_interval": "epoch",
        },
        "data": {
            "root": "data/mvfoul",
            "frames_per_clip": 16,
            "center_frame": 75,
            "source_fps": 25.0,
            "target_fps": 17.0,
            "img_height": 224,
            "img_width": 224,
            "cache_dir": "data/mvfoul-cache-vars",
            "num_views": 5,
            "batch_size": 2,
            "eval_batch_size": 2,
            "num_workers": 8,
            "augmentation": {
                "preset": "none",
                "hflip_prob": 0.5,
                "crop_prob": 1.0,
                "crop_scale": [0.8, 1.0],
                "crop_ratio": [0.9, 1.1],
                "color_prob": 1.0,
                "brightness": 0.5,
                "contrast": 0.5,
                "saturation": 0.5,
                "severity_max_strength": 1.0,
            },
        },
    },
    "high_performance.yaml": {
        "trainer": {
            "precision": "bf16-mixed",
            "max_epochs": 30,
            "gradient_clip_val": 1.0,
            "gradient_clip_algorithm": "norm",
        },
        "model": {
            "backbone_lr_ratio": 0.1,
            "loss": "plain",
            "label_smoothing": 0.1,
            "optimizer": {
                "class_path": "torch.optim.SGD",
                "init_args": {
                    "lr": 0.01,
                    "momentum": 0.9,
                    "nesterov": True,
                    "weight_decay": 0.0001,
                },
            },
            "lr_scheduler": {
                "class_path": "torch.optim.lr_scheduler.OneCycleLR",
                "init_args": {"max_lr": 0.01, "pct_start": 0.2},
            },
            "lr_interval": "step",
        },
        "data": {
            "batch_size": 32,
            "eval_batch_size": 32,
            "num_workers": 16,
            "sampler": "progressive",
            "progressive_epochs": 10,
            "progressive_target": "joint",
            "augmentation": {"preset": "moderate", "gpu": True},
        },
        "freezing": {
            "class_path": "mvcli.callbacks.freezing.AdvancedFreezing",
            "init_args": {
                "monitor": "val/leaderboard",
                "patience": 2,
                "min_delta": 0.002,
                "rollback_patience": 3,
                "warmup_epochs": 1.0,
                "probe_batches": 2,
                "gradient_momentum": 0.9,
            },
        },
    },
    "small_gpu.yaml": {
        "trainer": {
            "precision": "16-mixed",
            "accumulate_grad_batches": 8,
            "gradient_clip_val": 1.0,
            "gradient_clip_algorithm": "norm",
            "callbacks": [
                {
                    "class_path": "mvcli.callbacks.memory.MemoryCleanup",
                    "init_args": {"every_n_steps": 200},
                }
            ],
        },
        "model": {
            "backbone_lr_ratio": 0.1,
            "loss": "weighted",
            "class_weighting": "effective_number",
            "effective_beta": 0.999,
            "max_weight_ratio": 10.0,
            "label_smoothing": 0.05,
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.0003}},
            "lr_scheduler": {
                "class_path": "mvcli.task.schedulers.LinearWarmup",
                "init_args": {
                    "warmup_steps": 2,
                    "scheduler": {
                        "class_path": "torch.optim.lr_scheduler.CosineAnnealingLR",
                        "init_args": {"T_max": 28},
                    },
                },
            },
        },
        "data": {
            "frames_per_clip": 8,
            "target_fps": 12.5,
            "img_height": 112,
            "img_width": 200,
            "batch_size": 4,
            "eval_batch_size": 8,
            "num_workers": 4,
        },
        "freezing": {
            "class_path": "mvcli.callbacks.freezing.GradualFreezing",
            "init_args": {"freeze_epochs": 2, "unfreeze_every": 2, "warmup_epochs": 1.0},
        },
    },
}

# Keys the old standalone files left at their defaults that mvfoul.yaml sets.
OLD_DEFAULTS = {
    "sota.yaml": {"trainer": {"callbacks": None}},
    "vars_baseline.yaml": {
        "trainer": {"callbacks": None, "gradient_clip_val": None, "gradient_clip_algorithm": None}
    },
}


def _as_stacked(expected: dict) -> dict:
    """An old recipe as it reads now: its flat loss keys in the ``model.loss`` section, and a
    hand-kept cosine T_max CosineToEnd's unset one (checked to be what the run gives it: the
    epochs after the warmup); a cache folder relative to the working folder ``auto`` (beside
    the data: entries are keyed by preprocessing, so recipes share it safely)."""
    data = expected.get("data", {})
    if str(data.get("cache_dir", "")).startswith("data/mvfoul-cache"):
        data["cache_dir"] = "auto"
    if "model" in expected:
        expected["model"] = renamed.translate_model(expected["model"])[0]
    model = expected.get("model", {})
    scheduler = model.get("lr_scheduler", {})
    warmup = scheduler.get("init_args", {}).get("warmup_steps", 0)
    cosine = scheduler.get("init_args", {}).get("scheduler", scheduler)
    if cosine.get("class_path") == "torch.optim.lr_scheduler.CosineAnnealingLR":
        epochs = expected.get("trainer", {}).get("max_epochs", 30)  # mvfoul.yaml's
        assert cosine["init_args"].pop("T_max") == epochs - warmup
        cosine["class_path"] = "mvcli.task.schedulers.CosineToEnd"
        cosine["init_args"]["T_max"] = None
    return expected


def _holds(printed, expected, where: str = "") -> None:
    """Every key of ``expected`` has its value in ``printed`` (lists item by item)."""
    if isinstance(expected, dict):
        assert isinstance(printed, dict), where
        for key, value in expected.items():
            assert key in printed, f"{where}.{key}"
            _holds(printed[key], value, f"{where}.{key}")
    elif isinstance(expected, list) and expected and isinstance(expected[0], dict):
        assert isinstance(printed, list) and len(printed) == len(expected), where
        for i, (got, value) in enumerate(zip(printed, expected, strict=True)):
            _holds(got, value, f"{where}[{i}]")
    else:
        assert printed == expected, (where, printed, expected)


@pytest.mark.parametrize("name", sorted(OLD_RECIPES))
def test_recipes_stacked_on_mvfoul_keep_their_values(name, capsys):
    """Each recipe, stacked on mvfoul.yaml, resolves to the values it gave on its own."""
    printed = _printed(
        ["--config", str(CONFIGS / "mvfoul.yaml"), "--config", str(CONFIGS / name)], capsys
    )
    _holds(printed, _as_stacked(copy.deepcopy(OLD_RECIPES[name])))
    _holds(printed, OLD_DEFAULTS.get(name, {}))


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
