"""Documented examples run as written: the environment-variable lines and the seed-flag table
(sections of README.md or docs/*.md, found by title wherever they live)."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from mvcli.cli import main
from tests.conftest import REPO, tiny_args
from tests.docs_pages import section

ENV_LINES = re.findall(
    r"^((?:MVCLI_\w+=\S+ )+)mvcli (.*?)\s+# (\S+):", section("Environment variables"), re.M
)


def test_docs_have_env_examples():
    assert len(ENV_LINES) >= 3


@pytest.mark.parametrize(("env", "command", "expected"), ENV_LINES)
def test_docs_env_example(env, command, expected, monkeypatch, tmp_path, synthetic_root, capsys):
    # The docs' paths are relative to the repository: its configs, seen from the temporary
    # working directory (the conftest's), where the commands run.
    (tmp_path / "configs").symlink_to(REPO / "configs")
    for assignment in env.split():
        name, value = assignment.split("=", 1)
        monkeypatch.setenv(name, value)
    name = re.match(r"MVCLI_FIT__(\w+)", env.split()[-1].split("=")[0]).group(1)
    key = name.lower().replace("__", ".")
    argv = shlex.split(command)
    extra = [a for a in tiny_args(synthetic_root, tmp_path)]
    if "--data.batch_size" in argv:  # tiny_args sets one too; keep the docs' last
        i = extra.index("--data.batch_size")
        del extra[i : i + 2]
    if key == "data.batch_size" and "--data.batch_size" not in argv:
        i = extra.index("--data.batch_size")
        del extra[i : i + 2]
    value = _printed_config([argv[0], *extra, *argv[1:]], capsys)
    for part in key.split("."):
        value = value[part]
    assert str(value) == expected


def _printed_config(argv: list[str], capsys) -> dict:
    """The config a command line resolves to, as --print_config shows it (nothing runs)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--print_config"])
    assert exit_info.value.code == 0, capsys.readouterr().err[-2000:]
    return yaml.safe_load(capsys.readouterr().out)


def _table_snippets() -> list[str]:
    table = section("Flags of the seed trainer").splitlines()
    rows = [line for line in table if line.startswith("| ") and "| seed trainer |" not in line]
    snippets = []
    for row in rows:
        mvcli_cell = row.split(" | ", 1)[1]
        code = re.findall(r"`([^`]+)`", mvcli_cell)
        snippets += [s for s in code if s.startswith(("--", "mvcli "))]
    return snippets


def test_seed_flag_table_names_every_flag_of_the_guide():
    table = section("Flags of the seed trainer")
    for flag in [
        "--batch_size", "--mixed_precision", "--accumulate_grad_batches", "--num_nodes",
        "--devices_per_node", "--enable_profiler", "--track_grad_norm", "--log_gpu_memory",
        "--auto_lr_find", "--auto_scale_batch_size", "--resume", "--test_run", "--test_batches",
        "freezing", "loss", "sampling", "augmentation",
    ]:  # fmt: skip
        assert re.search(rf"^\| [^|]*{re.escape(flag)}", table, re.M), flag
    assert len(_table_snippets()) >= 25


def test_every_mvcli_key_of_the_seed_flag_table_parses(synthetic_root, tmp_path, capsys):
    (tmp_path / "last.ckpt").write_bytes(b"")
    # snippets of one subcommand with distinct keys share one parse
    batches: list[tuple[str, list[list[str]]]] = []
    for snippet in _table_snippets():
        argv = shlex.split(snippet.replace("run/last.ckpt", str(tmp_path / "last.ckpt")))
        subcommand, argv = (argv[1], argv[2:]) if argv[0] == "mvcli" else ("fit", argv)
        assert argv and len(argv) % 2 == 0 and all(a.startswith("--") for a in argv[::2]), snippet
        batch = next(
            (
                b
                for sub, b in batches
                if sub == subcommand and not any(_overlap(argv[0], o[0]) for o in b)
            ),
            None,
        )
        if batch is None:
            batches.append((subcommand, batch := []))
        batch.append(argv)
    assert len(batches) <= 5
    for subcommand, batch in batches:
        base = [subcommand, *tiny_args(synthetic_root, tmp_path)]
        config = _printed_config([*base, *(arg for argv in batch for arg in argv)], capsys)
        for argv in batch:  # every key of the snippet holds the value it gave
            for key, given in zip(argv[::2], argv[1::2], strict=True):
                value = _lookup(config, key)
                assert _same(given, value), (argv, key, value)


def _lookup(config: dict, key: str):
    """The value of a command-line key in a printed config (lists: their last item, as
    ``callbacks+`` appends; a class's arguments: under its ``init_args``)."""
    value = config
    for part in key.lstrip("-").rstrip("+").split("."):
        if isinstance(value, list):
            value = value[-1]
        if isinstance(value, dict) and part not in value and "init_args" in value:
            value = value["init_args"]
        value = value[part]
    return value


def _overlap(key: str, other: str) -> bool:
    key, other = key.rstrip("+") + ".", other.rstrip("+") + "."
    return key.startswith(other) or other.startswith(key)


def _same(given: str, value) -> bool:
    """The value a --print_config shows for what the command line gave."""
    if isinstance(value, list):  # callbacks+: appended last
        value = value[-1]
    if isinstance(value, dict):
        value = value["class_path"]
    try:
        return float(given) == float(value)
    except (TypeError, ValueError):
        return str(value) == given or str(value).endswith("." + given.rsplit(".", 1)[-1])


def _commands_block() -> list[list[str]]:
    """The README's Commands block, one argv per line (comments dropped)."""
    block = re.search(r"```bash\n(.*?)```", section("Commands"), re.S).group(1)
    return [shlex.split(line.split("  #")[0]) for line in block.splitlines() if line.strip()]


def test_readme_says_how_to_reach_the_mvcli_command():
    # The complaint: `make demo && mvcli --help` -> "bash: mvcli: command not found"; the
    # README never said that the command lives in the virtual environment make made.
    text = section("Commands")
    venv = re.search(r"^VENV \?= (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    assert f"source {venv}/bin/activate" in text and f"{venv}/bin/mvcli" in text
    assert text.index("activate") < text.index("```bash")  # before the first command
    assert 'mvcli = "mvcli.__main__:run"' in (REPO / "pyproject.toml").read_text()


def test_readme_commands_are_real_subcommands(capsys):
    from mvcli.__main__ import run

    commands = _commands_block()
    assert len(commands) >= 8 and all(argv[0] == "mvcli" for argv in commands)
    for argv in commands:
        with pytest.raises(SystemExit) as exit_info:
            run([argv[1], "--help"])
        assert exit_info.value.code == 0, argv
        usage = capsys.readouterr().out.splitlines()[0]
        assert usage.startswith("usage: mvcli ") and f" {argv[1]}" in usage, (argv, usage)


def test_the_installed_console_script_answers_help_and_version(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import mvcli

    # The environment's own `mvcli` (what `source .venv/bin/activate` puts on PATH), else
    # `python -m mvcli`, the same entry point.
    script = Path(sys.executable).parent / "mvcli"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "mvcli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args, expected in ((["--help"], "usage: mvcli"), (["--version"], mvcli.__version__)):
        result = subprocess.run(
            [*command, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert expected in result.stdout, result.stdout[:500]
