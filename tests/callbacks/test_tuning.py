"""Lightning's tuner callbacks from YAML; mvcli's LearningRateFinder keeps the LR ratios."""

from __future__ import annotations

from lightning.pytorch.callbacks import BatchSizeFinder

from mvcli.callbacks.tuning import LearningRateFinder
from mvcli.cli import main
from tests.conftest import CONF, CONFIGS, tiny_args


def _common(root, runs) -> list[str]:
    return ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(root, runs),
            "--trainer.enable_progress_bar", "false"]  # fmt: skip


def test_tuner_callbacks_update_the_optimizer_lr_and_the_batch_size(synthetic_root, tmp_path):
    args = [*_common(synthetic_root, tmp_path), "--config", str(CONF / "tuners.yaml"),
            "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "1",
            "--model.backbone_lr_ratio", "0.5"]  # fmt: skip
    cli = main(["fit", *args])
    finder = next(c for c in cli.trainer.callbacks if isinstance(c, LearningRateFinder))
    sizes = next(c for c in cli.trainer.callbacks if isinstance(c, BatchSizeFinder))
    # From init_val 2 (one trial), not the config's 4: the data module's batch size was set.
    assert cli.datamodule.hparams.batch_size == sizes.optimal_batch_size == 2
    suggestion = finder.optimal_lr.suggestion()
    assert suggestion is not None and cli.model.lr == suggestion
    groups = {g["name"]: g["initial_lr"] for g in cli.trainer.optimizers[0].param_groups}
    # heads at the suggestion, each backbone stage's group (one per stage) at half of it
    stages = {cli.model.stage_group(s) for s in cli.model.backbone_stage_parameters()}
    assert stages == {"backbone.stem", "backbone.layer1", "backbone.layer2"}
    assert groups == {"heads": suggestion} | dict.fromkeys(stages, suggestion * 0.5)
