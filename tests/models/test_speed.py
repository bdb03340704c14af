"""model.speed (mvcli.models.speed): each option acts (compile wired to the backbone, the
channels-last layout reaching every 3D convolution, checkpointing keeping fewer activations
for the same gradients) and changes no weight or name, so it composes with freezing,
resuming and export."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torchvision.models.video.mvit import MSBlockConfig, MViT

from mvcli.callbacks.oom import FAULT_ENV, OOMRecovery
from mvcli.cli import main
from mvcli.deploy.export import export_network, plain_network
from mvcli.models.backbones import FineTuning, build_backbone
from mvcli.models.network import MultiViewNetwork, clip_index
from mvcli.models.speed import (
    SpeedOptions,
    block_plan,
    checkpoint_groups,
)
from mvcli.task.module import ClipInput, MVFoulModule
from tests.conftest import CONF, CONFIGS, tiny_args

NUM_CLASSES = {"offence_severity": 4, "action": 8}
MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
# Backbone -> a clip size small enough for the CPU (MViT: a small one built below).
SIZES = {
    "tiny": (8, 32, 32),
    "r2plus1d_18": (4, 32, 32),
    "s3d": (8, 32, 32),
    "swin3d_t": (4, 32, 32),
}


def _network(name: str = "tiny", **speed) -> MultiViewNetwork:
    torch.manual_seed(0)
    backbone = build_backbone(name, *SIZES[name])
    return MultiViewNetwork(backbone, "max", NUM_CLASSES, MEAN, STD, 0.0, SpeedOptions(**speed))


def _batch(name: str = "tiny"):
    """3 actions of up to 2 views; the second has one real view."""
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (3, 2, 3, *SIZES[name]), dtype=torch.uint8, generator=g)
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    return video, mask, [2, 1, 2]


def _small_mvit() -> MViT:
    """torchvision's MViT with two small blocks (one pooling queries), at 4x32x32."""
    blocks = [
        MSBlockConfig(2, 16, 16, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 2, 2]),
        MSBlockConfig(2, 16, 32, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 1, 1]),
    ]
    torch.manual_seed(0)
    net = MViT((32, 32), 4, blocks, residual_pool=True, residual_with_cls_embed=False,
               rel_pos_embed=True, proj_after_attn=True, stochastic_depth_prob=0.2)  # fmt: skip
    net.head = nn.Identity()
    return net


def _backbone_module(name: str) -> nn.Module:
    if name == "mvit":
        return _small_mvit()
    torch.manual_seed(0)
    return build_backbone(name, *SIZES[name]).module


