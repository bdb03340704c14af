"""Every use of a private Lightning / torch / torchmetrics / jsonargparse API in mvcli, in one
place, each with its reason (``tests/utils/test_compat.py`` fails on one anywhere else).

pyproject.toml bounds ``lightning`` and ``torchmetrics`` to the minor versions this was checked
against; when a bound moves, check each function here against the new release first.

What cannot move here, because it is a method mvcli overrides or a formatter's internals:

- ``MVCLI._add_subcommands`` (mvcli/cli.py): the one place LightningCLI builds the
  subcommand listing; mvcli rewrites its help lines and lists ``score``/``search`` (which
  run outside LightningCLI). No public hook exists (LightningCLI.subcommands() gives names
  only, its help is each Trainer method's docstring).
- ``MVCLI._prepare_subcommand_parser`` (mvcli/cli.py): the one place each subcommand's
  parser is built; mvcli adds ``--help-all``, group titles, ``--allow_untrained`` and
  ``--output_dir`` to the eval subcommands. ``add_arguments_to_parser`` is called for the
  shared arguments only, without the subcommand's name.
- ``MVCLI._parse_ckpt_path`` (mvcli/cli.py): LightningCLI's step that reads a checkpoint's
  hyper-parameters after parsing; mvcli replaces it so a checkpoint's model and
  preprocessing settings become defaults (explicit options still win) and resolves
  ``--ckpt_path last``. There is no public hook between parsing and instantiation that
  runs before ``before_instantiate_classes`` for every subcommand with the parser at hand.
- ``MVCLI._instantiate_trainer`` (mvcli/cli.py): where LightningCLI appends the callback
  sections' instances to ``trainer.callbacks``; mvcli leaves out the sections set to null
  (or that cannot act: the LR monitor without a logger) there, since the public
  ``instantiate_trainer`` hands it every section's value, None included, with no filter.
- mvcli/commandline/help.py: argparse's ``HelpFormatter._split_lines`` / ``_fill_text`` /
  ``_format_action_invocation`` overrides and ``ArgumentParser._action_groups`` /
  ``_ArgumentGroup._group_actions``: argparse exposes custom help only through these
  (its documented ``formatter_class`` mechanism subclasses ``HelpFormatter``, whose every
  method is underscored); the standard library keeps them stable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
from jsonargparse._common import parent_parser
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torchmetrics import Metric

# torch's common base of BatchNorm1d/2d/3d, their lazy forms and SyncBatchNorm; no public
# base covers them all (Lightning's BaseFinetuning tests BN layers with it too).
BatchNormBase = _BatchNorm


# -- DDP strategy -----------------------------------------------------------------------------
def rewrap_ddp(trainer: Trainer) -> None:
    """Wrap the module in DistributedDataParallel again after its trainable parameters changed.

    DDP registers the parameters that require grad when it is built and only ever all-reduces
    those: a stage unfrozen later would silently train apart on each process
    (Lightning-AI/pytorch-lightning#20340). Lightning has no public way to rebuild the
    wrapper, so this calls the two private steps of ``DDPStrategy.setup`` that build it:
    ``_setup_model`` (wraps ``lightning_module`` with the strategy's DDP arguments) and
    ``_register_ddp_hooks`` (the communication hooks configured on the strategy).
    """
    strategy = trainer.strategy
    if isinstance(getattr(strategy, "model", None), DistributedDataParallel):
        strategy.model = strategy._setup_model(strategy.lightning_module)
        if hasattr(strategy, "_register_ddp_hooks"):
            strategy._register_ddp_hooks()


def disable_sync_batchnorm(strategy: DDPStrategy) -> bool:
    """Turn off ``trainer.sync_batchnorm`` on a strategy not set up yet; True if it was on.

    The Trainer hands the option to the strategy as ``_layer_sync`` (the SyncBatchNorm
    converter), applied in ``setup``; no public setter exists once the Trainer is built.
    """
    if strategy._layer_sync is None:
        return False
    strategy._layer_sync = None
    return True


def set_process_group_timeout(strategy: DDPStrategy, timeout: timedelta) -> None:
    """The collective timeout of a DDP strategy chosen by name (``strategy: ddp``).

    ``DDPStrategy(timeout=...)`` is the public way, but only when the config builds the
    strategy itself; a name gets Lightning's default, kept as ``_timeout`` until
    ``setup_environment`` creates the process group.
    """
    strategy._timeout = timeout


def process_group_timeout(strategy: Any) -> timedelta | None:
    """The collective timeout a strategy uses (None if it has none); read-only twin of
    :func:`set_process_group_timeout`, for the lost-process message."""
    return getattr(strategy, "_timeout", None)


def set_ddp_option(strategy: DDPStrategy, name: str, value: Any) -> None:
    """One DistributedDataParallel keyword (e.g. ``find_unused_parameters``) on a strategy
    chosen by name: ``DDPStrategy(**kwargs)`` keeps them as ``_ddp_kwargs`` until the model
    is wrapped; no public setter exists."""
    strategy._ddp_kwargs[name] = value


# -- stopping a fit the way SIGTERM does ------------------------------------------------------
def request_sigterm_stop(trainer: Trainer, stop: bool = True) -> None:
    """Ask the fit loop to stop as on SIGTERM (``SIGTERMException`` at its next check, every
    process together under DDP), or withdraw the request.

    Lightning's signal connector keeps the request as ``received_sigterm``; there is no
    public way to raise or clear it (``trainer.should_stop`` ends the fit normally, without
    the exception that makes mvcli write its resumable checkpoint).
    """
    trainer._signal_connector.received_sigterm = stop


# -- the fit loop's training data ------------------------------------------------------------
def training_loaders(trainer: Trainer) -> list:
    """The fit loop's training DataLoaders, as it iterates them ([] before they exist).

    ``trainer.train_dataloader`` gives the user's collection; the loop's ``_combined_loader``
    gives them flattened, after Lightning replaced samplers (DDP), which is what the
    resumed position must be set on.
    """
    combined = trainer.fit_loop._combined_loader
    return [] if combined is None else list(combined.flattened)


def restart_training_iterator(trainer: Trainer, prepare: Callable[[Any], None]) -> None:
    """Call ``prepare`` on each training loader, then start the fit loop's iterator afresh.

    A resumed run builds its iterator before callbacks know the epoch it resumes; the loop
    keeps it as ``_data_fetcher``, which has no public reset. Does nothing before the loop
    has built its loaders and iterator.
    """
    loop = trainer.fit_loop
    if loop._combined_loader is None or loop._data_fetcher is None:
        return
    for loader in loop._combined_loader.flattened:
        prepare(loader)
    iter(loop._data_fetcher)


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    """``set_epoch`` on a loader's sampler and batch sampler's sampler, exactly as the fit
    loop does at each epoch start (Lightning's helper for it is private)."""
    _set_sampler_epoch(loader, epoch)


def logged_results(trainer: Trainer) -> dict:
    """The running accumulators of the values logged with ``self.log`` in the training epoch
    (Lightning's ``_ResultCollection``, key -> ``_ResultMetric``).

    Public APIs only show reduced values (``trainer.callback_metrics``); resuming mid-epoch
    and undoing a failed step need the running sums themselves.
    """
    return trainer.fit_loop.epoch_loop._results


# -- weight averaging -------------------------------------------------------------------------
def averaged_model(callback: WeightAveraging) -> AveragedModel | None:
    """The ``AveragedModel`` a weight-averaging callback keeps (None outside a fit: it is built
    in ``setup`` for fitting only).

    Lightning keeps it as ``_average_model`` with no public accessor; mvcli's EMA
    (``mvcli.callbacks.ema``) needs it to start the average from the weights the fit starts
    from (it is copied before the module's own ``setup``) and to tell a fit from other runs.
    """
    return callback._average_model


# -- torchmetrics -----------------------------------------------------------------------------
def restore_update_count(metric: Metric, update_count: int) -> None:
    """Put back a metric's update count after its states were set from a snapshot.

    torchmetrics exposes ``update_count`` read-only and has no state-restoring API that
    keeps it (``load_state_dict`` covers persistent states only, ``merge_state`` adds and
    refuses full-state metrics); ``compute`` warns on a count of 0 and caches its result in
    ``_computed``, so the cache is cleared too.
    """
    metric._update_count = update_count
    metric._computed = None


# -- tensors ----------------------------------------------------------------------------------
def shared_empty(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Uninitialised memory of ``like``'s dtype and device, allocated in shared memory.

    What torch's ``default_collate`` does in a DataLoader worker; the public
    ``torch.empty(...).share_memory_()`` allocates twice and copies the whole batch.
    """
    storage = like._typed_storage()._new_shared(math.prod(shape), device=like.device)
    return like.new(storage).resize_(shape)


def storage_use_count(tensor: torch.Tensor) -> int:
    """How many references ``tensor``'s memory has: tensors sharing its storage (views and
    slices, and through them numpy arrays and memoryviews made from them), plus one for the
    storage's Python object.

    The use count of the storage's ``intrusive_ptr``; torch has no public API for it.
    :class:`mvcli.data.collate.BatchMemory` reuses a batch buffer only when it has dropped
    back to the buffer's own references.
    """
    return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


# -- torch.compile ----------------------------------------------------------------------------
class CompileClock:
    """Host seconds spent compiling (``torch.compile``: Dynamo tracing and the backend's code
    generation, backward graphs compiled lazily included) while started.

    torch has no public compile-time API; Dynamo calls the start and end callbacks of its
    ``callback_handler`` around every compilation (nested ones once), which are registered
    here. ``seconds`` is the running total since :meth:`start`.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._began: float | None = None
        self._handler: Any = None

    def __getstate__(self) -> dict:
        # A copy (a deepcopy of the model for EMA reaches the callbacks through jsonargparse's
        # instantiators) is a stopped clock: Dynamo's handler holds a lock, and callbacks
        # registered by the copy would never be removed.
        return {"seconds": self.seconds, "_began": None, "_handler": None}

    def start(self) -> None:
        if self._handler is not None:
            return
        from torch._dynamo.callback import callback_handler

        self._handler = callback_handler
        callback_handler.register_start_callback(self._on_start)
        callback_handler.register_end_callback(self._on_end)

    def stop(self) -> None:
        if self._handler is None:
            return
        self._handler.remove_start_callback(self._on_start)
        self._handler.remove_end_callback(self._on_end)
        self._handler = None
        self._began = None

    def _on_start(self, args: Any) -> None:
        self._began = time.perf_counter()

    def _on_end(self, args: Any) -> None:
        if self._began is not None:
            self.seconds += time.perf_counter() - self._began
            self._began = None


# -- jsonargparse -----------------------------------------------------------------------------
def formatting_parser() -> Any:
    """The parser whose help is being formatted, from inside a ``HelpFormatter`` method.

    jsonargparse sets it in a context variable of its private ``_common`` module; argparse
    gives a formatter no reference to its parser.
    """
    return parent_parser.get()


def subcommand_parser(cli: Any, subcommand: str) -> Any:
    """A LightningCLI's parser of one subcommand (kept as ``_subcommand_parsers``; public
    only through the private ``_parser`` method)."""
    return cli._subcommand_parsers[subcommand]


def rewrite_subcommand_help(parser: Any, help_lines: dict[str, str], extra: list[str]) -> None:
    """Set the ``--help`` line of each listed subcommand, and list ``extra`` names too (run
    outside the parser, so they have no sub-parser).

    argparse builds the listing from its subparsers action's ``_choices_actions`` (reached
    through jsonargparse's ``_subcommands_action``); neither offers a public way to change a
    line after ``add_subcommand`` or to list a name without a parser.
    """
    action = parser._subcommands_action
    # The usage line's {a,b,...} lists them all too (argparse builds it from the choices).
    action.metavar = "{" + ",".join([*action.choices, *extra]) + "}"
    for choice in action._choices_actions:
        choice.help = help_lines.get(choice.dest, choice.help)
    for name in extra:
        action._choices_actions.append(action._ChoicesPseudoAction(name, (), help_lines[name]))


def option_strings(parser: Any) -> list[str]:
    """Every option string of ``parser`` (``--data.batch_size``, ...): the candidates of the
    "did you mean" hint of an unknown option. argparse keeps them in ``_actions`` only."""
    return [option for action in parser._actions for option in action.option_strings]


def parser_of_subcommand(parser: Any, name: str) -> Any:
    """The parser of subcommand ``name`` under ``parser`` (None without one): argparse keeps
    them in the subparsers action's ``_name_parser_map``, reached through jsonargparse's
    ``_subcommands_action``."""
    action = getattr(parser, "_subcommands_action", None)
    return None if action is None else action._name_parser_map.get(name)
