"""Backbones by name: torchvision video models (or a small CPU one) as feature extractors.

Each builder returns a :class:`Backbone`: a module mapping (N, C, T, H, W) float clips to
(N, F) features, its feature size, its natural stages (stem first, deepest last; used by
freezing) and the input sizes it accepts, checked before any training starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_weights
from torchvision.ops import StochasticDepth

from mvcli.models import hf
from mvcli.models.hf import HFModelName, is_hf

BackboneName = Literal[
    "tiny",
    "r3d_18",
    "mc3_18",
    "r2plus1d_18",
    "s3d",
    "mvit_v1_b",
    "mvit_v2_s",
    "swin3d_t",
    "swin3d_s",
]
# Any backbone: a torchvision name, or ``hf:<hub id or folder>`` (mvcli.models.hf).
AnyBackbone = BackboneName | HFModelName
BACKBONES: tuple[str, ...] = BackboneName.__args__
# Transformers: model.finetune (layer decay, drop path, block stages) applies.
TRANSFORMERS = ("mvit_v1_b", "mvit_v2_s", "swin3d_t", "swin3d_s")
# torchvision's video ResNets' statistics (Kinetics-400); ``tiny`` uses them too.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


@dataclass
class InputConstraints:
    """Input sizes a backbone accepts: minimums, divisors, or one fixed size."""

    min_frames: int = 1
    min_size: int = 16
    frame_multiple: int = 1
    size_multiple: int = 1
    fixed: tuple[int, int, int] | None = None  # (T, H, W) the model was built for
    fixed_size: tuple[int, int] | None = None  # (H, W) only, any accepted frame count
    fixed_reason: str = "the input torchvision builds it for, and its pretrained weights fit"

    def check(self, name: str, frames: int, height: int, width: int) -> None:
        problems = []
        if self.fixed is not None and (frames, height, width) != self.fixed:
            problems.append(
                f"needs exactly {self.fixed[0]} frames of {self.fixed[1]}x{self.fixed[2]} "
                f"({self.fixed_reason})"
            )
        if self.fixed_size is not None and (height, width) != self.fixed_size:
            problems.append(
                f"needs clips of exactly {self.fixed_size[0]}x{self.fixed_size[1]} "
                f"({self.fixed_reason})"
            )
        if frames < self.min_frames:
            problems.append(f"needs at least {self.min_frames} frames")
        if min(height, width) < self.min_size:
            problems.append(f"needs height and width >= {self.min_size}")
        if frames % self.frame_multiple:
            problems.append(f"needs a frame count divisible by {self.frame_multiple}")
        if height % self.size_multiple or width % self.size_multiple:
            problems.append(f"needs height and width divisible by {self.size_multiple}")
        if problems:
            raise ValueError(
                f"backbone {name!r} cannot take clips of {frames} frames at {height}x{width}: "
                + "; ".join(problems)
                + " (set data.frames_per_clip / data.img_height / data.img_width accordingly)"
            )


@dataclass
class Backbone:
    name: str
    module: nn.Module
    feature_dim: int
    stages: list[nn.Module] = field(default_factory=list)
    constraints: InputConstraints = field(default_factory=InputConstraints)
    # Names of the stages (parameter groups ``backbone.<name>``); None: their attribute paths.
    stage_names: list[str] | None = None
    # Transformers: the embeddings then each block (final norm with the last), the stages
    # under layer decay or ``finetune.block_stages``; None: no blocks.
    blocks: list[nn.Module] | None = None


@dataclass(frozen=True)
class FineTuning:
    """Fine-tuning knobs of transformer backbones (``model.finetune.*``): Hugging Face
    models (``hf:...``), torchvision's MViT and Swin3D.

    Args:
        layer_decay: layer-wise LR decay (e.g. 0.75): the backbone's stages become its
            blocks (embeddings first) and block ``i`` of ``n`` gets the backbone LR x
            ``layer_decay ** (n - i)`` (the last block x ``layer_decay``, the heads the
            optimizer's LR); None: one LR for every stage.
        drop_path: stochastic depth rate of the deepest block (linearly less for shallower
            ones); None: the model's own default (torchvision: MViT 0.2, Swin3D-T 0.1,
            Swin3D-S 0.2; Hugging Face: its config's, 0 for VideoMAE).
        gradient_checkpointing: recompute block activations in the backward pass (less
            memory, ~30% more compute): the same as ``model.speed.checkpointing: block``
            (:class:`mvcli.models.speed.SpeedOptions`, which also offers ``stage`` and works
            for every backbone).
        block_stages: use the blocks as the stages (for freezing, e.g. train the last 3
            blocks) without layer decay; always so for Hugging Face backbones.
    """

    layer_decay: float | None = None
    drop_path: float | None = None
    gradient_checkpointing: bool = False
    block_stages: bool = False

    def __post_init__(self) -> None:
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(
                f"model.finetune.layer_decay must be in (0, 1], got {self.layer_decay}"
            )
        if self.drop_path is not None and not 0 <= self.drop_path < 1:
            raise ValueError(f"model.finetune.drop_path must be in [0, 1), got {self.drop_path}")

    @property
    def is_default(self) -> bool:
        return self == FineTuning()

    @classmethod
    def of(cls, value: FineTuning | dict | None) -> FineTuning:
        if value is None:
            return cls()
        return cls(**value) if isinstance(value, dict) else value


class TinyVideoNet(nn.Module):
    """A ~160k-parameter 3D CNN: fast enough to train on two CPU cores (tests and the demo).

    Global max pooling, not average: a small moving object would be diluted by the background
    in a spatial mean (on the synthetic set, max pooling learnt the action head in 2 epochs
    where average pooling needed 8+).
    """

    def __init__(self, width: int = 24) -> None:
        super().__init__()

        def block(cin: int, cout: int, kernel, stride) -> nn.Sequential:
            pad = tuple(k // 2 for k in kernel)
            return nn.Sequential(
                nn.Conv3d(cin, cout, kernel, stride, pad, bias=False),
                nn.BatchNorm3d(cout),
                nn.ReLU(inplace=True),
            )

        self.stem = block(3, width, (3, 5, 5), (1, 2, 2))
        self.layer1 = block(width, width * 2, (3, 3, 3), (2, 2, 2))
        self.layer2 = block(width * 2, width * 4, (3, 3, 3), (2, 2, 2))
        self.pool = nn.AdaptiveMaxPool3d(1)
        self.out_dim = width * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.layer2(self.layer1(self.stem(x)))).flatten(1)


class FeaturesThenPool(nn.Module):
    """S3D without its fixed-size classifier pooling, so any input large enough works."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool3d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def _tiny(name: str, **kwargs) -> Backbone:
    net = TinyVideoNet()
    return Backbone(name, net, net.out_dim, [net.stem, net.layer1, net.layer2])


def _video_resnet(name: str, **kwargs) -> Backbone:
    net = get_model(name)
    net.fc = nn.Identity()
    stages = [net.stem, net.layer1, net.layer2, net.layer3, net.layer4]
    return Backbone(name, net, 512, stages)


def _s3d(name: str, **kwargs) -> Backbone:
    f = get_model(name).features
    stages = [f[0:2], f[2:5], f[5:8], f[8:14], f[14:16]]
    return Backbone(name, FeaturesThenPool(f), 1024, stages)


def _mvit(name: str, **kwargs) -> Backbone:
    net = get_model(name, **kwargs)
    net.head = nn.Identity()
    blocks = net.blocks
    stages = [
        nn.ModuleList([net.conv_proj, net.pos_encoding]),
        blocks[0:1],
        blocks[1:3],
        blocks[3:14],
        nn.ModuleList([*blocks[14:], net.norm]),
    ]
    embed = nn.ModuleList([net.conv_proj, net.pos_encoding])
    every = [embed, *blocks[:-1], nn.ModuleList([blocks[-1], net.norm])]
    return Backbone(name, net, 768, stages, blocks=every)


def _swin3d(name: str, stochastic_depth_prob: float | None = None) -> Backbone:
    net = get_model(name)  # its builders fix stochastic_depth_prob: set on the blocks below
    net.head = nn.Identity()
    if stochastic_depth_prob is not None:
        drops = [m for m in net.modules() if isinstance(m, StochasticDepth)]
        for i, drop in enumerate(drops):  # torchvision's schedule: linear in the block index
            drop.p = stochastic_depth_prob * i / max(len(drops) - 1, 1)
    f = net.features
    stages = [net.patch_embed, f[0], f[1:3], f[3:5], nn.ModuleList([*f[5:], net.norm])]
    # Blocks: a patch merging layer goes with the block after it.
    every: list[nn.Module] = [net.patch_embed]
    merge = None
    for part in f:
        if isinstance(part, nn.Sequential):
            for block in part:
                every.append(block if merge is None else nn.ModuleList([merge, block]))
                merge = None
        else:
            merge = part
    every[-1] = nn.ModuleList([every[-1], net.norm])
    return Backbone(name, net, 768, stages, blocks=every)


MVIT_INPUT = (16, 224, 224)
_FAMILIES: dict[str, Callable[..., Backbone]] = {
    "tiny": _tiny,
    "r3d_18": _video_resnet,
    "mc3_18": _video_resnet,
    "r2plus1d_18": _video_resnet,
    "s3d": _s3d,
    "mvit_v1_b": _mvit,
    "mvit_v2_s": _mvit,
    "swin3d_t": _swin3d,
    "swin3d_s": _swin3d,
}


def default_weights(name: str) -> WeightsEnum | None:
    """torchvision's default pretrained weights of a backbone (None for ``tiny``)."""
    if name == "tiny" or is_hf(name):  # mvcli's own, or Hugging Face's (hf.preprocessing)
        return None
    return get_model_weights(name).DEFAULT


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) in [0, 1] units the backbone's pretrained weights expect.

    Read from torchvision's weights (their ``transforms()``), so MViT gets 0.45/0.225 and
    Swin3D ImageNet's statistics; ``tiny`` (no weights) uses the Kinetics statistics of the
    torchvision ResNets. Used whether or not the weights are loaded, so a run started from
    random weights preprocesses like one fine-tuned from them.
    """
    if is_hf(name):  # the model's video processor
        return hf.normalization(name)
    weights = default_weights(name)
    if weights is None:
        return KINETICS_MEAN, KINETICS_STD
    transform = weights.transforms()
    return tuple(float(v) for v in transform.mean), tuple(float(v) for v in transform.std)


def build_backbone(
    name: str,
    frames: int,
    height: int,
    width: int,
    pretrained: str | None = None,
    finetune: FineTuning | None = None,
    checkpointing: bool = False,
) -> Backbone:
    """Build ``name`` for clips of ``frames`` x ``height`` x ``width``, checking they fit.

    Args:
        name: one of :data:`BACKBONES`, or ``hf:<hub id or folder>`` (a Hugging Face video
            model with its weights: :mod:`mvcli.models.hf`).
        frames: frames per clip.
        height: clip height in pixels.
        width: clip width in pixels.
        pretrained: None (random init; a Hugging Face model: its own weights), ``"torchvision"``
            (torchvision's default weights, through its weights API: downloaded once into the
            torch hub cache, checksum verified) or a path to a weights file.
        finetune: transformer fine-tuning knobs (:class:`FineTuning`).
        checkpointing: activation checkpointing is on (``model.speed.checkpointing``): a
            Hugging Face model's own switch is turned on here; torchvision backbones are
            checkpointed by the network (:mod:`mvcli.models.speed`).
    """
    finetune = FineTuning.of(finetune)
    if is_hf(name):
        if pretrained == "torchvision":
            raise ValueError(f"{name} has no torchvision weights: its own are loaded")
        # The config is read (and the input checked) before the weights.
        limits = InputConstraints(**hf.constraints(name))
        limits.check(name, frames, height, width)
        checkpointing = checkpointing or finetune.gradient_checkpointing
        built = hf.build_hf_backbone(name, finetune, checkpointing)
        backbone = Backbone(name, constraints=limits, **built)
        if pretrained is not None:
            load_weights(backbone, _weights_path(pretrained))
        return backbone
    if name not in BACKBONES:
        raise ValueError(
            f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}, or "
            "hf:<Hugging Face hub id or save_pretrained folder>"
        )
    # Checked before building: it is cheaper, and clearer than a constructor's error.
    _CONSTRAINTS[name].check(name, frames, height, width)
    transformer = name in TRANSFORMERS
    if not finetune.is_default and not transformer:
        raise ValueError(
            f"model.finetune applies to transformer backbones ({', '.join(TRANSFORMERS)}, "
            f"hf:...); {name!r} is not one"
        )
    kwargs = {}
    if finetune.drop_path is not None:
        kwargs["stochastic_depth_prob"] = finetune.drop_path
    backbone = _FAMILIES[name](name, **kwargs)
    backbone.constraints = _CONSTRAINTS[name]
    if pretrained == "torchvision":
        load_state(backbone, torchvision_state_dict(name), f"torchvision weights of {name}")
    elif pretrained is not None:
        load_weights(backbone, _weights_path(pretrained))
    if backbone.blocks and (finetune.layer_decay is not None or finetune.block_stages):
        backbone.stages = backbone.blocks
        backbone.stage_names = [
            "embeddings",
            *(f"block{i}" for i in range(len(backbone.blocks) - 1)),
        ]
    return backbone


# What each backbone accepts, known before construction. S3D's strided stem and max-pools
# need 8 frames and 32 px to leave a non-empty map. torchvision builds MViT's positional
# tables for 16 frames of 224x224 and its builders take no other size (the Kinetics weights
# fit only that size too): MViT runs at its native input, other sizes are refused.
_CONSTRAINTS = {
    "tiny": InputConstraints(1, 8),
    "r3d_18": InputConstraints(1, 16),
    "mc3_18": InputConstraints(1, 16),
    "r2plus1d_18": InputConstraints(1, 16),
    "s3d": InputConstraints(8, 32),
    "mvit_v1_b": InputConstraints(fixed=MVIT_INPUT),
    "mvit_v2_s": InputConstraints(fixed=MVIT_INPUT),
    "swin3d_t": InputConstraints(2, 32),
    "swin3d_s": InputConstraints(2, 32),
}


def _weights_path(pretrained: str) -> Path:
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {path} not found (model.pretrained)")
    return path


def cached_weights_path(name: str) -> Path:
    """Where the torch hub cache keeps the backbone's default torchvision weights."""
    url = default_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def torchvision_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The default torchvision weights of ``name``, through torchvision's weights API.

    From the torch hub cache when there; otherwise downloaded into it once, with its
    checksum (the hash in the file name) verified. Offline, one error names the file and
    where to put it.
    """
    weights = default_weights(name)
    if weights is None:
        raise ValueError(f"backbone {name!r} has no torchvision weights; use a weights file path")
    path = cached_weights_path(name)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except OSError as err:  # URLError, timeouts, DNS: offline or blocked
        raise FileNotFoundError(
            f"could not download the torchvision weights of {name} ({err}). Offline, fetch "
            f"{weights.url} on a connected machine and put it at {path} (the torch hub cache; "
            "set TORCH_HOME to move it), or pass model.pretrained=/path/to/weights.pth"
        ) from None
    except RuntimeError as err:  # torch.hub's checksum check, or an unreadable file
        raise ValueError(
            f"torchvision weights of {name} at {path} are damaged ({err}): delete the file "
            "to download it again"
        ) from None


def load_weights(backbone: Backbone, path: Path) -> None:
    """Load a weights file into the backbone (see :func:`load_state`), naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors alike: name the file
        raise ValueError(f"weights file {path} is not a readable torch file: {err}") from None
    load_state(backbone, state, f"weights file {path}")


