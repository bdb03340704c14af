"""GPU benchmark of mvcli's speed options: ``make bench-gpu`` (one H100: under 8 minutes).

    make bench-gpu                                          # writes runs/bench-gpu.json
    python -m tests.benchmarks.gpu_bench --out runs/bench-gpu.json [--budget_s 450]
    python -m tests.benchmarks.gpu_bench --dry-run --out /tmp/dry.json   # CPU, tiny sizes

Four backbones at their recipe sizes: r2plus1d_18 and swin3d_t at 16x224x398, mvit_v2_s and
a Hugging Face VideoMAE-B (built from ``VideoMAEConfig()``: random weights, no download) at
16x224x224. For each, the grid precision (fp32 / bf16-mixed / 16-mixed) x ``torch.compile``
(off / default) x memory format (contiguous / channels_last_3d) x activation checkpointing
(off / stage), each applied through ``MVFoulModule(speed=...)`` as a run would: training
clips/s (forward, multi-task loss, backward, AdamW step; uint8 clips on the device,
normalised inside the network) and inference clips/s (``inference_mode``), peak GPU memory
of each, compile time apart (never in a rate), and MFU (model FLOPs of a step from
``torch.utils.flop_counter.FlopCounterMode``, recomputation not counted, x steps/s / the
device's peak for the precision; the table of peaks is ``PEAK_TFLOPS``). A batch is 4 actions
x 2 views. Then evaluation batching (actions of 2-4 views, batches of 8 against one action at
a time, bf16; logits asserted equal) and a real ``mvcli fit`` on synthetic 224x398 clips
through the clip cache (``mvcli cache`` first): actions/s, views/s, data-wait fraction and
compile time per epoch, from its history.json.

The grid does not fit in 8 minutes with every compiled configuration (each compiles for
about a minute): configurations run in priority order (the one-option-at-a-time sweep of
every model first, eager before compiled) while the time budget lasts; the others are listed
in the JSON with the reason they were skipped, as is any configuration a backbone cannot run
(with the error). The fit and the evaluation batching keep a share of the budget.

Notes: "fp32" is PyTorch's default, which lets cuDNN use TF32 for convolutions: its MFU is
against the TF32 peak. Without CUDA (and without ``--dry-run``) the script says so and exits
with status 0. ``--dry-run`` runs every code path on the CPU at tiny sizes (the ``tiny``
backbone; a two-layer VideoMAE in three configurations), compiling with the ``aot_eager``
backend (Dynamo and AOTAutograd as with inductor, no code generation), in well under a
minute: a default test (tests/benchmarks/test_gpu_bench.py).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

if __package__ in (None, ""):  # run as a script: make `mvcli` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mvcli.data.augment import Augmentation, BatchAugmenter  # noqa: E402
from mvcli.models.speed import SpeedOptions  # noqa: E402
from mvcli.task.module import ClipInput, MVFoulModule  # noqa: E402
from mvcli.utils.compat import CompileClock  # noqa: E402
from tests.benchmarks.common import machine, table  # noqa: E402

PRECISIONS = {"fp32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
# Dense peak TFLOP/s per GPU, by a substring of torch.cuda.get_device_name(): (fp32 with
# TF32 tensor cores, bf16/fp16 tensor cores). Vendor datasheets; the first match wins.
PEAK_TFLOPS = {
    "H100 PCIe": (378.0, 756.0),
    "H100": (494.7, 989.4),  # SXM / HBM3
    "H200": (494.7, 989.4),
    "GH200": (494.7, 989.4),
    "A100": (156.0, 312.0),
    "L40S": (183.0, 362.0),
    "L4": (60.0, 121.0),
    "A10": (62.5, 125.0),
}
TIME_UP = "not run: the time budget (--budget_s) was spent"


@dataclass(frozen=True)
class Model:
    label: str
    backbone: str  # a backbone name, or random:videomae (built here, random weights)
    frames: int
    height: int
    width: int


MODELS = [
    Model("r2plus1d_18", "r2plus1d_18", 16, 224, 398),
    Model("mvit_v2_s", "mvit_v2_s", 16, 224, 224),
    Model("swin3d_t", "swin3d_t", 16, 224, 398),
    Model("videomae (hf)", "random:videomae", 16, 224, 224),
]
DRY_MODELS = [
    Model("tiny", "tiny", 8, 32, 56),
    Model("videomae (hf, 2 layers)", "random:videomae-tiny", 4, 32, 32),
]


@dataclass(frozen=True)
class Config:
    precision: str
    compile: bool
    memory_format: str
    checkpointing: str

    def speed(self) -> SpeedOptions:
        return SpeedOptions(
            compile="default" if self.compile else "off",
            memory_format=self.memory_format,
            checkpointing=self.checkpointing,
        )


# The one-option-at-a-time sweep, eager first; then the rest of the grid, eager first.
PRIORITY = [
    Config("fp32", False, "contiguous", "off"),
    Config("bf16-mixed", False, "contiguous", "off"),
    Config("16-mixed", False, "contiguous", "off"),
    Config("bf16-mixed", False, "channels_last_3d", "off"),
    Config("bf16-mixed", False, "contiguous", "stage"),
    Config("bf16-mixed", True, "contiguous", "off"),
    Config("bf16-mixed", True, "channels_last_3d", "off"),
    Config("bf16-mixed", True, "channels_last_3d", "stage"),
]
# A dry run's other models: baseline, checkpointing, everything (compiled).
DRY_OTHERS = [PRIORITY[0], PRIORITY[4], PRIORITY[-1]]
GRID = [
    Config(p, c, m, k)
    for c, p, m, k in itertools.product(
        (False, True), PRECISIONS, ("contiguous", "channels_last_3d"), ("off", "stage")
    )
]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-gpu.json"))
    parser.add_argument("--dry-run", action="store_true",
                        help="every code path on the CPU at tiny sizes (a test)")  # fmt: skip
    parser.add_argument("--budget_s", type=float, default=450.0,
                        help="wall-clock seconds for all measurements")  # fmt: skip
    parser.add_argument("--models", nargs="+", default=None, help="labels of MODELS to run")
    parser.add_argument("--batch", type=int, default=4, help="actions per batch")
    parser.add_argument("--views", type=int, default=2, help="views per action")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--fit_actions", type=int, default=64, help="Train actions of the fit")
    parser.add_argument("--eval_actions", type=int, default=32)
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="the device's peak, any precision (default: PEAK_TFLOPS)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.dry_run:
        args.steps, args.warmup, args.batch = 2, 1, 2
        args.fit_actions, args.eval_actions = 8, 4
        args.peak_tflops = args.peak_tflops or 1.0  # nominal: the MFU arithmetic runs
    return args


# -- models and batches --------------------------------------------------------------------------
def _random_hf(family: str, folder: Path) -> str:
    """VideoMAE from ``VideoMAEConfig()`` (ViT-B, 16x224x224) or a two-layer one at 4x32x32
    (``videomae-tiny``), random weights, saved once: ``hf:<folder>``."""
    import transformers

    path = folder / family
    if not path.is_dir():
        torch.manual_seed(0)
        if family == "videomae-tiny":
            config = transformers.VideoMAEConfig(
                image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=32,
                num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            )  # fmt: skip
        else:
            config = transformers.VideoMAEConfig()
        transformers.VideoMAEModel(config).save_pretrained(path)
    return f"hf:{path}"


def build(model: Model, config: Config, device: torch.device, folder: Path) -> MVFoulModule:
    backbone = model.backbone
    if backbone.startswith("random:"):
        backbone = _random_hf(backbone.split(":", 1)[1], folder)
    clip = ClipInput(num_frames=model.frames, height=model.height, width=model.width)
    torch.manual_seed(0)
    module = MVFoulModule(backbone=backbone, clip=clip, speed=config.speed())
    return module.to(device)


def batch(model: Model, actions: int, views: int, device: torch.device) -> dict:
    shape = (actions, views, 3, model.frames, model.height, model.width)
    return {
        "video": torch.randint(0, 256, shape, dtype=torch.uint8, device=device),
        "view_mask": torch.ones(actions, views, dtype=torch.bool, device=device),
        "views": [[f"clip_{v}.mp4" for v in range(views)]] * actions,  # host-side counts
        "offence_severity": torch.randint(0, 4, (actions,), device=device),
        "action": torch.randint(0, 8, (actions,), device=device),
    }


def _autocast(device: torch.device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Steps:
    """One model's training and inference steps on a fixed batch."""

    def __init__(self, module: MVFoulModule, data: dict, dtype, device: torch.device) -> None:
        self.module, self.data, self.dtype, self.device = module, data, dtype, device
        self.optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
        self.views = [len(v) for v in data["views"]]

    def train(self) -> torch.Tensor:
        data = self.data
        with _autocast(self.device, self.dtype):
            logits = self.module(data["video"], data["view_mask"], self.views)
            loss, _ = self.module.criterion(logits, data)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def infer(self) -> None:
        with torch.inference_mode(), _autocast(self.device, self.dtype):
            self.module(self.data["video"], self.data["view_mask"])


