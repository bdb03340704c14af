"""``--help`` for people: plain text, mvcli's own options first, short unless asked for all.

Lightning's docstrings are reStructuredText written for its web docs (````x````,
``:class:`~a.B```, ``.. warning::``, ``>>>`` examples); help shows them as plain text.
``mvcli <subcommand> --help`` lists mvcli's groups and the most used Trainer options;
``--help-all`` lists every option.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable

import jsonargparse
from jsonargparse import ActionSubCommands, DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser

from mvcli.commandline import renamed, usage
from mvcli.utils import compat

# One line per subcommand, shown by ``mvcli --help``; others fall back to their docstring.
SUBCOMMAND_HELP = {
    "fit": "train; logs and checkpoints in runs/<name>/version_<n>/",
    "validate": "evaluate a checkpoint on data.val_split (Valid); metrics into its run",
    "test": "evaluate on Test: metrics, confusion matrices, table",
    "predict": "write predictions.json for a split or folder of clips",
    "export": "export a checkpoint: state dict, ONNX, torch.export",
    "cache": "decode every view once, ahead of training",
    "lr_find": "learning-rate range test: suggested LR and its plot",
    "score": "score predictions.json against annotations.json",
    "review": "a web page of every prediction beside its clips",
    "search": "hyper-parameter search (Optuna) over any config keys",
}
# Subcommands run outside LightningCLI (see mvcli.__main__.run), listed with the others.
STANDALONE_SUBCOMMANDS = ("score", "review", "search")
DESCRIPTION = (
    "mvcli: train, evaluate and serve multi-view, multi-task video classifiers for "
    "soccer foul recognition (SoccerNet-MVFoul)."
)
EPILOG = """examples:
  mvcli fit --config configs/demo.yaml
  mvcli test --config configs/demo.yaml --ckpt_path runs/demo/version_0/checkpoints/last.ckpt

'mvcli <subcommand> --help' lists its main options, '--help-all' every option."""
# Groups of mvcli's own classes, shown first and in this order (nested groups follow theirs).
OWN_GROUPS = ("model", "data", "freezing", "confusion", "prediction_writer")
# Trainer options the short help keeps; the rest are behind --help-all.
COMMON_TRAINER_KEYS = (
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "precision",
    "max_epochs",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "logger",
    "callbacks",
    "default_root_dir",
    "fast_dev_run",
    "limit_train_batches",
    "limit_val_batches",
    "check_val_every_n_epoch",
    "log_every_n_steps",
    "profiler",
)
USAGE = "%(prog)s [-h | --help-all] [-c CONFIG] [--print_config] [--KEY VALUE ...]"

_ROLE = re.compile(r":[a-z]+:`(~?)([^`<]+?)(?:\s*<[^>]*>)?`")
_DIRECTIVE = re.compile(r"\.\. (\w+)::")


def plain(text: str) -> str:
    """reStructuredText markup as plain text; doctest lines dropped."""
    lines = [
        line
        for line in text.splitlines()
        if not line.lstrip().startswith((">>>", "... ")) and line.strip() != "..."
    ]
    text = "\n".join(lines)
    text = _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2), text)
    text = _DIRECTIVE.sub(lambda m: m.group(1).capitalize() + ":", text)
    text = re.sub(r"``([^`]*)``", r"\1", text)
    return re.sub(r"(\w)::(\s|$)", r"\1:\2", text)


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's formatter on plain text; descriptions keep their line breaks."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return super()._split_lines(plain(text), width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in plain(text).splitlines(keepends=True))

    def _format_action_invocation(self, action: argparse.Action) -> str:
        parser = compat.formatting_parser()
        if getattr(parser, "full_help", True) or isinstance(action, ActionSubCommands):
            return super()._format_action_invocation(action)
        # Short help: no ARG:/ENV: lines (the README and --help-all give the variables).
        return argparse.HelpFormatter._format_action_invocation(self, action)


class _HelpAll(argparse.Action):
    def __init__(
        self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None
    ):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.full_help = True
        parser.print_help()
        parser.exit()


# Sections whose every option is linked from data.* (nothing to give): shown by --help-all.
LINKED_GROUPS = ("model.clip",)


class _OneLineUsage:
    """What mvcli's parsers share: its help formatter, options never abbreviated, usage
    errors in one line that name the config file being read (commandline.usage)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, *rest, **kwargs):
        args = sys.argv[1:] if args is None else list(args)
        with usage.parsing_args(args):
            return super().parse_args(args, *rest, **kwargs)

    def parse_path(self, path, *rest, **kwargs):
        with usage.reading_file(path):
            return super().parse_path(path, *rest, **kwargs)


