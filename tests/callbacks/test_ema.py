"""EMA of the weights (mvcli.callbacks.ema.EMAWeights) in real fits: the average equals one
computed by hand from the live weights after every optimizer step; validation runs with it;
checkpoints hold it as the model's weights (evaluated without the callback) and the live
weights beside it; frozen stages keep their value; two DDP processes hold the same average.
Exact resume with EMA on: tests/callbacks/test_resume.py."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from mvcli.callbacks.ema import EMAWeights
from mvcli.callbacks.freezing import StageFreezing
from mvcli.callbacks.pruning import ScheduledPruning
from mvcli.cli import main
from mvcli.data.synthetic import write_synthetic_dataset
from mvcli.utils import compat
from mvcli.utils.errors import UsageError
from tests.conftest import CONF, CONFIGS, TINY, tiny_args

State = dict[str, torch.Tensor]
PROBE = "tests.callbacks.test_ema.WeightRecorder"
PROBE_SAVING = f'{{"class_path": "{PROBE}", "init_args": {{"save_in_validation": true}}}}'


class WeightRecorder(Callback):
    """Test probe (in trainer.callbacks): the weights the fit starts from, the live weights
    after each optimizer step, those the first batch of each validation sees, the live
    weights and the average at each epoch start, those left at the fit's end; with ``out``,
    each process saves the last two (DDP test); with ``save_in_validation``, a checkpoint
    written during the last validation (``during_val.ckpt``)."""

    def __init__(self, out: str | None = None, save_in_validation: bool = False) -> None:
        self.out = out
        self.save_in_validation = save_in_validation
        self.start: State = {}
        self.steps: dict[int, State] = {}
        self.validated: dict[int, State] = {}
        self.epoch_starts: dict[int, tuple[State, State]] = {}  # (live, average)
        self.final: State = {}

    def on_train_start(self, trainer, pl_module):
        self.start = _copy(pl_module)

    def on_train_epoch_start(self, trainer, pl_module):
        ema = next(c for c in trainer.callbacks if isinstance(c, EMAWeights))
        average = compat.averaged_model(ema).module
        self.epoch_starts[trainer.current_epoch] = (_copy(pl_module), _copy(average))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps[trainer.global_step] = _copy(pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx > 0 or trainer.sanity_checking:
            return
        self.validated[trainer.global_step] = _copy(pl_module)
        if self.save_in_validation and trainer.current_epoch == trainer.max_epochs - 1:
            trainer.save_checkpoint(Path(trainer.log_dir) / "during_val.ckpt")

    def on_fit_end(self, trainer, pl_module):
        self.final = _copy(pl_module)
        if self.out is not None:
            live = self.steps[max(self.steps)]
            path = Path(self.out) / f"rank{trainer.global_rank}.pt"
            torch.save({"live": live, "average": self.final}, path)


def _copy(module) -> State:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _recorder(cli) -> WeightRecorder:
    # By name: the CLI imports the class by its path, pytest this file under its own name.
    return next(c for c in cli.trainer.callbacks if type(c).__name__ == "WeightRecorder")


def hand_ema(rec: WeightRecorder, decay: float, start_step: int, every: int) -> dict[int, State]:
    """The average after each step, by the documented rule, in float64: the live weights up
    to ``start_step``, then ``decay * average + (1 - decay) * weights`` every ``every``
    steps; integer buffers are the live ones."""
    average = {k: v.double() for k, v in rec.start.items()}
    out = {0: average}
    for step in sorted(rec.steps):
        live = {k: v.double() for k, v in rec.steps[step].items()}
        if step <= start_step:
            average = live
        elif (step - start_step) % every == 0:
            average = {
                k: decay * average[k] + (1 - decay) * w if rec.start[k].is_floating_point() else w
                for k, w in live.items()
            }
        out[step] = average
    return out


def assert_state_close(actual: State, expected: State) -> None:
    assert actual.keys() == expected.keys()
    for key, value in actual.items():
        torch.testing.assert_close(value.double(), expected[key], rtol=1e-5, atol=1e-6, msg=key)


def _max_diff(a: State, b: State) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


# -- one fit with EMA on: 2 epochs of 3 optimizer steps, a validation after each ------------
DECAY, START, EVERY = 0.6, 2, 2  # updates: copies after steps 1, 2; averages after 4 and 6


@pytest.fixture(scope="module")
def ema_fit(synthetic_root, tmp_path_factory):
    runs = tmp_path_factory.mktemp("ema_runs")
    args = ["--config", str(CONFIGS / "demo.yaml"), "--config", str(CONFIGS / "ema.yaml"),
            "--config", str(CONF / "quick_val.yaml"), *tiny_args(synthetic_root, runs),
            "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3",
            "--ema.decay", str(DECAY), "--ema.start_step", str(START),
            "--ema.every_n_steps", str(EVERY), "--trainer.callbacks+", PROBE_SAVING]  # fmt: skip
    fit = main(["fit", *args])
    rec = _recorder(fit)
    return fit, rec, hand_ema(rec, DECAY, START, EVERY)


def test_average_equals_a_hand_computed_ema(ema_fit):
    fit, rec, expected = ema_fit
    assert sorted(rec.steps) == [1, 2, 3, 4, 5, 6]
    # Validation (after steps 3 and 6) ran with the average: at step 3 the copy of step 2's
    # weights (averaging starts after step 2, the next update is at step 4), not the live ones.
    assert sorted(rec.validated) == [3, 6]
    for step, seen in rec.validated.items():
        assert_state_close(seen, expected[step])
    assert _max_diff(rec.validated[3], rec.steps[3]) > 1e-4
    # The fit leaves the average in the model.
    assert_state_close(rec.final, expected[6])
    assert _max_diff(rec.final, rec.steps[6]) > 1e-4
    assert fit.model.state_dict().keys() == rec.final.keys()


def test_checkpoints_hold_the_average_and_the_live_weights(ema_fit):
    fit, rec, expected = ema_fit
    run_dir = Path(fit.trainer.log_dir)
    last = _checkpoint(run_dir / "checkpoints/last.ckpt")
    assert_state_close(last["state_dict"], expected[6])
    for key, value in last["current_model_state"].items():
        assert torch.equal(value, rec.steps[6][key]), key
    assert int(last["averaging_state"]["n_averaged"]) == 5  # the start + 4 updates
    # The best checkpoint was chosen on the average's val/leaderboard and holds it.
    best = fit.trainer.checkpoint_callback
    step = _checkpoint(best.best_model_path)["global_step"]
    assert_state_close(_checkpoint(best.best_model_path)["state_dict"], expected[step])
    # Saved during validation (the average swapped into the module): the same two states.
    during = _checkpoint(run_dir / "during_val.ckpt")
    assert_state_close(during["state_dict"], expected[6])
    for key, value in during["current_model_state"].items():
        assert torch.equal(value, rec.steps[6][key]), key


def test_evaluating_a_checkpoint_gives_the_fits_validation(ema_fit, synthetic_root, tmp_path):
    """``mvcli validate --ckpt_path last.ckpt``, without the EMA callback and with it (the
    run's config.yaml has the section): the fit's last validation metrics, no warning."""
    fit, _, _ = ema_fit
    run_dir = Path(fit.trainer.log_dir)
    logged = {k: float(v) for k, v in fit.trainer.callback_metrics.items() if k.startswith("val/")}
    assert "val/leaderboard" in logged and "val/loss" in logged
    ckpt = str(run_dir / "checkpoints/last.ckpt")
    plain = ["--config", str(CONFIGS / "demo.yaml"), "--config", str(CONF / "quick_val.yaml"),
             *tiny_args(synthetic_root, tmp_path / "plain")]  # fmt: skip
    saved = ["--config", str(run_dir / "config.yaml"), "--trainer.callbacks", "null"]
    for name, args in (("plain", plain), ("saved", saved)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cli = main(["validate", *args, "--ckpt_path", ckpt,
                        "--output_dir", str(tmp_path / name)])  # fmt: skip
        has_ema = any(isinstance(c, EMAWeights) for c in cli.trainer.callbacks)
        assert has_ema == (name == "saved")
        assert not [str(w.message) for w in caught if "WeightAveraging" in str(w.message)]
        metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
        for key, value in logged.items():
            assert metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-7), (name, key)


# -- freezing ---------------------------------------------------------------------------------
def test_frozen_stages_average_to_their_value(synthetic_root, tmp_path):
    """Gradual unfreezing (tests/conf/gradual.yaml: layer2 unfrozen at epoch 1): a frozen
    stage's average is its unchanged value, bit for bit, batch-norm statistics included; an
    unfrozen stage's follows it from that value; everything matches the hand-computed EMA."""
    args = ["--config", str(CONFIGS / "demo.yaml"), "--config", str(CONF / "fast_fit.yaml"),
            "--config", str(CONF / "gradual.yaml"), *tiny_args(synthetic_root, tmp_path),
            "--trainer.max_epochs", "2", "--ema.decay", "0.5",
            "--trainer.callbacks+", PROBE]  # fmt: skip
    fit = main(["fit", *args])
    rec = _recorder(fit)
    expected = hand_ema(rec, 0.5, 0, 1)
    assert_state_close(rec.final, expected[4])
    freezing = next(c for c in fit.trainer.callbacks if isinstance(c, StageFreezing))
    assert freezing.stage_names[freezing.unfrozen[0]] == "layer2"
    frozen = [f"network.backbone.{freezing.stage_names[i]}." for i in freezing.frozen_stages()]
    keys = [k for k in rec.start if k.startswith(tuple(frozen))]
    assert keys and any("running_mean" in k for k in keys)
    for key in keys:
        assert torch.equal(rec.final[key], rec.start[key]), key
    thawed = [k for k in rec.start if k.startswith("network.backbone.layer2.") and "weight" in k]
    for key in thawed:  # trained in epoch 1: the average lags behind the live weights
        assert not torch.equal(rec.final[key], rec.steps[4][key]), key
        assert not torch.equal(rec.final[key], rec.start[key]), key


def test_a_rollback_restores_the_live_weights_and_the_average(synthetic_root, tmp_path):
    """AdvancedFreezing's rollback to the best checkpoint (epoch 0 on a scripted metric, as
    in test_freezing.py) with EMA on: the epoch after it starts from that checkpoint's live
    weights (current_model_state) and its average (state_dict), not from the average alone."""
    scripted = (
        '{"class_path": "tests.callbacks.test_freezing.Scripted", '
        '"init_args": {"values": [0.5, 0.4, 0.3, 0.3]}}'
    )
    args = ["--config", str(CONFIGS / "demo.yaml"), "--config", str(CONF / "fast_fit.yaml"),
            "--config", str(CONF / "advanced.yaml"), *tiny_args(synthetic_root, tmp_path),
            "--trainer.max_epochs", "4", "--ema.decay", "0.5",
            "--trainer.callbacks+", scripted, "--trainer.callbacks+", PROBE]  # fmt: skip
    fit = main(["fit", *args])
    freezing = next(c for c in fit.trainer.callbacks if isinstance(c, StageFreezing))
    assert [h["event"] for h in freezing.history][:2] == ["unfreeze", "rollback"]
    best = _checkpoint(fit.trainer.checkpoint_callback.best_model_path)
    assert best["epoch"] == 0
    live, average = _recorder(fit).epoch_starts[3]
    for key in live:
        assert torch.equal(live[key], best["current_model_state"][key]), key
        assert torch.equal(average[key], best["state_dict"][key]), key
    assert _max_diff(live, average) > 1e-4


# -- DDP --------------------------------------------------------------------------------------
def test_two_processes_hold_the_same_average(tmp_path):
    """Two torchrun processes (gloo, sync_batchnorm from configs/ddp.yaml): each updates its
    average from the same all-reduced steps; at the end both are equal, bit for bit, and
    differ from the live weights."""
    from tests.callbacks.test_distributed import TWO_NODES, run_two_nodes

    root = tmp_path / "data"  # 16 training actions: 2 steps of 4 actions per process
    write_synthetic_dataset(root, train=16, valid=4, test=4, chall=0, seed=5, **TINY)
    out = tmp_path / "probe"
    out.mkdir()
    probe = f'{{"class_path": "{PROBE}", "init_args": {{"out": "{out}"}}}}'
    run_two_nodes(["fit", *TWO_NODES, "--config", str(CONFIGS / "ema.yaml"),
                   *tiny_args(root, tmp_path / "runs"), "--ema.decay", "0.5",
                   "--ema.start_step", "0", "--trainer.callbacks+", probe],
                  tmp_path / "logs")  # fmt: skip
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for key, value in ranks[0]["average"].items():
        assert torch.equal(value, ranks[1]["average"][key]), key
    assert _max_diff(ranks[0]["average"], ranks[0]["live"]) > 1e-4


# -- refused ----------------------------------------------------------------------------------
def test_pruning_is_refused():
    trainer = SimpleNamespace(callbacks=[ScheduledPruning()])
    with pytest.raises(UsageError, match="ema: .*ScheduledPruning in trainer.callbacks"):
        EMAWeights().setup(trainer, None, "fit")


def test_decay_is_checked_at_parse_time(synthetic_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, tmp_path),
              "--ema.decay", "1"], run=False)  # fmt: skip
    assert "--ema.decay: expected float in (0, 1)" in capsys.readouterr().err
