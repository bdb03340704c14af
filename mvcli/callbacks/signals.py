"""SIGTERM / SIGINT: stop at a clean point, keep the progress, exit non-zero, say how to resume.

Lightning turns SIGTERM into ``trainer.received_sigterm``: the loops stop after the current
batch and raise ``SIGTERMException`` (a ``SystemExit`` whose status is 0, so a scheduler
would take the run as finished). This callback routes SIGINT (Ctrl+C) the same way, chooses
where to stop, writes ``last.ckpt`` and sets the exit status to 128 + the signal number (143
for SIGTERM, 130 for SIGINT). A second Ctrl+C stops at once (Python's KeyboardInterrupt).

Where the run stops:
- in the middle of a training epoch: after the current batch; ``last.ckpt`` then holds that
  mid-epoch state, from which ``--ckpt_path last`` continues exactly
  (:mod:`mvcli.callbacks.resume`);
- during the epoch's last batch or its validation: at the end of the epoch, after the usual
  epoch-end ``last.ckpt``;
- before training started (setup, sanity check): at once; nothing new to save.

SLURM: with ``SLURMEnvironment(auto_requeue=True)`` (the default when Lightning detects
SLURM) Lightning saves an ``hpc_ckpt_*.ckpt`` and requeues the job on the requeue signal
(SIGUSR1 by default: ``#SBATCH --signal=SIGUSR1@90``); the requeued job resumes from it.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mvcli.commandline.outputs import resume_command
from mvcli.utils import compat
from mvcli.utils.checkpoints import last_checkpoint_path, save_last_checkpoint

_HANDLED = (signal.SIGTERM, signal.SIGINT)


class GracefulStop(Callback):
    """Saves the progress and exits with 128 + signum on SIGTERM/SIGINT (see module).

    Lightning's OnExceptionCheckpoint saves on any exception to a fixed file, but does not
    catch SIGINT, choose the stop point (epoch end vs mid-epoch) or set the exit status.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._deferred = False
        self._in_epoch = False
        self._previous: dict[int, object] = {}
        self._trainer: Trainer | None = None

    # -- handlers ----------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._trainer = trainer
        self.signum, self._deferred = None, False
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in _HANDLED:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl+C: stop now
        trainer = self._trainer
        if trainer is None:  # outside a fit (Lightning may restore this handler afterwards)
            if signum == signal.SIGINT:
                signal.default_int_handler(signum, frame)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        # SIGTERM reaches this after Lightning's own handler (DDP broadcast, SLURM bypass),
        # which Lightning installs after on_fit_start, keeping this one in its chain.
        self.signum = signum
        if self._epoch_ending(trainer):
            # Its last batch or validation: stop once the epoch-end checkpoint is written.
            self._deferred = True
            compat.request_sigterm_stop(trainer, False)
        else:
            compat.request_sigterm_stop(trainer)

    @staticmethod
    def _epoch_ending(trainer: Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.validating:
            return True
        batches = trainer.fit_loop.epoch_loop.batch_progress.current
        return trainer.training and batches.ready >= trainer.num_training_batches

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Resumed mid-epoch, Lightning skips on_train_epoch_start: the epoch is under way.
        self._in_epoch = trainer.fit_loop.restarted_mid_epoch

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._in_epoch = True

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Before the checkpoint callbacks (they monitor, so they come last); the fit loop
        # raises SIGTERMException once the epoch is complete.
        self._in_epoch = False
        if self._deferred:
            compat.request_sigterm_stop(trainer)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}
        self._trainer = None

    # -- stopping ----------------------------------------------------------------------------
    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        signum = self.signum or signal.SIGTERM
        last = last_checkpoint_path(trainer)
        if self._in_epoch and trainer.global_step > 0:
            save_last_checkpoint(trainer)  # atomic (mvcli.utils.checkpoints.AtomicCheckpointIO)
            where = f"epoch {trainer.current_epoch}, mid-epoch"
        else:
            where = f"epoch {trainer.current_epoch}"
        resume = resume_command(trainer)
        if last is not None and Path(last).is_file():
            message = (
                f"stopped by {signal.Signals(signum).name} at {where}; progress saved in {last}.\n"
                f"Resume with: {resume}"
            )
        else:
            message = f"stopped by {signal.Signals(signum).name} before any checkpoint was written"
        rank_zero_warn(message)
        exception.code = 128 + int(signum)