# -- the block plans mirror each family's forward ----------------------------------------------
@pytest.mark.parametrize("name", [*SIZES, "mvit"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_block_plan_is_the_backbones_own_forward(name, training):
    module = _backbone_module(name).train(training)
    plan = block_plan(module)
    x = torch.randn(2, 3, *SIZES.get(name, (4, 32, 32)))
    torch.manual_seed(1)  # the same dropout / stochastic depth draws in both
    expected = module(x)
    torch.manual_seed(1)
    state = plan.enter(module, x)
    for block in plan.blocks:
        out = block(*state)
        state = out if isinstance(out, tuple) else (out,)
    assert torch.equal(plan.leave(module, state), expected)


def test_checkpoint_groups_follow_the_stages_or_the_blocks():
    backbone = build_backbone("r2plus1d_18", *SIZES["r2plus1d_18"])
    plan = block_plan(backbone.module)
    stages = checkpoint_groups(plan, backbone.stages, "stage")
    assert [len(g) for g in stages] == [1, 2, 2, 2, 2]  # stem, then layer1-4's basic blocks
    assert stages[1] == list(backbone.module.layer1)
    assert [len(g) for g in checkpoint_groups(plan, backbone.stages, "block")] == [1] * 9
    # Block stages (finetune.block_stages): a group per block stage (a patch merging layer
    # with the block after it), the patch embedding (stage 0) run before the groups.
    swin = build_backbone("swin3d_t", 4, 32, 32, finetune=FineTuning(block_stages=True))
    groups = checkpoint_groups(block_plan(swin.module), swin.stages, "stage")
    assert len(groups) == len(swin.stages) - 1 and max(len(g) for g in groups) == 2


# -- checkpointing --------------------------------------------------------------------------------
def _saved_and_grads(net: MultiViewNetwork, name: str):
    """(tensors saved for backward, their bytes), the logits and the gradients of a step."""
    video, mask, views = _batch(name)
    counts = [0, 0]

    def pack(t):
        counts[0] += 1
        counts[1] += t.numel() * t.element_size()
        return t

    net.train()
    torch.manual_seed(2)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = net(video, mask, views)
    sum(out.sum() for out in logits.values()).backward()
    # Gradients, and the batch-norm statistics (updated once per step, recomputed or not).
    grads = {n: p.grad for n, p in net.named_parameters()}
    grads |= {n: b.clone() for n, b in net.named_buffers() if "running" in n}
    return counts, logits, grads


@pytest.mark.parametrize("name", ["tiny", "r2plus1d_18", "swin3d_t"])
def test_checkpointing_keeps_fewer_activations_for_the_same_gradients(name):
    (count, size), logits, grads = _saved_and_grads(_network(name), name)
    for mode in ("stage", "block"):
        net = _network(name, checkpointing=mode)
        assert net.checkpointed is not None
        (c, s), out, g = _saved_and_grads(net, name)
        assert c < count and s < size / 2, (mode, c, count, s, size)
        for head in NUM_CLASSES:
            torch.testing.assert_close(out[head], logits[head])
        assert g.keys() == grads.keys()
        for key, grad in grads.items():
            torch.testing.assert_close(g[key], grad, rtol=1e-4, atol=1e-6, msg=key)


def test_evaluation_runs_the_backbones_own_forward():
    net = _network(checkpointing="stage").eval()
    calls = []
    net.backbone.register_forward_hook(lambda *args: calls.append(1))
    video, mask, views = _batch()
    with torch.no_grad():
        net(video, mask, views)
    assert calls == [1]  # the checkpointed path only runs in training, with gradients


def test_hugging_face_backbones_use_their_own_switch(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tests.models.test_hf import FRAMES, SIZE, save_tiny

    name = save_tiny("videomae", tmp_path / "videomae")
    clip = ClipInput(num_frames=FRAMES, height=SIZE, width=SIZE)
    model = MVFoulModule(backbone=name, clip=clip, speed={"checkpointing": "stage"})
    assert isinstance(model.network.backbone.model, transformers.PreTrainedModel)
    assert model.network.checkpointed is None
    hf_model = model.network.backbone.model
    assert getattr(hf_model, "is_activation_checkpointing", None) or (
        hf_model.is_gradient_checkpointing
    )


def test_finetune_gradient_checkpointing_is_block_checkpointing():
    model = MVFoulModule(
        backbone="swin3d_t",
        clip=ClipInput(num_frames=4, height=32, width=32),
        finetune=FineTuning(gradient_checkpointing=True),
    )
    assert model.speed.checkpointing == "block"
    assert model.hparams.speed["checkpointing"] == "block"
    plan_blocks = block_plan(model.network.backbone).blocks
    assert len(model.network.checkpointed.groups) == len(plan_blocks)


# -- memory format --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny", "r2plus1d_18"])
def test_channels_last_reaches_every_3d_convolution(name):
    for fmt, expected in (("channels_last_3d", True), ("contiguous", False)):
        net = _network(name, memory_format=fmt)
        seen = []

        def hook(conv, args, seen=seen):
            layout = torch.channels_last_3d
            seen.append((args[0].is_contiguous(memory_format=layout),
                         conv.weight.is_contiguous(memory_format=layout)))  # fmt: skip

        convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
        for conv in convs:
            conv.register_forward_pre_hook(hook)
        video, mask, views = _batch(name)
        net.train()
        sum(out.sum() for out in net(video, mask, views).values()).backward()
        # The clips reach the first convolution in the layout, every weight is in it (how
        # later activations come out is the kernels' choice: cuDNN keeps the layout).
        assert len(seen) == len(convs) and seen[0][0] == expected
        if expected:
            assert all(w for _, w in seen)


def test_speed_options_change_no_weight_or_name():
    plain = _network()
    fast = _network(memory_format="channels_last_3d", checkpointing="block")
    assert plain.state_dict().keys() == fast.state_dict().keys()
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in fast.state_dict().items())
    fast.load_state_dict(plain.state_dict())  # checkpoints load across options


# -- compile --------------------------------------------------------------------------------------
def test_compile_is_applied_in_place_to_what_runs(monkeypatch):
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: compiled.append((self, kw)))
    net = _network(compile="max-autotune", dynamic=True)
    assert compiled == [(net.backbone, {"mode": "max-autotune", "dynamic": True})]
    compiled.clear()
    net = _network(compile="default", checkpointing="stage")
    # Evaluation runs the backbone, training the checkpointed plan: both compiled.
    assert [m for m, _ in compiled] == [net.backbone, net.checkpointed]
    compiled.clear()
    _network()
    assert compiled == []


@pytest.mark.slow  # torch.compile of the tiny network on the CPU: ~1 min; the wiring above
@pytest.mark.parametrize("checkpointing", ["off", "stage"])
def test_compiled_logits_and_gradients_equal_eager(checkpointing):
    eager = _network(checkpointing=checkpointing)
    compiled = _network(compile="default", checkpointing=checkpointing)
    _, logits, grads = _saved_and_grads(eager, "tiny")
    _, out, g = _saved_and_grads(compiled, "tiny")
    for head in NUM_CLASSES:
        torch.testing.assert_close(out[head], logits[head], rtol=1e-4, atol=1e-4)
    for key, grad in grads.items():
        torch.testing.assert_close(g[key], grad, rtol=1e-3, atol=1e-4, msg=key)
    video, mask, _ = _batch()
    with torch.no_grad():
        for head, value in compiled.eval()(video, mask).items():
            torch.testing.assert_close(value, eager.eval()(video, mask)[head], rtol=1e-4, atol=1e-4)


def test_a_copy_and_the_export_run_uncompiled(tmp_path):
    net = _network(compile="default", memory_format="channels_last_3d", checkpointing="stage")
    plain = plain_network(net)
    assert plain.backbone._compiled_call_impl is None and not plain.training
    assert plain.checkpointed._compiled_call_impl is None
    assert net.backbone._compiled_call_impl is not None  # the network itself is untouched
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv3d)]
    assert all(c.weight.is_contiguous() for c in convs)
    assert plain.state_dict().keys() == net.state_dict().keys()
    manifest = export_network(net, tmp_path, frames=8, height=32, width=32,
                              formats=["state_dict", "torch_export"])  # fmt: skip
    assert max(manifest["parity_max_abs_error"]["torch_export"].values()) < 1e-4
    saved = torch.load(tmp_path / "model_state_dict.pt", weights_only=True)["state_dict"]
    assert saved.keys() == _network().state_dict().keys()
    copy.deepcopy(net)  # and copies (EMA, SWA) are plain modules too


