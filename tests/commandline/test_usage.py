"""Usage errors as people meet them (through the console entry point): one line naming the
option, or the config file and key, with the closest valid keys and the expected type."""

from __future__ import annotations

import pytest

from mvcli.__main__ import run
from mvcli.commandline.usage import did_you_mean
from tests.conftest import CONFIGS, tiny_args


def _error(capsys, argv: list[str]) -> str:
    """The `error:` line of a refused command line (exit 2); the run never starts."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Does not validate" not in err and "Subtypes" not in err, err
    return lines[0][len("error: ") :]


def _fit(synthetic_root, tmp_path, *extra: str) -> list[str]:
    return ["fit", "--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, tmp_path),
            *extra]  # fmt: skip


def test_an_abbreviated_option_is_refused_with_the_full_name(synthetic_root, tmp_path, capsys):
    # The complaint: --trainer.max_epoch 1 was silently taken as --trainer.max_epochs.
    line = _error(capsys, _fit(synthetic_root, tmp_path, "--trainer.max_epoch", "1"))
    assert line.startswith("unrecognized arguments: --trainer.max_epoch 1")
    assert "(did you mean --trainer.max_epochs" in line


def test_an_unknown_option_suggests_the_closest(synthetic_root, tmp_path, capsys):
    # The complaint: --data.batchsize 4 -> "unrecognized arguments" with no hint.
    line = _error(capsys, _fit(synthetic_root, tmp_path, "--data.batchsize", "4"))
    assert line.startswith(
        "unrecognized arguments: --data.batchsize 4 (did you mean --data.batch_size"
    )


def test_a_wrong_type_is_one_line_with_the_expected_type(synthetic_root, tmp_path, capsys):
    # The complaint: max_epochs "2 epochs" printed a 7-line Union dump.
    line = _error(capsys, _fit(synthetic_root, tmp_path, "--trainer.max_epochs", "2 epochs"))
    assert line == "--trainer.max_epochs: expected int or null, got '2 epochs'"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("data:\n  batchsize: 4\n",
         "{file}: data.batchsize is not an option of mvcli fit (did you mean data.batch_size"),
        ("data:\n  batch_size: eight\n", "{file}: data.batch_size: expected int > 0, got 'eight'"),
        ('trainer:\n  max_epochs: "2 epochs"\n',
         "{file}: trainer.max_epochs: expected int or null, got '2 epochs'"),
    ],
)  # fmt: skip
def test_a_config_file_error_names_the_file_and_key(
    synthetic_root, tmp_path, capsys, content, expected
):
    # The complaint: `batchsize:` or `batch_size: eight` in a config file gave an error that
    # did not name the file.
    path = tmp_path / "mine.yaml"
    path.write_text(content)
    line = _error(capsys, _fit(synthetic_root, tmp_path, "--config", str(path)))
    assert line.startswith(expected.format(file=path.name)) or line.startswith(
        expected.format(file=path)
    ), line


def test_subcommand_parsers_take_no_abbreviation(capsys):
    line = _error(capsys, ["test", "--ckpt_pat", "x.ckpt"])
    assert "unrecognized arguments: --ckpt_pat" in line and "--ckpt_path" in line


def test_did_you_mean():
    assert did_you_mean("--data.batchsize", ["--data.batch_size", "--model.backbone"]) == (
        " (did you mean --data.batch_size?)"
    )
    assert did_you_mean("--zzz", ["--data.batch_size"]) == ""


def test_search_and_score_take_no_abbreviation_either(capsys):
    line = _error(
        capsys, ["search", "--config", str(CONFIGS / "search/demo.yaml"), "--n_trial", "2"]
    )
    assert line == "unrecognized arguments: --n_trial (did you mean --n_trials?)"
    line = _error(
        capsys, ["search", "--config", str(CONFIGS / "search/demo.yaml"), "--n_trials", "two"]
    )
    assert line == "--n_trials: expected int or null, got 'two'"


WARMUP = ["--model.lr_scheduler", "mvcli.task.schedulers.LinearWarmup"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([*WARMUP, "--model.lr_scheduler.init_args.warmup_steps", "-1"],
         "--model.lr_scheduler.warmup_steps: expected int >= 0 (v>=0), got '-1' "
         "(mvcli.task.schedulers.LinearWarmup)"),
        (["--trainer.callbacks+", "lightning.pytorch.callbacks.EarlyStopping",
          "--trainer.callbacks.patience", "minus"],
         "--trainer.callbacks.patience: expected int, got 'minus' "
         "(lightning.pytorch.callbacks.EarlyStopping)"),
    ],
)  # fmt: skip
def test_an_argument_of_a_class_path_component_is_one_line(
    synthetic_root, tmp_path, capsys, extra, expected
):
    # A component's (class_path) argument: its key, the expected type and the class named,
    # not jsonargparse's report of every Union subtype.
    assert _error(capsys, _fit(synthetic_root, tmp_path, *extra)) == expected


def test_a_component_argument_in_a_config_file_names_the_file(synthetic_root, tmp_path, capsys):
    bad = tmp_path / "bad_scheduler.yaml"
    bad.write_text(
        "model:\n  lr_scheduler:\n    class_path: mvcli.task.schedulers.LinearWarmup\n"
        "    init_args:\n      warmup_steps: -3\n"
    )
    line = _error(capsys, _fit(synthetic_root, tmp_path, "--config", str(bad)))
    assert line == (
        f"{bad}: model.lr_scheduler.warmup_steps: expected int >= 0 (v>=0), got '-3' "
        "(mvcli.task.schedulers.LinearWarmup)"
    )