class ArgumentParser(_OneLineUsage, LightningArgumentParser):
    """LightningCLI's parser with mvcli's help: plain text, own groups first, short form;
    options never abbreviated, errors in one line (commandline.usage)."""

    full_help = False

    # mvcli 0.1's option keys, translated before anything is validated (commandline.renamed).
    def parse_args(self, args=None, *rest, **kwargs):
        args = sys.argv[1:] if args is None else list(args)
        args, renames = renamed.translate_args(args)
        renamed.warn_renamed(renames, "the command line")
        return super().parse_args(args, *rest, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        return super().error(usage.one_line(self, message), ex)

    def parse_string(self, content: str, path="", *rest, **kwargs):
        content = renamed.translate_config_text(content, str(path or "a config string"))
        return super().parse_string(content, path, *rest, **kwargs)

    def parse_object(self, obj, *rest, **kwargs):
        if isinstance(obj, dict):
            obj, renames = renamed.translate_config(obj)
            renamed.warn_renamed(renames, "the arguments")
        return super().parse_object(obj, *rest, **kwargs)

    def add_help_all(self) -> None:
        self.add_argument(
            "--help-all", action=_HelpAll, help="Show every option (Trainer, checkpoints, ...)."
        )
        self.usage = USAGE

    def format_help(self) -> str:
        groups = self._action_groups
        names = {id(group): key for key, group in getattr(self, "groups", {}).items()}
        subcommand = getattr(self, "subcommand", None)  # its method's arguments: ckpt_path
        ordered = sorted(groups, key=lambda g: _rank(names.get(id(g)), subcommand))
        hidden: list[str] = []
        trainer = getattr(self, "groups", {}).get("trainer")
        kept_trainer_actions = trainer._group_actions if trainer is not None else None
        if not self.full_help and any(names.get(id(g)) in OWN_GROUPS for g in groups):
            shown = []
            for group in ordered:
                name = names.get(id(group))
                if group.title == "Linked arguments" or name in LINKED_GROUPS:
                    continue  # follow from data.*; --help-all shows them
                if name is None or _own(name) or group is trainer or name == subcommand:
                    shown.append(group)
                else:
                    hidden.append(name)
            ordered = shown
            if trainer is not None:
                trainer._group_actions = list(_common(trainer._group_actions))
        titles = [(group, group.title) for group in ordered]
        for group, title in titles:
            name = names.get(id(group))
            if name == subcommand and subcommand is not None:
                title = f"Arguments of {self.prog.replace(' [options]', '')}"
            elif title and name and "(--" not in title:
                title = f"{title.rstrip('.:')} (--{name}.*)"
            group.title = plain(title) if title else title
        self._action_groups = ordered
        epilog = self.epilog
        if hidden:
            self.epilog = (
                "Not shown (--help-all lists them): the other Trainer options and "
                + ", ".join(f"--{name}.*" for name in hidden)
                + "."
            )
        try:
            return super().format_help()
        finally:
            self._action_groups = groups
            self.epilog = epilog
            for group, title in titles:
                group.title = title
            if trainer is not None:
                trainer._group_actions = kept_trainer_actions


class StandaloneParser(_OneLineUsage, jsonargparse.ArgumentParser):
    """The parser of ``mvcli score``, ``mvcli review`` and ``mvcli search`` (jsonargparse's
    CLI, outside LightningCLI): mvcli's help formatter, no abbreviated options, one-line
    errors."""

    def error(self, message: str, ex: Exception | None = None):
        unknown = usage.unknown_options(self)  # else reported as a wrong positional value
        if unknown:
            message = f"unrecognized arguments: {' '.join(unknown)}"
        return super().error(usage.one_line(self, message), ex)


def _own(name: str) -> bool:
    return name.split(".")[0] in OWN_GROUPS


def _rank(name: str | None, subcommand: str | None) -> tuple[int, int]:
    if name is None or name == subcommand:
        return (0, 0)  # argparse's own groups (positionals, options) and ckpt_path & co
    root = name.split(".")[0]
    if root in OWN_GROUPS:
        return (1, OWN_GROUPS.index(root))
    return (2, 0)


def _common(actions: Iterable[argparse.Action]) -> Iterable[argparse.Action]:
    for action in actions:
        dest = action.dest.split(".", 1)[-1]
        if action.dest == "trainer" or dest.split(".")[0] in COMMON_TRAINER_KEYS:
            yield action
