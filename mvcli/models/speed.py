"""How the network runs (``model.speed``): torch.compile, memory format, activation checkpointing.

None of these changes a weight or a parameter name: checkpoints, resumed runs and exports are
the same with any of them. :class:`SpeedOptions` is the section; :class:`MultiViewNetwork
<mvcli.models.network.MultiViewNetwork>` applies it when it is built.

Activation checkpointing of torchvision backbones (which have no switch of their own) runs the
backbone as a :class:`BlockPlan`: its forward split into ``enter`` -> blocks in order ->
``leave``, each family's steps mirroring its own ``forward`` (tests/models/test_speed.py checks
the outputs are equal). Groups of blocks (a stage's, or one block) run through
``torch.utils.checkpoint`` (non-reentrant: frozen stages, DDP and torch.compile work with it);
their activations are recomputed in the backward pass instead of kept. Evaluation and
inference use the backbone's own forward. Hugging Face backbones use their model's own
per-layer switch (``gradient_checkpointing_enable``), enabled when the backbone is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.video import MViT, SwinTransformer3d, VideoResNet

from mvcli.models.backbones import Backbone, FeaturesThenPool, TinyVideoNet
from mvcli.models.hf import HFVideoBackbone
from mvcli.utils.compat import BatchNormBase

CompileMode = Literal[
    "off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
]
MemoryFormat = Literal["contiguous", "channels_last_3d"]
Checkpointing = Literal["off", "stage", "block"]


@dataclass(frozen=True)
class SpeedOptions:
    """Speed options of the network (``model.speed.*``); none changes the weights or their
    names, so checkpoints, resumed runs and exports do not depend on them.

    Args:
        compile: ``torch.compile`` mode of the backbone (``nn.Module.compile``, in place):
            ``default``, ``reduce-overhead`` (CUDA graphs: fixed shapes pay off most),
            ``max-autotune``, ``max-autotune-no-cudagraphs``; ``off``: eager. The first
            training batch compiles (minutes for the large backbones); a new shape (another
            number of real views in a batch, an out-of-memory split), a changed trainable set
            (freezing) or evaluation mode compiles again (see ``dynamic``). The Throughput
            callback logs the training time spent compiling as ``speed/compile_s`` and leaves
            it out of ``train/actions_per_s``. With ``checkpointing`` on a torchvision
            backbone, training runs the compiled checkpointed forward (one graph, the
            recomputed regions inside) and evaluation the compiled backbone.
        dynamic: torch.compile's ``dynamic``: null (automatic: the first shape change
            recompiles once with the changed sizes symbolic, which the clip count of
            training batches needs), true (symbolic sizes from the start: one compile),
            false (one graph per shape).
        memory_format: ``channels_last_3d``: the clips and the weights of every 3D
            convolution in channels-last layout (NDHWC: cuDNN's faster convolution kernels,
            with bf16/fp16 on tensor cores); ``contiguous``: PyTorch's default (NCDHW).
        checkpointing: activation checkpointing in training: ``stage``: one checkpoint per
            backbone stage (only each stage's input is kept; the most memory saved),
            ``block``: one per block (ResNet basic block, transformer block, S3D module;
            more kept, less recomputed at once); either recomputes the forward once more in
            the backward pass (about 30% more compute). Hugging Face backbones use their
            model's own per-layer switch for both. ``off``: every activation is kept.
    """

    compile: CompileMode = "off"
    dynamic: bool | None = None
    memory_format: MemoryFormat = "contiguous"
    checkpointing: Checkpointing = "off"

    def __post_init__(self) -> None:
        for name, kind in (
            ("compile", CompileMode),
            ("memory_format", MemoryFormat),
            ("checkpointing", Checkpointing),
        ):
            value = getattr(self, name)
            if value not in kind.__args__:
                raise ValueError(
                    f"model.speed.{name} must be one of {list(kind.__args__)}, got {value!r}"
                )

    @classmethod
    def of(cls, value: SpeedOptions | Mapping | None) -> SpeedOptions:
        """The options from a section, a dict (checkpoint hparams) or None (defaults)."""
        if value is None:
            return cls()
        return cls(**value) if isinstance(value, Mapping) else value

    def to_dict(self) -> dict:
        return asdict(self)


# -- activation checkpointing -------------------------------------------------------------------
@dataclass
class BlockPlan:
    """A backbone's forward as ``leave(module, block_n(...block_1(*enter(module, x))))``.

    A block takes the state (a tuple: the activations, plus MViT's ``thw`` sizes) and returns
    the next one (a tensor is a state of one).
    """

    module: nn.Module
    enter: Callable[[nn.Module, torch.Tensor], tuple]
    blocks: list[nn.Module]
    leave: Callable[[nn.Module, tuple], torch.Tensor]


def _enter(module: nn.Module, x: torch.Tensor) -> tuple:
    return (x,)


def _pool_leave(module: TinyVideoNet | FeaturesThenPool, state: tuple) -> torch.Tensor:
    return module.pool(state[0]).flatten(1)


def _resnet_leave(module: VideoResNet, state: tuple) -> torch.Tensor:
    return module.fc(module.avgpool(state[0]).flatten(1))


def _mvit_enter(module: MViT, x: torch.Tensor) -> tuple:
    x = module.conv_proj(x).flatten(2).transpose(1, 2)
    x = module.pos_encoding(x)
    return x, (module.pos_encoding.temporal_size, *module.pos_encoding.spatial_size)


def _mvit_leave(module: MViT, state: tuple) -> torch.Tensor:
    return module.head(module.norm(state[0])[:, 0])


def _swin_enter(module: SwinTransformer3d, x: torch.Tensor) -> tuple:
    return (module.pos_drop(module.patch_embed(x)),)


def _swin_leave(module: SwinTransformer3d, state: tuple) -> torch.Tensor:
    x = module.norm(state[0]).permute(0, 4, 1, 2, 3)
    return module.head(torch.flatten(module.avgpool(x), 1))


def block_plan(module: nn.Module) -> BlockPlan | None:
    """The :class:`BlockPlan` of a torchvision (or ``tiny``) backbone; None for others."""
    if isinstance(module, TinyVideoNet):
        return BlockPlan(module, _enter, [module.stem, module.layer1, module.layer2], _pool_leave)
    if isinstance(module, VideoResNet):
        layers = (module.layer1, module.layer2, module.layer3, module.layer4)
        blocks = [module.stem, *(block for layer in layers for block in layer)]
        return BlockPlan(module, _enter, blocks, _resnet_leave)
    if isinstance(module, FeaturesThenPool):  # S3D
        return BlockPlan(module, _enter, list(module.features), _pool_leave)
    if isinstance(module, MViT):
        return BlockPlan(module, _mvit_enter, list(module.blocks), _mvit_leave)
    if isinstance(module, SwinTransformer3d):
        blocks = [
            block
            for part in module.features
            for block in (part if isinstance(part, nn.Sequential) else [part])
        ]
        return BlockPlan(module, _swin_enter, blocks, _swin_leave)
    return None


def checkpoint_groups(plan: BlockPlan, stages: Sequence[nn.Module], mode: str) -> list[list]:
    """The plan's blocks in checkpointed groups: each alone (``block``), or consecutive blocks
    of the same backbone stage together (``stage``)."""
    if mode == "block":
        return [[block] for block in plan.blocks]
    owner: dict[int, int] = {}
    for i, stage in enumerate(stages):
        for m in stage.modules():
            owner.setdefault(id(m), i)
    groups: list[list] = []
    last = None
    for block in plan.blocks:
        stage = owner.get(id(block))
        if groups and stage is not None and stage == last:
            groups[-1].append(block)
        else:
            groups.append([block])
        last = stage
    return groups


class KeepStatistics:
    """Context of a recomputation: batch-norm running statistics come out as they went in.

    Recomputing runs the forward in training mode again, which would update them a second
    time per step (compiled, the recomputation is part of the graph and updates nothing).
    """

    def __init__(self, norms: list[nn.Module]) -> None:
        self.norms = norms
        self.saved: list[list[torch.Tensor]] = []

    def __enter__(self) -> KeepStatistics:
        self.saved = [[b.detach().clone() for b in m.buffers()] for m in self.norms]
        return self

    def __exit__(self, *exc) -> None:
        with torch.no_grad():
            for norm, saved in zip(self.norms, self.saved, strict=True):
                for buffer, value in zip(norm.buffers(), saved, strict=True):
                    buffer.copy_(value)
        self.saved = []


def _contexts(blocks: list[nn.Module]) -> tuple:
    # The batch norms found when the group runs (SyncBatchNorm replaces them at a DDP setup).
    norms = [m for block in blocks for m in block.modules() if _tracks_statistics(m)]
    return nullcontext(), KeepStatistics(norms)


def _run_blocks(blocks: list[nn.Module], *state):
    for block in blocks:
        out = block(*state)
        state = out if isinstance(out, tuple) else (out,)
    return state


class CheckpointedBackbone(nn.Module):
    """Runs a backbone's :class:`BlockPlan` with each group of blocks checkpointed.

    A module without parameters of its own: the backbone's modules are held in plain
    attributes, not registered, so every parameter keeps its one name (under the network's
    ``backbone``). Being a module, it is compiled in place (``nn.Module.compile``) like the
    backbone: one graph with the checkpointed regions inside.
    """

    def __init__(self, plan: BlockPlan, groups: list[list[nn.Module]]) -> None:
        super().__init__()
        self.plan = plan
        self.groups = groups

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        state = self.plan.enter(self.plan.module, clips)
        for group in self.groups:
            options = {}
            if not torch.compiler.is_compiling():  # see KeepStatistics
                options["context_fn"] = partial(_contexts, group)
            run = partial(_run_blocks, group)
            state = checkpoint(run, *state, use_reentrant=False, **options)
        return self.plan.leave(self.plan.module, state)


def _tracks_statistics(module: nn.Module) -> bool:
    return isinstance(module, BatchNormBase) and module.track_running_stats


def checkpointed_backbone(backbone: Backbone, mode: str) -> CheckpointedBackbone | None:
    """The checkpointed runner of ``backbone`` for ``mode`` (None: ``off``, or a backbone
    that checkpoints itself: Hugging Face models, switched on by ``build_backbone``)."""
    if mode == "off" or isinstance(backbone.module, HFVideoBackbone):
        return None
    plan = block_plan(backbone.module)
    if plan is None:
        raise ValueError(
            f"model.speed.checkpointing: backbone {backbone.name!r} has no block plan "
            "(mvcli.models.speed.block_plan)"
        )
    return CheckpointedBackbone(plan, checkpoint_groups(plan, backbone.stages, mode))


# -- memory format and compilation ----------------------------------------------------------------
def to_memory_format(module: nn.Module, memory_format: str) -> None:
    """The weights of every 3D convolution of ``module`` in ``memory_format`` (in place; other
    parameters have no channels-last layout, e.g. a Conv2d patch embedding stays as it is)."""
    layout = torch.channels_last_3d if memory_format == "channels_last_3d" else None
    if layout is None:
        return
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            m.to(memory_format=layout)


def compile_in_place(modules: Sequence[nn.Module], options: SpeedOptions) -> None:
    """``nn.Module.compile`` on each module (lazy: compiled at its first call). In place, so
    parameter names stay; a deep copy of a compiled module is eager again (PyTorch drops the
    compiled call when copying), which is how export gets the plain network."""
    if options.compile == "off":
        return
    for module in modules:
        module.compile(mode=options.compile, dynamic=options.dynamic)
