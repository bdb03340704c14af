"""Hugging Face video backbones, never touching the network: tiny randomly initialised models
of each family (VideoMAE, TimeSformer, V-JEPA 2) built from transformers' config classes,
written with save_pretrained and loaded by path (``hf:/folder``); features, stages, input
checks, normalisation from the processor, the offline message, the fine-tuning knobs and the
whole CLI (fit, resume, predict, export, DDP)."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from mvcli.cli import main  # noqa: E402
from mvcli.models.backbones import FineTuning, build_backbone, normalization  # noqa: E402
from mvcli.task.module import ClipInput, MVFoulModule  # noqa: E402
from tests.conftest import CONFIGS, tiny_args  # noqa: E402

FRAMES, SIZE = 4, 32  # every tiny model's input
HIDDEN, LAYERS = 32, 2
FAMILIES = ("videomae", "timesformer", "vjepa2")
# The tiny sets' clips at the tiny models' input (tests/conftest.py tiny_args + these).
CLIP_ARGS = ["--data.frames_per_clip", str(FRAMES), "--data.img_height", str(SIZE),
             "--data.img_width", str(SIZE)]  # fmt: skip
VIDEOMAE_MEAN = (0.45, 0.45, 0.45)
VIDEOMAE_STD = (0.225, 0.225, 0.225)


def tiny_model(family: str):
    """A randomly initialised ~50-70k-parameter model of ``family`` (seeded)."""
    torch.manual_seed(0)
    common = {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 2}
    if family == "videomae":
        config = transformers.VideoMAEConfig(
            image_size=SIZE, patch_size=16, num_frames=FRAMES, tubelet_size=2,
            intermediate_size=64, use_mean_pooling=True, **common,
        )  # fmt: skip
        return transformers.VideoMAEModel(config)
    if family == "timesformer":
        config = transformers.TimesformerConfig(
            image_size=SIZE, patch_size=16, num_frames=FRAMES, intermediate_size=64, **common
        )
        return transformers.TimesformerModel(config)
    config = transformers.VJEPA2Config(
        crop_size=SIZE, patch_size=16, frames_per_clip=FRAMES, tubelet_size=2, mlp_ratio=2.0,
        pred_hidden_size=16, pred_num_hidden_layers=1, pred_num_attention_heads=2,
        num_pooler_layers=1, **common,
    )  # fmt: skip
    return transformers.VJEPA2Model(config)


def save_tiny(family: str, folder: Path) -> str:
    """Write the tiny model (VideoMAE with a video processor of its own) -> ``hf:<folder>``."""
    tiny_model(family).save_pretrained(folder)
    if family == "videomae":
        processor = transformers.VideoMAEVideoProcessor(
            image_mean=list(VIDEOMAE_MEAN), image_std=list(VIDEOMAE_STD)
        )
        processor.save_pretrained(folder)
    return f"hf:{folder}"


def tiny_for_any_clip(folder: Path) -> str:
    """A tiny TimeSformer with 8-pixel patches: takes the tests' 8x32x56 clips (tiny_args);
    the Hugging Face configs are smoke-run with it (tests/test_cli.py)."""
    torch.manual_seed(0)
    config = transformers.TimesformerConfig(
        image_size=32, patch_size=8, num_frames=8, intermediate_size=64, hidden_size=HIDDEN,
        num_hidden_layers=LAYERS, num_attention_heads=2,
    )  # fmt: skip
    transformers.TimesformerModel(config).save_pretrained(folder)
    return f"hf:{folder}"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("hf_models")
    return {f: save_tiny(f, base / f) for f in FAMILIES}


# -- the backbone ---------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_features_are_the_pooled_encoder_output(folders, family):
    backbone = build_backbone(folders[family], FRAMES, SIZE, SIZE)
    module = backbone.module.eval()
    assert backbone.feature_dim == HIDDEN
    assert backbone.stage_names == ["embeddings", "block0", "block1"]
    x = torch.randn(2, 3, FRAMES, SIZE, SIZE)
    with torch.no_grad():
        y = module(x)
        tokens = module.model(**{module.input_key: x.transpose(1, 2)}, **module.extra)
    assert y.shape == (2, HIDDEN) and torch.isfinite(y).all()
    states = tokens.last_hidden_state
    expected = states[:, 0] if family == "timesformer" else states.mean(1)  # CLS / patch mean
    torch.testing.assert_close(y, expected)
    # Stages partition the backbone's parameters (the predictor of V-JEPA 2 is gone).
    owned = [id(p) for s in backbone.stages for p in s.parameters()]
    assert len(owned) == len(set(owned)) == len(list(module.parameters()))
    assert not any("predictor" in n for n, _ in module.named_parameters())


@pytest.mark.parametrize(
    ("family", "shape", "message"),
    [
        ("videomae", (8, 32, 32), "needs exactly 4 frames of 32x32"),
        ("vjepa2", (3, 32, 32), "divisible by 2"),
        ("vjepa2", (4, 48, 48), "needs clips of exactly 32x32"),
        ("timesformer", (4, 40, 40), "divisible by 16"),
    ],
)
def test_sizes_the_model_cannot_take_are_refused_with_the_allowed_values(
    folders, family, shape, message
):
    with pytest.raises(ValueError, match=message):
        build_backbone(folders[family], *shape)


def test_refused_at_parse_time_through_the_cli(folders, synthetic_root, tmp_path):
    args = tiny_args(synthetic_root, tmp_path, *CLIP_ARGS, "--data.frames_per_clip", "6")
    with pytest.raises(ValueError, match="needs exactly 4 frames.*data.frames_per_clip"):
        main(["--config", str(CONFIGS / "demo.yaml"), *args,
              "--model.backbone", folders["videomae"]], run=False)  # fmt: skip


def test_timesformer_and_vjepa2_take_other_frame_counts(folders):
    for family, frames in (("timesformer", 6), ("vjepa2", 8)):
        module = build_backbone(folders[family], frames, SIZE, SIZE).module.eval()
        with torch.no_grad():
            assert module(torch.randn(1, 3, frames, SIZE, SIZE)).shape == (1, HIDDEN)


def test_normalisation_from_the_video_processor(folders):
    assert normalization(folders["videomae"]) == (VIDEOMAE_MEAN, VIDEOMAE_STD)
    # No processor saved: the family's processor defaults (ImageNet's).
    mean, std = normalization(folders["vjepa2"])
    assert mean == pytest.approx((0.485, 0.456, 0.406))
    assert std == pytest.approx((0.229, 0.224, 0.225))


def test_offline_names_the_model_the_cache_and_hf_hub_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(
        "huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"), raising=False
    )
    with pytest.raises(FileNotFoundError) as info:
        build_backbone("hf:MCG-NJU/videomae-base", 16, 224, 224)
    text = str(info.value)
    assert "\n" not in text and info.value.__suppress_context__
    assert "MCG-NJU/videomae-base" in text and "HF_HUB_OFFLINE" in text
    assert str(tmp_path / "hub") in text


def test_remote_code_is_never_trusted(folders, monkeypatch):
    seen = []
    real = transformers.AutoConfig.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy)
    build_backbone(folders["timesformer"], FRAMES, SIZE, SIZE)
    assert seen and set(seen) == {False}


def test_unsupported_family_is_named(tmp_path):
    torch.manual_seed(0)
    config = transformers.VivitConfig(
        image_size=SIZE, num_frames=FRAMES, tubelet_size=[2, 16, 16], hidden_size=HIDDEN,
        num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    )  # fmt: skip
    transformers.VivitModel(config).save_pretrained(tmp_path / "vivit")
    with pytest.raises(ValueError, match="'vivit' model.*timesformer, videomae, vjepa2"):
        build_backbone(f"hf:{tmp_path / 'vivit'}", FRAMES, SIZE, SIZE)


# -- fine-tuning knobs ------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_drop_path_and_gradient_checkpointing(folders, family):
    tune = FineTuning(drop_path=0.5, gradient_checkpointing=True)
    module = build_backbone(folders[family], FRAMES, SIZE, SIZE, finetune=tune).module
    checkpointing = getattr(module.model, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = module.model.is_gradient_checkpointing
    assert checkpointing
    x = torch.randn(4, 3, FRAMES, SIZE, SIZE)
    module.eval()
    with torch.no_grad():
        assert torch.equal(module(x), module(x))  # eval: no drop path
    module.train()
    torch.manual_seed(1)
    first = module(x)
    first.sum().backward()  # through the checkpointed blocks
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)
    torch.manual_seed(2)
    with torch.no_grad():
        assert not torch.allclose(first, module(x))  # blocks dropped per sample


def test_layer_decay_groups_and_learning_rates(folders):
    """Heads at the optimizer's LR; block i of n at backbone LR x 0.75 ** (n - i)."""
    module = MVFoulModule(
        backbone=folders["videomae"],
        clip=ClipInput(FRAMES, SIZE, SIZE),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
        backbone_lr_ratio=0.5,
        finetune=FineTuning(layer_decay=0.75),
    )
    optimizer = module.configure_optimizers()["optimizer"]
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx(
        {
            "heads": 1e-3,
            "backbone.embeddings": 1e-3 * 0.5 * 0.75**3,
            "backbone.block0": 1e-3 * 0.5 * 0.75**2,
            "backbone.block1": 1e-3 * 0.5 * 0.75,
        }
    )
    backbone = {id(p) for p in module.network.backbone.parameters()}
    grouped = [id(p) for g in optimizer.param_groups[1:] for p in g["params"]]
    assert sorted(grouped) == sorted(backbone)