def load_state(backbone: Backbone, state, source: str) -> None:
    """Load a state dict into the backbone, ignoring classifier heads; fail on anything else."""
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]  # a Lightning checkpoint (ours included) or a wrapper
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{source} holds no state dict (name -> tensor)")
    if any(k.startswith("network.backbone.") for k in state):  # an mvcli checkpoint
        state = {k: v for k, v in state.items() if k.startswith("network.backbone.")}
    own = backbone.module.state_dict()
    state = {_strip_prefix(k): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k in own or not _is_head(k)}
    # Same names, other shapes (r3d_18 weights into mc3_18): load_state_dict would raise a
    # RuntimeError that never names the file.
    resized = sorted(k for k, v in state.items() if k in own and v.shape != own[k].shape)
    if resized:
        raise ValueError(
            f"{source} does not fit backbone {backbone.name!r}: other shapes for "
            f"{resized[:5]}{'...' if len(resized) > 5 else ''}"
        )
    missing, unexpected = backbone.module.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise ValueError(
            f"{source} does not fit backbone {backbone.name!r}: "
            f"missing {sorted(missing)[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {sorted(unexpected)[:5]}{'...' if len(unexpected) > 5 else ''}"
        )


def _strip_prefix(key: str) -> str:
    # Our own checkpoints nest the backbone under network.backbone.
    for prefix in ("network.backbone.", "backbone.module.", "module."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _is_head(key: str) -> bool:
    return key.split(".")[0] in ("fc", "head", "classifier")
