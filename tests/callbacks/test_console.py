"""What every run prints: the progress bar's metrics and the model summary."""

from __future__ import annotations

from lightning.pytorch.utilities.model_summary import get_human_readable_count

from mvcli.cli import main
from tests.conftest import CONFIGS, tiny_args


def test_fit_progress_bar_has_no_version(trained):
    _, fit = trained
    bar = fit.trainer.progress_bar_callback
    assert "v_num" not in bar.get_metrics(fit.trainer, fit.model)


def test_model_summary_has_no_flops_and_counts_frozen_parameters(synthetic_root, tmp_path, capsys):
    """Lightning's summary shows a FLOPs column and total, all 0 for mvcli's modules (no
    ``example_input_array``): ours leaves them out and says how many parameters are frozen."""
    args = ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, tmp_path),
            "--trainer.enable_model_summary", "true", "--trainer.fast_dev_run", "true",
            "--trainer.enable_progress_bar", "false"]  # fmt: skip
    capsys.readouterr()
    cli = main(["fit", *args])
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    parameters = list(cli.model.parameters())
    total = sum(p.numel() for p in parameters)
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    assert "FLOPs" not in out
    assert "network" in out and "Params" in out  # the layer table
    counts = {"Trainable params": trainable, "Frozen": total - trainable, "Total": total}
    line = " ".join(f"{name}: {get_human_readable_count(n).strip()}" for name, n in counts.items())
    assert f"{line} Size:" in out