def test_layer_decay_on_torchvision_swin3d_uses_blocks():
    module = MVFoulModule(
        backbone="swin3d_t",
        clip=ClipInput(2, 32, 32),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
        finetune=FineTuning(layer_decay=0.75, drop_path=0.05),
    )
    groups = module.configure_optimizers()["optimizer"].param_groups
    names = [g["name"] for g in groups]
    # patch embedding + 2 + 2 + 6 + 2 blocks (Swin3D-T's depths)
    assert names == ["heads", "backbone.embeddings", *(f"backbone.block{i}" for i in range(12))]
    n = len(groups) - 1
    for i, group in enumerate(groups[1:]):
        assert group["lr"] == pytest.approx(1e-3 * 0.75 ** (n - i))
    blocks = [m for m in module.network.backbone.modules() if hasattr(m, "stochastic_depth")]
    assert blocks[-1].stochastic_depth.p == pytest.approx(0.05)


def test_finetune_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match="transformer backbones"):
        build_backbone("tiny", 4, 32, 32, finetune=FineTuning(layer_decay=0.75))
    # gradient_checkpointing is model.speed.checkpointing: block (tests/models/test_speed.py),
    # for torchvision's transformers too.
    build_backbone("swin3d_t", 2, 32, 32, finetune=FineTuning(gradient_checkpointing=True))