def step_flops(steps: Steps) -> tuple[int, int]:
    """Model FLOPs of one training step (forward + backward) and of one inference forward."""
    steps.module.train()
    with FlopCounterMode(display=False) as counter:
        steps.train()
    train = counter.get_total_flops()
    steps.module.eval()
    with FlopCounterMode(display=False) as counter:
        steps.infer()
    return train, counter.get_total_flops()


def peak_tflops(args, device: torch.device, precision: str) -> tuple[float | None, str]:
    if args.peak_tflops is not None:
        return args.peak_tflops, "--peak_tflops"
    if device.type != "cuda":
        return None, f"no peak known for {device.type}"
    name = torch.cuda.get_device_name(device)
    for key, (tf32, half) in PEAK_TFLOPS.items():
        if key in name:
            return (tf32 if precision == "fp32" else half), f"{key} datasheet"
    return None, f"no peak known for {name!r} (PEAK_TFLOPS)"


def timed(fn, n: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``n`` calls, the device synchronised around them."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / n


def run_config(args, model: Model, config: Config, device, folder, flops) -> dict:
    """Training and inference rates, peak memory, compile time and MFU of one configuration."""
    clock = CompileClock()
    clock.start()
    started = time.perf_counter()
    try:
        out = _measure(args, model, config, device, folder, flops, clock)
        out["seconds"] = time.perf_counter() - started
        return out
    finally:
        clock.stop()
        _free(device)


def _measure(args, model, config, device, folder, flops, clock: CompileClock) -> dict:
    dtype = PRECISIONS[config.precision]
    module = build(model, config, device, folder)
    steps = Steps(module, batch(model, args.batch, args.views, device), dtype, device)
    clips = args.batch * args.views
    if model.label not in flops and not config.compile:  # counted on eager kernels
        flops[model.label] = step_flops(steps)
    out = {}
    module.train()
    for _ in range(args.warmup):  # compiles here when compiled
        loss = steps.train()
    _reset_peak(device)
    train_s = timed(steps.train, args.steps, device)
    out["train_clips_per_s"] = clips / train_s
    out["train_peak_gib"] = _peak_gib(device)
    out["finite_loss"] = bool(torch.isfinite(loss))
    steps.optimizer = None  # inference's peak without the training state
    module.zero_grad(set_to_none=True)
    _free(device)
    module.eval()
    for _ in range(args.warmup):
        steps.infer()
    _reset_peak(device)
    infer_s = timed(steps.infer, args.steps, device)
    out["eval_clips_per_s"] = clips / infer_s
    out["eval_peak_gib"] = _peak_gib(device)
    out["compile_s"] = clock.seconds
    peak, source = peak_tflops(args, device, config.precision)
    out["peak_tflops"], out["peak_source"] = peak, source
    if model.label in flops:
        train_flops, eval_flops = flops[model.label]
        out["train_tflop_per_step"] = train_flops / 1e12
        if peak is not None:
            out["mfu_train"] = train_flops / train_s / (peak * 1e12)
            out["mfu_eval"] = eval_flops / infer_s / (peak * 1e12)
    return out


class _OutOfTime(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise _OutOfTime in the main thread after ``seconds`` (a compile included)."""
    if seconds <= 0:
        raise _OutOfTime
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise _OutOfTime

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def grid(args, models: list[Model], device, folder: Path, until: float) -> list[dict]:
    """Every (model, configuration) in priority order while time lasts (a dry run: the
    priority sweep, which has every option, then the rest listed as skipped)."""
    order = [(m, c) for c in PRIORITY for m in models]
    order += [(m, c) for m in models for c in GRID if c not in PRIORITY]
    cost: dict[tuple[str, bool], float] = {}  # (model, compiled) -> seconds measured
    flops: dict[str, tuple[int, int]] = {}
    results = []
    for model, config in order:
        row = {"model": model.label, **asdict(config)}
        results.append(row)
        if args.dry_run and config not in (PRIORITY if model == models[0] else DRY_OTHERS):
            row["skipped"] = "not run: a dry run runs the priority sweep only"
            continue
        left = until - time.perf_counter()
        guess = cost.get((model.label, config.compile))
        if guess is None and config.compile:
            guess = 2 * cost.get((model.label, False), 10.0) + 60.0  # a first compile
        if left <= 0 or (guess is not None and guess > left):
            row["skipped"] = f"{TIME_UP} (needs ~{guess or 0:.0f} s, {max(left, 0):.0f} s left)"
            continue
        print(f"gpu_bench: {model.label}: {config}", flush=True)
        try:
            with deadline(left):
                row |= run_config(args, model, config, device, folder, flops)
            cost[(model.label, config.compile)] = row["seconds"]
        except _OutOfTime:
            row["skipped"] = f"{TIME_UP} (stopped after {left:.0f} s)"
            _free(device)
        except torch.OutOfMemoryError as err:
            row["error"] = f"out of memory: {str(err).splitlines()[0]}"
            _free(device)
        except Exception as err:  # a combination this backbone cannot run: recorded
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
            _free(device)
    return results


# -- evaluation batching and the augmentation -----------------------------------------------------
def eval_batching(args, model: Model, device, folder: Path, batch_size: int = 8) -> dict:
    """Masked batches of actions with 2-4 views vs one action per forward (bf16)."""
    module = build(model, Config("bf16-mixed", False, "contiguous", "off"), device, folder)
    module.eval()
    views = [2 + i % 3 for i in range(args.eval_actions)]
    single = [batch(model, 1, v, device) for v in views]
    batches = []
    for i in range(0, len(single), batch_size):
        group = single[i : i + batch_size]
        most = max(c["video"].shape[1] for c in group)
        video = torch.zeros((len(group), most, *group[0]["video"].shape[2:]),
                            dtype=torch.uint8, device=device)  # fmt: skip
        mask = torch.zeros((len(group), most), dtype=torch.bool, device=device)
        for j, c in enumerate(group):
            video[j, : c["video"].shape[1]] = c["video"][0]
            mask[j, : c["video"].shape[1]] = True
        batches.append({"video": video, "view_mask": mask})

    def run(items):
        with torch.inference_mode(), _autocast(device, torch.bfloat16):
            return [module(b["video"], b["view_mask"]) for b in items]

    rates, outs = {}, {}
    for name, items in (("batched", batches), ("one action", single)):
        run(items)  # warm-up
        _sync(device)
        start = time.perf_counter()
        outs[name] = run(items)
        _sync(device)
        rates[name] = len(single) / (time.perf_counter() - start)
    for head in module.heads:
        together = torch.cat([o[head] for o in outs["batched"]]).float()
        alone = torch.cat([o[head] for o in outs["one action"]]).float()
        torch.testing.assert_close(together, alone, rtol=0.05, atol=0.05)  # bf16 kernels
    augment = augment_vs_step(args, model, module, device)
    module = None
    _free(device)
    return {
        "model": model.label,
        "actions_per_s": rates,
        "batched_vs_one": rates["batched"] / rates["one action"],
        "views": sum(views),
        "batch_size": batch_size,
        "augment_vs_train_step": augment,
    }


def augment_vs_step(args, model: Model, module, device) -> float:
    """The moderate augmentation of a batch on the device / a bf16 training step."""
    data = batch(model, args.batch, args.views, device)
    steps = Steps(module.train(), data, torch.bfloat16, device)
    steps.train()
    step_s = timed(steps.train, args.steps, device)
    augmenter = BatchAugmenter(Augmentation(preset="moderate"), [1.0, 1.2, 1.5, 2.0])
    severity = data["offence_severity"].cpu()
    augmenter(data, severity=severity)
    return timed(lambda: augmenter(data, severity=severity), args.steps, device) / step_s


# -- a real fit through the cache -----------------------------------------------------------------
def fit_size(args) -> tuple[int, int, int]:
    return (8, 32, 56) if args.dry_run else (16, 224, 398)


def write_fit_data(args, root: Path) -> float:
    """The synthetic set of the fit (24 frames around frame 12); seconds it took. Run in a
    process of its own while the grid measures (it is CPU work: PyAV encoding)."""
    from mvcli.data.synthetic import write_synthetic_dataset

    started = time.perf_counter()
    _, height, width = fit_size(args)
    write_synthetic_dataset(root, train=args.fit_actions, valid=8, test=0, chall=0,
                            num_frames=24, event_frame=12, height=height, width=width,
                            seed=0)  # fmt: skip
    return time.perf_counter() - started


def real_fit(args, device, folder: Path, written) -> dict:
    """``mvcli cache`` then ``mvcli fit`` (2 epochs) on synthetic clips: history.json.
    ``written``: the future of :func:`write_fit_data`."""
    from mvcli.cli import main

    size = fit_size(args)
    backbone = "tiny" if args.dry_run else "r2plus1d_18"
    root, runs = folder / "fit-data", folder / "fit-runs"
    written = written.result()
    workers = 0 if args.dry_run else min(8, os.cpu_count() or 1)
    data = [
        "--config", str(Path(__file__).resolve().parents[2] / "configs/demo.yaml"),
        "--data.root", str(root), "--data.frames_per_clip", str(size[0]),
        "--data.center_frame", "12", "--data.img_height", str(size[1]),
        "--data.img_width", str(size[2]), "--data.cache_dir", str(folder / "cache"),
        "--data.num_workers", str(workers), "--data.batch_size", "8",
        "--data.eval_batch_size", "8", "--data.augmentation.preset", "moderate",
        "--trainer.logger.init_args.save_dir", str(runs),
        "--trainer.default_root_dir", str(runs), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    started = time.perf_counter()
    main(["cache", *data, "--splits", "[Train, Valid]"])
    cached = time.perf_counter() - started
    gpu = [
        "--trainer.accelerator",
        "gpu",
        "--trainer.precision",
        "bf16-mixed",
        "--trainer.benchmark",
        "true",
        "--model.speed.memory_format",
        "channels_last_3d",
    ]
    fit = main(["fit", *data, "--model.backbone", backbone, "--trainer.max_epochs", "2",
                "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
                "--trainer.devices", "1", *([] if device.type == "cpu" else gpu)])  # fmt: skip
    history = json.loads((Path(fit.trainer.log_dir) / "history.json").read_text())
    keys = ("train/actions_per_s", "train/views_per_s", "train/data_wait_fraction",
            "speed/compile_s", "train_time_s", "peak_memory_mb")  # fmt: skip
    return {
        "backbone": backbone,
        "clips": "x".join(map(str, size)),
        "train_actions": args.fit_actions,
        "data_written_s": written,
        "cache_built_s": cached,
        "epochs": [{k: r.get(k) for k in ("epoch", *keys)} for r in history],
    }


# -- the run --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device here; nothing measured (run `make bench-gpu` on a GPU "
              "machine, or --dry-run for the CPU check).")  # fmt: skip
        return 0
    start = time.perf_counter()
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:
        torch.compiler.set_default_backend("aot_eager")  # no code generation
    models = DRY_MODELS if args.dry_run else MODELS
    if args.models:
        models = [m for m in models if m.label in args.models]
    report: dict = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    report["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    try:
        with (
            tempfile.TemporaryDirectory(prefix="mvcli-bench-gpu-") as tmp,
            ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool,
        ):
            folder = Path(tmp)
            written = pool.submit(write_fit_data, args, folder / "fit-data")
            # The fit and the evaluation batching keep ~38 % of the budget.
            report["eval_batching"] = eval_batching(args, models[0], device, folder)
            until = start + 0.62 * args.budget_s
            report["grid"] = grid(args, models, device, folder, until)
            report["fit"] = real_fit(args, device, folder, written)
    finally:
        if args.dry_run:
            torch.compiler.set_default_backend(None)
    report["elapsed_s"] = time.perf_counter() - start
    report["tables"] = tables(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    for caption, text in report["tables"].items():
        print(f"\n{caption}\n\n{text}")
    print(f"\ngpu_bench: {report['elapsed_s']:.0f} s; written to {args.out}")
    return 0


def tables(report: dict) -> dict[str, str]:
    rows = []
    for r in report["grid"]:
        keys = [r["model"], r["precision"], "on" if r["compile"] else "off",
                r["memory_format"], r["checkpointing"]]  # fmt: skip
        if "train_clips_per_s" in r:
            mfu = r.get("mfu_train")
            rows.append([*keys, r["train_clips_per_s"], r["eval_clips_per_s"],
                         r["train_peak_gib"] or "", r["compile_s"],
                         "" if mfu is None else f"{100 * mfu:.1f}%"])  # fmt: skip
        else:  # the whole reason is in the JSON
            why = r["error"][:60] if "error" in r else r["skipped"].split(" (")[0]
            rows.append([*keys, why, "", "", "", ""])
    batching = report["eval_batching"]
    fit = report["fit"]
    return {
        f"Speed options, {report['device']} (batch 4 actions x 2 views):": table(
            ["model", "precision", "compile", "memory format", "checkpointing",
             "train clips/s", "eval clips/s", "train peak GiB", "compile s", "MFU train"],
            rows),
        f"Evaluation batching ({batching['model']}, bf16, actions of 2-4 views):": table(
            ["batching", "actions/s"], [[k, v] for k, v in batching["actions_per_s"].items()]),
        f"mvcli fit through the cache ({fit['backbone']}, {fit['clips']} clips):": table(
            ["epoch", "actions/s", "views/s", "data wait", "compile s"],
            [[e["epoch"], e["train/actions_per_s"], e["train/views_per_s"],
              e["train/data_wait_fraction"], e["speed/compile_s"]] for e in fit["epochs"]]),
    }  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
