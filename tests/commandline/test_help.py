"""`--help` as a new user reads it: the app, every subcommand, plain text, short by default."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from mvcli.cli import MVCLI, main
from mvcli.commandline.help import plain
from tests.conftest import REPO

RST = re.compile(r"``|:(class|func|meth|paramref|attr):`|\.\. \w+::|>>>")


def _help(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*args])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_main_help_names_the_app_and_every_subcommand(capsys):
    out = _help(capsys, "--help")
    assert out.startswith("usage: mvcli ") and "__main__.py" not in out
    assert "SoccerNet-MVFoul" in out and "Lightning Trainer command line tool" not in out
    for name in [*MVCLI.subcommands(), "score"]:
        line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
        assert len(line.split(None, 1)[1]) > 10, name  # a one-line purpose
    assert len(re.findall(r"^  mvcli \w+ --config", out, re.M)) >= 2  # two examples
    titles = [line for line in out.splitlines() if re.match(r"^\S.*:$", line)]
    assert len(titles) == len(set(titles)), titles  # "Arguments of mvcli:" was there twice


def test_subcommand_help_is_short_plain_and_ours_first(capsys):
    short = _help(capsys, "fit", "--help")
    assert short.startswith("usage: mvcli [options] fit")
    assert not RST.search(short), RST.search(short)
    titles = [line for line in short.splitlines() if re.match(r"^\S.*:$", line)]
    assert len(titles) == len(set(titles))  # no duplicated group title
    # Top-level sections in order (model.loss is a group of its own, within the model's).
    order = list(dict.fromkeys(t.split("(--")[-1].split(".")[0] for t in titles if "(--" in t))
    assert order[:3] == ["model", "data", "freezing"] and order.index("trainer") > 3
    assert "--trainer.max_epochs" in short and "--trainer.detect_anomaly" not in short
    assert "--checkpoint.monitor" not in short and "--help-all" in short
    full = _help(capsys, "fit", "--help-all")
    assert not RST.search(full), RST.search(full)
    assert "--trainer.detect_anomaly" in full and "--checkpoint.monitor" in full
    titles = [line for line in full.splitlines() if re.match(r"^\S.*:$", line)]
    assert len(titles) == len(set(titles))
    assert not [t for t in titles if t.rstrip(":").endswith(("the", "to", "above"))]  # cut off
    assert len(short.splitlines()) < 0.6 * len(full.splitlines())


def test_plain_turns_rst_into_text():
    text = "Use ``x``, :class:`~a.b.Trainer`, :func:`torch.no_grad`.\n.. warning:: mind\n>>> code()"
    assert plain(text) == "Use x, Trainer, torch.no_grad.\nWarning: mind"


def test_synthetic_usage_names_the_command_not_the_file():
    # mvcli's own prog is set in main() (test_main_help...); this one is a separate script.
    result = subprocess.run(
        [sys.executable, "-m", "mvcli.data.synthetic", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0
    assert result.stdout.startswith("usage: python -m mvcli.data.synthetic")
    assert "synthetic.py" not in result.stdout


def test_score_help_is_plain(capsys):
    from mvcli.__main__ import run

    with pytest.raises(SystemExit):
        run(["score", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: mvcli score") and not RST.search(out)


def test_main_usage_line_lists_every_subcommand(capsys):
    # The complaint: the usage line read {fit,validate,test,predict,export,cache,lr_find}.
    out = _help(capsys, "--help")
    usage = " ".join(out.split("\n\n")[0].split())
    assert "{fit,validate,test,predict,export,cache,lr_find,score,review,search}" in usage


def test_pyproject_license_is_a_string():
    # `pip install` warned "project.license as a TOML table is deprecated".
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert isinstance(project["license"], str) and project["license"]