# -- through the CLI ----------------------------------------------------------------------------
def _common(root: Path, runs: Path, backbone: str, *extra: str) -> list[str]:
    return ["--config", str(CONFIGS / "demo.yaml"),
            *tiny_args(root, runs, *CLIP_ARGS), "--model.backbone", backbone, *extra]  # fmt: skip


@pytest.fixture(scope="module", params=FAMILIES)
def hf_run(request, folders, synthetic_root, tmp_path_factory):
    family = request.param
    runs = tmp_path_factory.mktemp(f"runs_{family}")
    common = _common(synthetic_root, runs, folders[family])
    started = time.perf_counter()
    fit = main(["fit", *common, "--trainer.max_epochs", "1",
                "--model.finetune.layer_decay", "0.75"])  # fmt: skip
    seconds = time.perf_counter() - started
    print(f"\n{family}: 1-epoch tiny fit {seconds:.1f} s")
    return family, common, fit


def test_fit_resume_predict_export(hf_run, synthetic_root, tmp_path):
    family, common, fit = hf_run
    ckpt = Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    # The preprocessing is in the checkpoint: the processor's normalisation and the input size.
    clip = saved["hyper_parameters"]["clip"]
    mean, std = normalization(fit.model.hparams.backbone)
    assert (clip["num_frames"], clip["height"], clip["width"]) == (FRAMES, SIZE, SIZE)
    assert tuple(clip["mean"]) == pytest.approx(mean) and tuple(clip["std"]) == pytest.approx(std)
    assert saved["hyper_parameters"]["finetune"]["layer_decay"] == 0.75
    # Resume to a second epoch.
    resumed = main(["fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", str(ckpt),
                    "--model.finetune.layer_decay", "0.75"])  # fmt: skip
    assert resumed.trainer.current_epoch == 2
    # Predict from the checkpoint alone: the backbone and the clip size come back from it.
    out = tmp_path / "pred.json"
    main(["predict", "--data.root", str(synthetic_root), "--data.num_workers", "0",
          "--data.cache_dir", "null", "--trainer.logger", "false",
          "--ckpt_path", str(ckpt), "--output_dir", str(tmp_path / "p"),
          "--prediction_writer.output_path", str(out)])  # fmt: skip
    assert json.loads(out.read_text())["Actions"]
    # Export with parity (or a refusal naming the family).
    export_dir = tmp_path / "export"
    main(["export", "--ckpt_path", str(ckpt), "--output_dir", str(export_dir),
          "--trainer.logger", "false"])  # fmt: skip
    manifest = json.loads((export_dir / "export.json").read_text())
    assert manifest["backbone"].startswith("hf:")
    assert manifest["preprocessing"]["mean"] == pytest.approx(list(mean))
    for fmt in ("onnx", "torch_export"):
        assert max(manifest["parity_max_abs_error"][fmt].values()) <= 1e-4, (family, fmt)


def test_ddp_fit_on_two_processes(folders, synthetic_root, tmp_path):
    """A 2-process (torchrun, gloo) fit of the tiny VideoMAE with layer decay and drop path."""
    from tests.callbacks.test_distributed import TWO_NODES, run_two_nodes

    args = ["fit", *TWO_NODES, *tiny_args(synthetic_root, tmp_path / "fit", *CLIP_ARGS),
            "--model.backbone", folders["videomae"], "--model.finetune.layer_decay", "0.75",
            "--model.finetune.drop_path", "0.1"]  # fmt: skip
    run_two_nodes(args, tmp_path)
    assert (tmp_path / "fit/demo/version_0/checkpoints/last.ckpt").is_file()
