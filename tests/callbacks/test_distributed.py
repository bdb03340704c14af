"""Distributed runs: real 2-process runs started with torchrun, as users start them (two
"nodes" of one CPU process each on 127.0.0.1, gloo), checked against 1-process runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import psutil
import pytest

from mvcli.cli import main
from mvcli.data.annotations import read_split
from mvcli.data.sampler import evaluation_sampler
from mvcli.data.synthetic import write_synthetic_dataset
from mvcli.utils import compat
from tests.conftest import CONF, CONFIGS, REPO, TINY, tiny_args

TWO_NODES = [
    "--config", str(CONFIGS / "demo.yaml"),
    "--config", str(CONFIGS / "ddp.yaml"),
    "--config", str(CONFIGS / "multi_node.yaml"),
    "--config", str(CONF / "ddp_two_nodes.yaml"),
]  # fmt: skip
ONE_PROCESS = ["--config", str(CONFIGS / "demo.yaml"), "--trainer.accelerator", "cpu"]
# predict runs with test-time augmentation: each action's copies stay on one process.
TTA = ["--data.tta.flip", "true", "--data.tta.window_offsets", "[-4,0,4]"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_two_nodes(
    args: list[str], logs: Path, env: dict[str, str] | None = None
) -> list[subprocess.Popen]:
    """``torchrun --nnodes 2 --nproc-per-node 1 --node-rank R ... -m mvcli ARGS``, R = 0, 1."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for rank in (0, 1):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
            "--nproc-per-node", "1", "--node-rank", str(rank), "--master-addr", "127.0.0.1",
            "--master-port", str(port), "-m", "mvcli", *args,
        ]  # fmt: skip
        out = open(logs / f"node{rank}.log", "w")  # files, not pipes: a full pipe would block
        procs.append(subprocess.Popen(cmd, cwd=logs, env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs


def run_two_nodes(args: list[str], logs: Path, timeout: float = 240) -> list[str]:
    procs = start_two_nodes(args, logs)
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    texts = [(logs / f"node{r}.log").read_text() for r in (0, 1)]
    assert codes == [0, 0], "\n\n".join(t[-3000:] for t in texts)
    return texts


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory) -> Path:
    """Readable clips only; odd Valid/Test sizes so the two shards are uneven."""
    root = tmp_path_factory.mktemp("clean")
    write_synthetic_dataset(root, train=8, valid=7, test=7, chall=0, seed=3, **TINY)
    return root


@pytest.fixture(scope="module")
def ddp_runs(clean_root, tmp_path_factory):
    """fit (1 epoch) + validate + test + predict on 2 processes; the same but fit on 1."""
    base = tmp_path_factory.mktemp("ddp")
    started = time.perf_counter()
    # The fit with speed options too (checkpointed blocks under DDP; they change no weight).
    speed = ["--model.speed.checkpointing", "block", "--model.speed.memory_format",
             "channels_last_3d"]  # fmt: skip
    fit_logs = run_two_nodes(
        ["fit", *TWO_NODES, *tiny_args(clean_root, base / "fit"), *speed], base
    )
    ckpt = base / "fit/demo/version_0/checkpoints/last.ckpt"
    evaluate = ["--ckpt_path", str(ckpt)]
    run_two_nodes(
        ["validate", *TWO_NODES, *tiny_args(clean_root, base), *evaluate,
         "--output_dir", str(base / "validate2")], base
    )  # fmt: skip
    run_two_nodes(
        ["test", *TWO_NODES, *tiny_args(clean_root, base), *evaluate,
         "--output_dir", str(base / "test2")], base
    )  # fmt: skip
    pred2 = base / "pred2/predictions.json"
    run_two_nodes(
        [
            "predict", *TWO_NODES, *tiny_args(clean_root, base), *evaluate,
            "--output_dir", str(base / "p2"),
            "--prediction_writer.output_path", str(pred2), *TTA,
        ],
        base,
    )  # fmt: skip
    wall = time.perf_counter() - started
    print(f"\n2-process fit + validate + test + predict: {wall:.1f} s")
    for stage in ("validate", "test"):
        main([stage, *ONE_PROCESS, *tiny_args(clean_root, base), *evaluate,
              "--output_dir", str(base / f"{stage}1")])  # fmt: skip
    pred1 = base / "pred1/predictions.json"
    main(
        [
            "predict", *ONE_PROCESS, *tiny_args(clean_root, base), *evaluate,
            "--output_dir", str(base / "p1"),
            "--prediction_writer.output_path", str(pred1), *TTA,
        ]
    )  # fmt: skip
    return {"base": base, "fit_logs": fit_logs, "pred": (pred1, pred2)}


def _metrics(base: Path, stage: str, processes: int) -> dict[str, float]:
    (path,) = (base / f"{stage}{processes}").rglob(f"{stage}_metrics.json")  # written once
    return json.loads(path.read_text())


def test_two_process_fit_writes_each_file_once(ddp_runs):
    fit = ddp_runs["base"] / "fit"
    # The fit's own config.yaml, written once (eval runs write theirs into --output_dir).
    assert [p.relative_to(fit) for p in fit.rglob("config.yaml")] == [
        Path("demo/version_0/config.yaml")
    ]
    assert [p.name for p in (fit / "demo").iterdir()] == ["version_0"]  # one log dir
    ckpts = sorted(p.name for p in fit.rglob("*.ckpt"))
    assert len(ckpts) == 2 and "last.ckpt" in ckpts, ckpts
    node0, node1 = ddp_runs["fit_logs"]
    line = "effective batch 8 = 2 processes x batch_size 4 x accumulate_grad_batches 1"
    assert line in node0 and "world size 2 (2 node(s) x 1 device(s))" in node0
    assert line not in node1  # reported once, by rank 0


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_two_process_evaluation_equals_one_process(ddp_runs, stage):
    """Regression: `torchrun ... -m mvcli validate` crashed (rank-zero-only code read
    trainer.log_dir, a broadcast), and the padded sampler would have repeated actions."""
    one, two = _metrics(ddp_runs["base"], stage, 1), _metrics(ddp_runs["base"], stage, 2)
    prefix = "val" if stage == "validate" else "test"
    assert set(one) == set(two) and f"{prefix}/leaderboard" in one
    for key, value in one.items():
        if not isinstance(value, float):  # checkpoint, data, tta: where they come from
            assert two[key] == value, key
            continue
        assert two[key] == pytest.approx(value, abs=1e-6), key


def test_two_process_predict_covers_each_action_once(ddp_runs, clean_root):
    pred1, pred2 = (json.loads(p.read_text()) for p in ddp_runs["pred"])
    records, _ = read_split(clean_root / "Test", require_labels=False)
    ids = sorted(r.action_id for r in records)
    assert sorted([*pred2["Actions"], *pred2["failed"]]) == ids  # each exactly once
    assert pred2["Actions"] == pred1["Actions"]  # the same decisions as one process
    assert pred2["tta"] == pred1["tta"] and pred1["tta"]["copies"] == 6
    for action, detail in pred1["details"].items():
        probs = detail["offence_severity"]["probabilities"]
        assert pred2["details"][action]["offence_severity"]["probabilities"] == pytest.approx(
            probs, abs=1e-5
        )
    assert [p.name for p in ddp_runs["pred"][1].parent.iterdir()] == ["predictions.json"]


@pytest.mark.parametrize(
    "how",
    [
        "killed",  # the survivor fails at its next collective
        pytest.param("stalled", marks=pytest.mark.slow),  # it waits out the timeout
    ],
)
def test_lost_process_stops_the_survivor(how, clean_root, tmp_path):
    """Rank 1 dies (or stops) mid-fit: rank 0 exits non-zero with a clear message, within
    the configured timeout, instead of hanging."""
    timeout = 20
    args = [
        "fit", *TWO_NODES, *tiny_args(clean_root, tmp_path / "runs"),
        "--trainer.max_epochs", "1000", "--distributed.timeout", str(timeout),
    ]  # fmt: skip
    procs = start_two_nodes(args, tmp_path)
    worker = None
    try:
        log0 = tmp_path / "node0.log"
        deadline = time.monotonic() + 120
        while "effective batch" not in log0.read_text():  # both ranks are set up
            assert time.monotonic() < deadline and procs[0].poll() is None, log0.read_text()
            time.sleep(0.5)
        time.sleep(1)
        (worker,) = psutil.Process(procs[1].pid).children()
        worker.send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        lost = time.monotonic()
        code = procs[0].wait(timeout=timeout + 60)
        elapsed = time.monotonic() - lost
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if worker is not None and worker.is_running():
            worker.kill()
    text = log0.read_text()
    assert code != 0
    assert elapsed < timeout + 30, elapsed
    assert "process 0 of 2 lost contact with the other processes" in text, text[-3000:]


# -- options and pieces, in one process -----------------------------------------------------
def test_timeout_and_find_unused_parameters_from_the_command_line(synthetic_root, tmp_path):
    """Regression: `--trainer.strategy.timeout 3600` did not parse; these options do."""
    cli = main(
        [
            *ONE_PROCESS, *tiny_args(synthetic_root, tmp_path),
            "--trainer.strategy", "ddp", "--distributed.timeout", "3600",
            "--distributed.find_unused_parameters", "true",
        ],
        run=False,
    )  # fmt: skip
    assert compat.process_group_timeout(cli.trainer.strategy) == timedelta(seconds=3600)
    assert cli.trainer.strategy._ddp_kwargs["find_unused_parameters"] is True  # no public getter


def test_linear_lr_scaling(synthetic_root, tmp_path):
    args = [
        "fit", *ONE_PROCESS, *tiny_args(synthetic_root, tmp_path), "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
        "--trainer.accumulate_grad_batches", "3", "--distributed.scale_lr", "linear",
        "--distributed.reference_batch", "2", "--model.lr_scheduler", "null",
    ]  # fmt: skip
    cli = main(args)
    # effective batch 1 x 4 x 3 = 12, reference 2: demo.yaml's lr 0.006 x 6.
    groups = cli.trainer.optimizers[0].param_groups
    assert groups[0]["lr"] == pytest.approx(0.036)
    assert all(g["lr"] == pytest.approx(0.036) for g in groups)  # backbone ratio 1


def test_evaluation_sampler_shards_are_disjoint_and_complete():
    class FakeTrainer:
        world_size = 3

        def __init__(self, rank):
            self.global_rank = rank

    dataset = list(range(10))
    shards = [list(evaluation_sampler(dataset, FakeTrainer(r))) for r in range(3)]
    assert sorted(i for s in shards for i in s) == dataset  # every action once, no padding
    assert [len(s) for s in shards] == [4, 3, 3]
    assert evaluation_sampler(dataset, None) is None
    with pytest.raises(ValueError, match="2 action"):
        evaluation_sampler([0, 1], FakeTrainer(0))


def _as_torchrun_process(monkeypatch, rank: int, local_rank: int) -> None:
    """The variables torchrun gives a worker (Lightning's TorchElasticEnvironment)."""
    env = {"RANK": rank, "GROUP_RANK": rank, "LOCAL_RANK": local_rank, "LOCAL_WORLD_SIZE": 2}
    env |= {"WORLD_SIZE": 2, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": _free_port()}
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))


def test_export_writes_from_global_rank_zero_only(trained, tmp_path, monkeypatch):
    common, fit = trained
    ckpt = Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    _as_torchrun_process(monkeypatch, rank=1, local_rank=1)
    args = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--ckpt_path", str(ckpt)]
    main(["export", *common, *args, "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_cache_builds_once_per_node(synthetic_root, tmp_path, monkeypatch):
    _as_torchrun_process(monkeypatch, rank=1, local_rank=1)
    args = [*ONE_PROCESS, *tiny_args(synthetic_root, tmp_path), "--trainer.strategy", "ddp"]
    main(["cache", *args, "--trainer.devices", "2", "--data.cache_dir", str(tmp_path / "c")])
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.npy"))
