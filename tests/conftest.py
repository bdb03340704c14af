"""Shared fixtures: one tiny synthetic dataset per session and the real sample folder; the
helpers several test modules use."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from jsonargparse.typing import NonNegativeInt
from lightning_utilities.core.rank_zero import rank_zero_only
from PIL import Image

import mvcli
from mvcli.data.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
# Hypothesis keeps its example database and caches in ./.hypothesis of the directory pytest
# started in (the checkout): a folder of their own instead, so tests leave the checkout as is.
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", tempfile.mkdtemp(prefix="mvcli-tests-hypothesis-")
)
CONFIGS = REPO / "configs"
CONF = REPO / "tests/conf"  # small overlays stacked on a config by the tests
# Clip geometry of the tiny dataset and of every CLI run in the tests.
TINY = {"num_frames": 24, "event_frame": 12, "height": 32, "width": 56}


def sample_dir() -> Path | None:
    """The real five-action sample: ``../shared/data/mvfoul-sample`` or $MVCLI_SAMPLE_DIR."""
    candidates = [os.environ.get("MVCLI_SAMPLE_DIR"), REPO.parent / "shared/data/mvfoul-sample"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "Test/annotations.json").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session", autouse=True)
def _session_cwd(tmp_path_factory):
    """Session fixtures (the shared training run, ...) run in a temporary folder too: set up
    before any of them, since higher-scoped fixtures are created first."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        yield


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    """Every test runs in its own temporary folder: what a run writes relative to the working
    directory (runs/, lightning_logs/, config.yaml, data/) never lands in the checkout. Paths
    into the repository come from REPO, CONFIGS and CONF."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _process_rank_restored():
    """A test that runs mvcli in-process as a simulated torchrun worker (RANK=1) leaves
    Lightning's process-wide ``rank_zero_only.rank`` at 1 (its DDP strategy sets it; the
    environment variables are restored, that attribute is not): every later test would then
    run as a non-zero rank and lose its rank-zero output (printed paths, loggers' files)."""
    rank = getattr(rank_zero_only, "rank", None)
    yield
    if rank is None:
        vars(rank_zero_only).pop("rank", None)
    else:
        rank_zero_only.rank = rank


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Tiny synthetic set: every class present in each split, plus the skip-rule quirks."""
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, train=16, valid=12, test=16, chall=4, quirks=True, seed=1, **TINY)
    return root


@pytest.fixture(scope="session")
def sample_root() -> Path:
    root = sample_dir()
    if root is None:
        pytest.skip("real sample ../shared/data/mvfoul-sample not available")
    return root


@pytest.fixture(scope="session")
def trained(synthetic_root, tmp_path_factory):
    """One short training run shared by many tests: (common CLI args, the fit's CLI object)."""
    from mvcli.cli import main

    runs = tmp_path_factory.mktemp("runs")
    common = ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, runs)]
    fit = main(["fit", *common, "--trainer.max_epochs", "2"])
    return common, fit


@pytest.fixture(scope="session")
def ckpt(trained) -> Path:
    """The best checkpoint of the shared training run."""
    return Path(trained[1].trainer.checkpoint_callback.best_model_path)


def tiny_args(root: Path, runs: Path, *extra: str) -> list[str]:
    """CLI arguments that make any config run in seconds on the tiny set."""
    return [
        "--data.root", str(root),
        "--data.frames_per_clip", "8",
        "--data.center_frame", str(TINY["event_frame"]),
        "--data.img_height", str(TINY["height"]),
        "--data.img_width", str(TINY["width"]),
        "--data.num_workers", "0",
        "--data.cache_dir", "null",  # configs/mvfoul.yaml's cache is relative to the cwd
        "--data.batch_size", "4",
        "--trainer.logger.init_args.save_dir", str(runs),
        "--trainer.default_root_dir", str(runs),
        "--trainer.enable_model_summary", "false",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def torch_hub(tmp_path_factory):
    """A torch hub cache ($TORCH_HOME) where any backbone's default torchvision weights
    appear (random weights of the right shapes) the first time they are asked for; the
    network is never touched: a download writes the file instead of fetching it."""
    import torch

    from mvcli.models.backbones import BACKBONES, build_backbone, default_weights

    home = tmp_path_factory.mktemp("torch_home")
    by_file = {}
    for name in BACKBONES:
        weights = default_weights(name)
        if weights is not None:
            by_file[weights.url.rsplit("/", 1)[-1]] = name

    def fake_download(url, dst, hash_prefix=None, progress=True):
        name = by_file[url.rsplit("/", 1)[-1]]
        sizes = {"s3d": (8, 32, 32), "mvit_v1_b": (16, 224, 224), "mvit_v2_s": (16, 224, 224)}
        torch.manual_seed(0)
        backbone = build_backbone(name, *sizes.get(name, (2, 32, 32)))
        torch.save(backbone.module.state_dict(), dst)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.hub, "_hub_dir", None)
        patch.setenv("TORCH_HOME", str(home))
        patch.setattr(torch.hub, "download_url_to_file", fake_download)
        yield home / "hub"


