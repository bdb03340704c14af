"""One error policy: usage errors exit 2, data errors exit 1, one paragraph, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mvcli.__main__ import run
from mvcli.utils.errors import report
from tests.conftest import CONFIGS, REPO, tiny_args
from tests.utils.test_checkpoints import bad_checkpoints


def _fail(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        run(args)
    err = capsys.readouterr().err
    return exit_info.value.code, err


def _assert_one_paragraph(err: str) -> None:
    """One ``mvcli:`` line, last, and no traceback (Lightning's INFO lines may come first)."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("mvcli: "), err
    assert sum(line.startswith("mvcli: ") for line in lines) == 1, err


@pytest.fixture
def base(synthetic_root, tmp_path) -> list[str]:
    return ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, tmp_path)]


def test_missing_data_root_is_a_usage_error(base, ckpt, capsys):
    code, err = _fail(["test", *base, "--ckpt_path", str(ckpt), "--data.root", "null"], capsys)
    assert code == 2 and "--data.root" in err
    _assert_one_paragraph(err)


def test_wrong_dataset_folder_is_a_data_error(base, ckpt, tmp_path, capsys):
    args = ["test", *base, "--ckpt_path", str(ckpt), "--data.root", str(tmp_path / "nowhere")]
    code, err = _fail(args, capsys)
    assert code == 1 and "nowhere/Test/annotations.json not found" in err
    _assert_one_paragraph(err)


@pytest.mark.parametrize("subcommand", ["predict", "validate", "test"])
def test_no_checkpoint_is_refused(subcommand, base, capsys):
    code, err = _fail([subcommand, *base], capsys)
    assert code == 2 and "needs --ckpt_path" in err and "--allow_untrained" in err
    _assert_one_paragraph(err)


def test_untrained_on_request(base, tmp_path):
    out = tmp_path / "p.json"
    run(["predict", *base, "--allow_untrained", "true",
         "--prediction_writer.output_path", str(out)])  # fmt: skip
    assert out.is_file()


def test_bad_checkpoint_is_reported_before_data_is_read(base, ckpt, tmp_path, capsys):
    path, expected = bad_checkpoints(ckpt, tmp_path)["truncated"]
    # data.root does not exist: the checkpoint must be reported first.
    args = ["validate", *base, "--ckpt_path", str(path), "--data.root", str(tmp_path / "none")]
    code, err = _fail(args, capsys)
    assert code == 1 and expected in err and str(path) in err, err
    _assert_one_paragraph(err)


def test_existing_output_file_is_a_usage_error(base, ckpt, tmp_path, capsys):
    out = tmp_path / "p.json"
    out.write_text("{}")
    args = ["predict", *base, "--ckpt_path", str(ckpt), "--prediction_writer.output_path", str(out)]
    code, err = _fail(args, capsys)
    assert code == 2 and "--prediction_writer.overwrite" in err and out.read_text() == "{}"
    _assert_one_paragraph(err)


def test_missing_pretrained_weights(base, tmp_path, capsys):
    args = ["predict", *base, "--model.pretrained", str(tmp_path / "w.pth")]
    code, err = _fail(args, capsys)
    assert code in (1, 2) and "w.pth" in err
    _assert_one_paragraph(err)


def test_console_script_exit_code_and_one_line(tmp_path):
    """The real process: exit code 1 and the message, no traceback."""
    args = [sys.executable, "-m", "mvcli", "validate", "--ckpt_path", str(tmp_path / "x.ckpt")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MVCLI_DEBUG", None)
    quiet = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert quiet.returncode == 1
    assert "Traceback" not in quiet.stderr and "x.ckpt not found" in quiet.stderr


def test_mvcli_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MVCLI_DEBUG", "1")
    code, err = _fail(["validate", "--ckpt_path", str(tmp_path / "x.ckpt")], capsys)
    assert code == 1 and "Traceback" in err and "x.ckpt not found" in err


def test_out_of_memory_names_the_settings_to_change(capsys):
    err = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
    assert report(err) == 1
    line = capsys.readouterr().err
    assert line.startswith("mvcli: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)")
    assert "data.batch_size" in line and "--ckpt_path last" in line
    assert "more detail" not in line and "OutOfMemoryError:" not in line
