"""``python -m mvcli`` is the console command, its own subcommands included."""

from __future__ import annotations

import runpy
import sys

import pytest


def test_python_m_mvcli_runs_the_console_command(monkeypatch, capsys):
    # `score` is handled by the console command (mvcli.__main__.run), not by LightningCLI.
    monkeypatch.setattr(sys, "argv", ["mvcli", "score", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("mvcli", run_name="__main__")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: mvcli score")
