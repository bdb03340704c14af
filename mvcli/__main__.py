"""The ``mvcli`` console command and ``python -m mvcli``: every subcommand under one error policy.

LightningCLI's subcommands go through :func:`mvcli.cli.main`; ``score``, ``review`` and
``search`` are plain functions (jsonargparse's ``CLI``) dispatched here, so neither imports
the other.
"""

from __future__ import annotations

import sys

from jsonargparse import CLI

from mvcli.cli import main
from mvcli.commandline.help import StandaloneParser
from mvcli.commandline.quiet import quiet_third_party
from mvcli.deploy.scoring import score_command
from mvcli.utils.errors import report

# score, review and search parse as the other subcommands do: mvcli's help, no abbreviated options.
_PARSER = {"parser_class": StandaloneParser}


def run(argv: list[str] | None = None) -> None:
    """Console script: :func:`main`, ``mvcli score``, ``mvcli review`` and ``mvcli search``,
    under one error policy.

    Usage errors (arguments, options) exit 2, data and runtime errors exit 1, each as one
    ``mvcli: ...`` paragraph naming the file, field or argument; ``MVCLI_DEBUG=1`` adds the
    traceback. Argument parsing errors are jsonargparse's own (exit 2, with the usage line).
    """
    quiet_third_party()
    command = sys.argv[1:] if argv is None else argv
    try:
        if command[:1] == ["score"]:
            CLI(score_command, args=command[1:], prog="mvcli score", **_PARSER)
            return
        if command[:1] == ["review"]:
            from mvcli.deploy.review import review_command

            CLI(review_command, args=command[1:], prog="mvcli review", **_PARSER)
            return
        if command[:1] == ["search"]:
            from mvcli.tools.search import search  # Optuna is an optional extra

            CLI(search, args=command[1:], prog="mvcli search", **_PARSER)
            return
        main(argv)  # None from the console: LightningCLI reads sys.argv itself
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001 - the one place every error is reported
        sys.exit(report(err))
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Destroy the DDP process group before the interpreter exits.

    Lightning leaves it to the process; left to interpreter shutdown, gloo's threads were
    torn down while still joinable, so a rank whose work had finished could abort (SIGABRT)
    and make torchrun report the whole run as failed.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    run()
