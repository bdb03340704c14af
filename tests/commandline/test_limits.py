"""Argument limits are types: refused while parsing (exit 2, naming the key and the limit,
before any data is read) and shown in --help."""

from __future__ import annotations

import pytest

from mvcli.cli import main
from tests.conftest import CONFIGS, tiny_args

_PRUNING = ["--config", str(CONFIGS / "pruning.yaml")]
_MEMORY = ["--trainer.callbacks+=mvcli.callbacks.memory.MemoryCleanup"]
_GRAD_NORMS = ["--trainer.callbacks+=mvcli.callbacks.grad_norms.GradientNorms"]

CASES = [
    # (extra arguments, refused key, the limit jsonargparse names)
    (["--data.batch_size", "0"], "data.batch_size", "v>0"),
    (["--data.num_workers", "-1"], "data.num_workers", "v>=0"),
    (["--data.target_fps", "0"], "data.target_fps", "v>0"),
    (["--data.progressive_epochs", "-1"], "data.progressive_epochs", "v>=0"),
    (["--model.head_dropout", "1.0"], "model.head_dropout", "v<1.0"),
    (["--model.loss.effective_beta", "1"], "model.loss.effective_beta", "v<1.0"),
    (["--model.loss.max_weight_ratio", "0.5"], "model.loss.max_weight_ratio", "v>=1.0"),
    (["--model.backbone_lr", "-0.1"], "model.backbone_lr", "v>=0"),
    (["--distributed.timeout", "0"], "distributed.timeout", "v>0"),
    (["--distributed.reference_batch", "0"], "distributed.reference_batch", "v>0"),
    (["--confusion.top_pairs", "-1"], "confusion.top_pairs", "v>=0"),
    (["--nonfinite.max_steps", "-2"], "nonfinite.max_steps", "v>=-1"),
    (["--periodic_checkpoint.every_n_epochs", "-1"], "periodic_checkpoint.every_n_epochs", "v>=0"),
    ([*_MEMORY, "--trainer.callbacks.every_n_steps", "0"], "every_n_steps", "v>0"),
    ([*_GRAD_NORMS, "--trainer.callbacks.every_n_steps", "0"], "every_n_steps", "v>0"),
    ([*_PRUNING, "--trainer.callbacks.target_sparsity", "1.0"], "target_sparsity", "v<1.0"),
]


@pytest.mark.parametrize(("extra", "key", "limit"), CASES, ids=[c[1] for c in CASES])
def test_out_of_limit_values_are_refused_while_parsing(
    extra, key, limit, tmp_path, capsys, synthetic_root
):
    args = ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, tmp_path)]
    # A root that does not exist: the parser must refuse the value before any data is read.
    args += ["--data.root", str(tmp_path / "absent"), *extra]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert key in err and limit in err and "Traceback" not in err, err
    if "." in key:  # a section's option: one line, naming the key and the limit
        line = err.strip().splitlines()[-1]
        assert line.startswith("error: ") and f"{key}: expected " in line and limit in line, err


def test_limits_are_shown_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help-all"])
    out = " ".join(capsys.readouterr().out.split())  # as if unwrapped
    for key, shown in [
        ("data.batch_size", "PositiveInt"),
        ("model.head_dropout", "UnitIntervalClosedOpen"),
        ("nonfinite.max_steps", "StepLimit"),
        ("periodic_checkpoint.every_n_epochs", "NonNegativeInt"),
    ]:
        assert f"--{key} " in out and f"(type: {shown}," in out.split(f"--{key} ", 1)[1][:400]


def test_values_within_limits_reach_the_classes_as_plain_numbers(tmp_path, synthetic_root):
    args = ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, tmp_path)]
    cli = main([*args, "--model.head_dropout", "0.5", "--data.progressive_epochs", "0"], run=False)
    assert type(cli.model.hparams.head_dropout) is float and cli.model.hparams.head_dropout == 0.5
    assert type(cli.datamodule.hparams.progressive_epochs) is int