# -- the options from the command line, composed with freezing and resume -------------------------
def test_options_are_typed_sections_of_the_config(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model.backbone", "tiny", "--model.speed.compile", "reduce-overhead",
              "--model.speed.checkpointing", "stage", "--trainer.benchmark", "true",
              "--print_config"])  # fmt: skip
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["speed"] == {
        "compile": "reduce-overhead", "dynamic": None, "memory_format": "contiguous",
        "checkpointing": "stage",
    }  # fmt: skip
    assert config["trainer"]["benchmark"] is True
    with pytest.raises(SystemExit):
        main(["fit", "--model.speed.checkpointing", "layer", "--print_config"])
    assert "model.speed.checkpointing" in capsys.readouterr().err


def test_fit_with_freezing_and_checkpointing_resumes_without_them(synthetic_root, tmp_path):
    common = ["--config", str(CONFIGS / "demo.yaml"), *tiny_args(synthetic_root, tmp_path),
              "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
              "--trainer.num_sanity_val_steps", "0",
              "--freezing", "mvcli.callbacks.freezing.GradualFreezing",
              "--freezing.freeze_epochs", "1", "--freezing.unfreeze_every", "1"]  # fmt: skip
    fit = main(["fit", *common, "--trainer.max_epochs", "2",
                "--model.speed.checkpointing", "stage",
                "--model.speed.memory_format", "channels_last_3d"])  # fmt: skip
    model = fit.model
    assert model.network.checkpointed is not None
    stem = model.network.backbone.stem[0].weight
    assert stem.is_contiguous(memory_format=torch.channels_last_3d)
    layer2 = model.network.backbone.layer2[0].weight
    assert layer2.requires_grad and not stem.requires_grad  # layer2 unfrozen at epoch 1
    last = Path(fit.trainer.log_dir) / "checkpoints/last.ckpt"
    resumed = main(["fit", *common, "--trainer.max_epochs", "3", "--ckpt_path", str(last)])
    assert resumed.trainer.current_epoch == 3
    assert resumed.model.network.checkpointed is None
    assert resumed.model.state_dict().keys() == model.state_dict().keys()


def test_out_of_memory_splits_run_through_the_checkpointed_blocks(
    synthetic_root, tmp_path, monkeypatch
):
    monkeypatch.setenv(FAULT_ENV, "2")  # batches of 4 actions split into 2 + 2
    fit = main(["fit", "--config", str(CONFIGS / "demo.yaml"), "--config",
                str(CONF / "oom_split.yaml"), *tiny_args(synthetic_root, tmp_path),
                "--model.speed.checkpointing", "block"])  # fmt: skip
    oom = next(c for c in fit.trainer.callbacks if isinstance(c, OOMRecovery))
    assert oom.events == 1 and oom.micro_batch == 2
    assert fit.trainer.global_step == 3


def test_clip_index_picks_the_real_views_first_in_each_row():
    assert clip_index([2, 1, 3], 3, 3).tolist() == [0, 1, 3, 6, 7, 8]
    with pytest.raises(ValueError, match="num_views"):
        clip_index([2, 4], 2, 3)
