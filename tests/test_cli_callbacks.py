"""Every callback of a run has a place in its config (mvcli/cli.py's callback sections and
trainer.callbacks): seen in config.yaml and --print_config, turned off or replaced from YAML."""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.callbacks import (
    LearningRateMonitor,
    ModelSummary,
    ProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.cli import SaveConfigCallback

from mvcli.callbacks.augmentation_preview import AugmentationPreview
from mvcli.callbacks.console import ModelSummary as MVModelSummary
from mvcli.callbacks.console import ProgressBar as MVProgressBar
from mvcli.callbacks.history import TrainingHistory
from mvcli.callbacks.throughput import Throughput
from mvcli.cli import CALLBACK_SECTIONS, main
from tests.conftest import CONFIGS, tiny_args


def _class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _built(tmp_path: Path, root: Path, *extra: str):
    """The demo's CLI with its trainer built, not run (run=False: no subcommand)."""
    args = ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(root, tmp_path), *extra]
    return main(args, run=False)


def test_every_callback_of_a_demo_fit_is_in_its_config_yaml(synthetic_root, tmp_path):
    args = ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, tmp_path),
            "--trainer.enable_model_summary", "true", "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]  # fmt: skip
    fit = main(["fit", *args])
    saved = yaml.safe_load((Path(fit.trainer.log_dir) / "config.yaml").read_text())
    built = fit.config_init["fit"]
    places: Counter[type] = Counter()
    for key, value in saved.items():
        if key in CALLBACK_SECTIONS:  # the default (null: off unless turned on)
            default = CALLBACK_SECTIONS[key][1]
            assert (value if default is None else value["class_path"]) == default, key
        if isinstance(value, dict) and "class_path" in value:
            places[_class(value["class_path"])] += 1
        elif hasattr(built.get(key), "on_fit_start"):  # a section of one class (checkpoint)
            places[type(built[key])] += 1
    for entry in saved["trainer"].get("callbacks") or []:
        places[_class(entry["class_path"])] += 1
    # SaveConfig writes config.yaml itself (LightningCLI's save_config_callback).
    acting = [c for c in fit.trainer.callbacks if not isinstance(c, SaveConfigCallback)]
    found = Counter(type(c) for c in acting)
    assert not {cls: n for cls, n in found.items() if n > places[cls]}, (found, places)
    # The defaults of every run are there, by their sections.
    for cls in (Throughput, LearningRateMonitor, MVProgressBar, MVModelSummary,
                TrainingHistory, AugmentationPreview):  # fmt: skip
        assert cls in found
    assert len(acting) == 19, found  # MetricsWriter included


def test_a_section_is_turned_off_or_replaced_from_yaml(synthetic_root, tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        "throughput: null\n"
        "augmentation_preview: null\n"
        "progress_bar:\n"
        "  class_path: lightning.pytorch.callbacks.TQDMProgressBar\n"
        "  init_args:\n"
        "    refresh_rate: 7\n"
    )
    cli = _built(tmp_path, synthetic_root, "--config", str(overlay), "--history", "null")
    kinds = {type(c) for c in cli.trainer.callbacks}
    assert not kinds & {Throughput, AugmentationPreview, TrainingHistory}
    bar = cli.trainer.progress_bar_callback
    assert type(bar) is TQDMProgressBar and bar.refresh_rate == 7
    assert [type(c) for c in cli.trainer.callbacks if isinstance(c, ProgressBar)] == [type(bar)]


def test_default_sections_keep_their_conditions(synthetic_root, tmp_path):
    cli = _built(tmp_path, synthetic_root, "--trainer.logger", "false",
                 "--trainer.enable_progress_bar", "false")  # fmt: skip
    kinds = [type(c) for c in cli.trainer.callbacks]
    assert LearningRateMonitor not in kinds and cli.trainer.progress_bar_callback is None
    assert not [k for k in kinds if issubclass(k, ModelSummary)]  # tiny_args: summary off
    own = tmp_path / "own.yaml"
    own.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.TQDMProgressBar\n"
    )
    cli = _built(tmp_path, synthetic_root, "--config", str(own))
    assert [type(c) for c in cli.trainer.callbacks if isinstance(c, ProgressBar)] == [
        TQDMProgressBar
    ]
    assert LearningRateMonitor in [type(c) for c in cli.trainer.callbacks]


def test_print_config_shows_the_callback_sections(synthetic_root, tmp_path, capsys):
    def printed(*extra: str) -> str:
        args = ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, tmp_path)]
        with pytest.raises(SystemExit):
            main(["fit", *args, *extra, "--print_config"])
        return capsys.readouterr().out

    config = yaml.safe_load(printed())
    for key, (_, default, _) in CALLBACK_SECTIONS.items():
        assert (config[key] if default is None else config[key]["class_path"]) == default, key
    assert config["ema"] is None  # off unless asked for; on, every option shows
    on = yaml.safe_load(printed("--config", str(CONFIGS / "ema.yaml"), "--ema.decay", "0.99"))
    assert on["ema"]["class_path"] == "mvcli.callbacks.ema.EMAWeights"
    assert on["ema"]["init_args"] == {"decay": 0.99, "start_step": 200, "every_n_steps": 1,
                                      "use_buffers": True, "device": None}  # fmt: skip
    assert config["augmentation_preview"]["init_args"] == {"max_actions": 8}
    off = printed("--graceful_stop", "null")
    assert yaml.safe_load(off)["graceful_stop"] is None
    config_file = tmp_path / "printed.yaml"
    config_file.write_text(off)
    assert printed("--config", str(config_file)) == off  # a switched-off section reads back
