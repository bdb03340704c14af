"""GPU benchmark: r2plus1d_18 at 16x224x398, precision x memory format x torch.compile.

    python tests/benchmarks/gpu_bench.py                 # every combination, ~5-10 min
    python tests/benchmarks/gpu_bench.py --compile off   # skip the compiled runs (fast)

For each of fp32 / bf16-mixed / 16-mixed, contiguous / channels_last_3d, torch.compile off /
on: training clips/s (forward, multi-task loss, backward, AdamW step; uint8 clips on the
device, normalised inside the network as in mvcli), inference clips/s and the peak GPU memory
of training, and the moderate augmentation's time per batch on the device relative to the
training step (goal < 5%). Then evaluation batching: masked batches of actions with 2-4 views vs one
action at a time (bf16), with the same logits asserted. Prints Markdown tables and writes
``bench_results/gpu.json``. On a machine without CUDA it says so and exits with status 0.

Notes: "fp32" is PyTorch's default, which lets cuDNN use TF32 for convolutions;
``torch.compile`` is applied to the backbone (the view fold/unfold around it has
data-dependent shapes), and its compile time is reported apart, not in the rates.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `mvcli` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mvcli.data.augment import Augmentation, BatchAugmenter  # noqa: E402
from mvcli.models.backbones import FineTuning  # noqa: E402
from mvcli.task.module import ClipInput, MVFoulModule  # noqa: E402
from tests.benchmarks.common import report, table  # noqa: E402

PRECISIONS = {"fp32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="r2plus1d_18",
                        help="a torchvision name, hf:<id or folder>, or random:<videomae|"
                        "timesformer|vjepa2>: the family's default (real-size) config, "
                        "randomly initialised (no hub access needed)")  # fmt: skip
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--height", type=int, default=224)
    parser.add_argument("--width", type=int, default=398)
    parser.add_argument("--batch", type=int, default=8, help="actions per training batch")
    parser.add_argument("--views", type=int, default=2, help="views per training action")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--memory_format", nargs="+", default=["contiguous", "channels_last_3d"],
                        choices=["contiguous", "channels_last_3d"])  # fmt: skip
    parser.add_argument("--compile", choices=["off", "on", "both"], default="both")
    parser.add_argument("--eval_actions", type=int, default=32)
    parser.add_argument("--name", default="gpu", help="bench_results/<name>.json")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test of this script")
    return parser.parse_args(argv)


def _random_hf(family: str) -> str:
    """The family's default config (VideoMAE/TimeSformer ViT-B 16x224, V-JEPA 2 ViT-L 256),
    random weights, saved once into a temporary folder: ``hf:<folder>``."""
    import tempfile

    import transformers

    classes = {"videomae": "VideoMAE", "timesformer": "Timesformer", "vjepa2": "VJEPA2"}
    folder = Path(tempfile.mkdtemp(prefix=f"gpu_bench_{family}_"))
    name = classes[family]
    config = getattr(transformers, f"{name}Config")()
    getattr(transformers, f"{name}Model")(config).save_pretrained(folder)
    return f"hf:{folder}"


def _model(args, memory_format: str, compiled: bool) -> MVFoulModule:
    backbone = args.backbone
    if backbone.startswith("random:"):
        backbone = args.backbone = _random_hf(backbone.split(":", 1)[1])
    module = MVFoulModule(
        backbone=backbone,
        clip=ClipInput(num_frames=args.frames, height=args.height, width=args.width),
        finetune=FineTuning(gradient_checkpointing=args.gradient_checkpointing),
    ).to(args.device)
    if memory_format == "channels_last_3d":
        module = module.to(memory_format=torch.channels_last_3d)
    if compiled:
        module.network.backbone = torch.compile(module.network.backbone)
    return module


def _batch(args, actions: int, views: int) -> dict:
    shape = (actions, views, 3, args.frames, args.height, args.width)
    device = args.device
    return {
        "video": torch.randint(0, 256, shape, dtype=torch.uint8, device=device),
        "view_mask": torch.ones(actions, views, dtype=torch.bool, device=device),
        "offence_severity": torch.randint(0, 4, (actions,), device=device),
        "action": torch.randint(0, 8, (actions,), device=device),
    }


def _autocast(args, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(args.device).type, dtype=dtype)


def _sync(args) -> None:
    if torch.device(args.device).type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(args) -> None:
    if torch.device(args.device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(args) -> float:
    if torch.device(args.device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return float("nan")


def run_config(args, precision: str, memory_format: str, compiled: bool) -> dict:
    dtype = PRECISIONS[precision]
    torch.manual_seed(0)
    module = _model(args, memory_format, compiled)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    device_type = torch.device(args.device).type
    scaler = torch.amp.GradScaler(device_type, enabled=dtype is torch.float16)
    batch = _batch(args, args.batch, args.views)
    clips = args.batch * args.views

    def train_step():
        with _autocast(args, dtype):
            logits = module(batch["video"], batch["view_mask"])
            loss, _ = module.criterion(logits, batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss

    def eval_step():
        with torch.inference_mode(), _autocast(args, dtype):
            return module(batch["video"], batch["view_mask"])

    out = {"precision": precision, "memory_format": memory_format, "compile": compiled}
    start = time.perf_counter()
    module.train()
    for _ in range(args.warmup):
        train_step()
    _sync(args)
    out["warmup_s"] = time.perf_counter() - start
    _reset_peak(args)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = train_step()
    _sync(args)
    step_s = (time.perf_counter() - start) / args.steps
    out["train_clips_per_s"] = clips / step_s
    out["train_peak_gib"] = _peak_gib(args)
    # Training augmentation (moderate preset, on the device) per batch, next to the step.
    augmenter = BatchAugmenter(Augmentation(preset="moderate"), [1.0, 1.2, 1.5, 2.0])
    augmenter(batch)  # warm-up
    _sync(args)
    start = time.perf_counter()
    for _ in range(args.steps):
        augmenter(batch)
    _sync(args)
    out["augment_vs_step"] = (time.perf_counter() - start) / args.steps / step_s
    out["finite_loss"] = bool(torch.isfinite(loss))
    module.eval()
    for _ in range(args.warmup):
        eval_step()
    _sync(args)
    start = time.perf_counter()
    for _ in range(args.steps):
        eval_step()
    _sync(args)
    out["eval_clips_per_s"] = clips * args.steps / (time.perf_counter() - start)
    return out


def eval_batching(args, batch_size: int = 8) -> dict:
    """Masked batches of actions with 2-4 views vs one action per forward (bf16)."""
    torch.manual_seed(0)
    module = _model(args, "contiguous", False).eval()
    views = [2 + i % 3 for i in range(args.eval_actions)]
    clips = [_batch(args, 1, v) for v in views]
    batches = []
    for i in range(0, len(clips), batch_size):
        group = clips[i : i + batch_size]
        most = max(c["video"].shape[1] for c in group)
        video = torch.zeros((len(group), most, *group[0]["video"].shape[2:]),
                            dtype=torch.uint8, device=args.device)  # fmt: skip
        mask = torch.zeros((len(group), most), dtype=torch.bool, device=args.device)
        for j, c in enumerate(group):
            video[j, : c["video"].shape[1]] = c["video"][0]
            mask[j, : c["video"].shape[1]] = True
        batches.append({"video": video, "view_mask": mask})

    def run(items):
        with torch.inference_mode(), _autocast(args, torch.bfloat16):
            return [module(b["video"], b["view_mask"]) for b in items]

    rates, outs = {}, {}
    for name, items in (("batched", batches), ("one action", clips)):
        run(items)
        _sync(args)
        start = time.perf_counter()
        for _ in range(3):
            outs[name] = run(items)
        _sync(args)
        rates[name] = 3 * len(clips) / (time.perf_counter() - start)
    for head in module.heads:
        batched = torch.cat([o[head] for o in outs["batched"]]).float()
        single = torch.cat([o[head] for o in outs["one action"]]).float()
        torch.testing.assert_close(batched, single, rtol=0.05, atol=0.05)  # bf16 kernels
    return {"actions_per_s": rates, "views": sum(views), "batch_size": batch_size}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device here; nothing measured (run it on a GPU machine).")
        return 0
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    results = []
    for precision, fmt, compiled in itertools.product(args.precision, args.memory_format, compiles):
        print(f"gpu_bench: {precision}, {fmt}, compile={compiled} ...", flush=True)
        try:
            results.append(run_config(args, precision, fmt, compiled))
            if args.device == "cuda":
                torch.cuda.empty_cache()  # the run's model and batch are gone
        except torch.cuda.OutOfMemoryError as err:  # recorded; the other runs go on
            results.append({"precision": precision, "memory_format": fmt, "compile": compiled,
                            "error": f"out of memory: {str(err).splitlines()[0]}"})  # fmt: skip
            torch.cuda.empty_cache()
    base = next((r for r in results if "error" not in r), None)
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["precision"], r["memory_format"], r["compile"], r["error"], "", "", "",
                         ""])  # fmt: skip
            continue
        speed = r["train_clips_per_s"] / base["train_clips_per_s"]
        rows.append([r["precision"], r["memory_format"], "on" if r["compile"] else "off",
                     r["train_clips_per_s"], speed, r["eval_clips_per_s"],
                     r["train_peak_gib"], f"{100 * r['augment_vs_step']:.1f}%"])  # fmt: skip
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    size = f"{args.backbone}, {args.frames}x{args.height}x{args.width}"
    tables = {
        f"{size}, batch {args.batch} x {args.views} views, {device}:": table(
            ["precision", "memory format", "compile", "train clips/s", "x first",
             "eval clips/s", "train peak GiB", "augment / step"], rows),
    }  # fmt: skip
    batching = eval_batching(args)
    rates = batching["actions_per_s"]
    ratio = rates["batched"] / rates["one action"]
    tables[f"Evaluation batching, {args.eval_actions} actions with 2-4 views, bf16:"] = table(
        ["batching", "actions/s", "x"],
        [[name, rate, rate / rates["one action"]] for name, rate in rates.items()],
    )
    tables["Goal:"] = table(
        ["ratio", "value", "goal"],
        [["batched / one action", ratio, f"{'met' if ratio >= 3 else 'MISSED'} (>= 3)"]],
    )
    report(args.name, "GPU benchmark", tables, {"args": vars(args), "results": results,
                                               "eval_batching": batching})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