def _check_png(path: Path, min_size: tuple[int, int]) -> None:
    """A PNG of at least ``min_size`` (width, height) with content (tests of the figures)."""
    image = np.asarray(Image.open(path).convert("RGB"))
    height, width, _ = image.shape
    assert width >= min_size[0] and height >= min_size[1], image.shape
    assert image.std() > 10  # not blank
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20  # text, colour scale, cells


def without_batch_norm(module) -> None:
    """Replace every BatchNorm3d of ``module`` by an identity (in place): batch statistics are
    what a batch split legitimately changes, so OOM-split runs compare equal without them."""
    from torch import nn

    for name, child in list(module.named_modules()):
        if isinstance(child, nn.BatchNorm3d):
            parent, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, leaf, nn.Identity())


# -- a run folder written by mvcli 0.1.0 (tests/fixtures/run-0.1.0/MADE_BY.md) -------------
FIXTURE_0_1 = Path(__file__).parent / "fixtures/run-0.1.0"


@pytest.fixture
def old_run(tmp_path, monkeypatch) -> Path:
    """The 0.1.0 run folder in a working folder with the data it was trained on."""
    monkeypatch.chdir(tmp_path)
    write_synthetic_dataset(
        tmp_path / "data", train=16, valid=12, test=16, chall=4, quirks=True, seed=1, **TINY
    )
    run = tmp_path / "runs/demo/version_0"
    shutil.copytree(FIXTURE_0_1, run, ignore=shutil.ignore_patterns("MADE_BY.md"))
    _write_0_1_checkpoint(run)
    for name in list(sys.modules):  # so the old class path imports (and warns) again
        if name in mvcli.MOVED_MODULES:
            monkeypatch.delitem(sys.modules, name)
    return run


def _write_0_1_checkpoint(run: Path) -> None:
    """``run/checkpoints/last.ckpt`` as 0.1.0 wrote it for the fixture's config.yaml.

    Trained from that config by today's code, then given what set 0.1.0's files apart
    (checked against a checkpoint 0.1.0 wrote, see MADE_BY.md): flat loss and clip
    hyperparameters, no ``finetune``, the data root as given (relative), and
    ``LinearWarmup.warmup_steps`` saved as jsonargparse's ``NonNegativeInt``.
    """
    import torch

    from mvcli.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        fit = main(
            ["fit", "--config", str(run / "config.yaml"), "--trainer.enable_model_summary",
             "false", "--trainer.logger.init_args.save_dir", "made"]
        )  # fmt: skip
    made = Path(fit.trainer.log_dir) / "checkpoints/last.ckpt"
    checkpoint = torch.load(made, map_location="cpu", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    loss, clip = hparams.pop("loss"), hparams.pop("clip")
    hparams.pop("finetune", None)
    hparams["loss"] = loss.pop("kind")
    hparams |= loss
    hparams |= {"num_frames": clip["num_frames"], "img_height": clip["height"],
                "img_width": clip["width"], "mean": clip["mean"], "std": clip["std"]}  # fmt: skip
    checkpoint["datamodule_hyper_parameters"]["root"] = "data"
    warmup = checkpoint["lr_schedulers"][0]["inner"]
    warmup["warmup_steps"] = NonNegativeInt(warmup["warmup_steps"])
    (run / "checkpoints").mkdir()
    torch.save(checkpoint, run / "checkpoints/last.ckpt")
