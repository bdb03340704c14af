"""Backbones: every name builds and extracts features at its smallest accepted size, stages
partition the parameters, input constraints fail early with a helpful message, and weights
load from files or the torch hub cache (never downloaded)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import pytest
import torch
from torch import nn
from torchvision.models import video as tvv

from mvcli.models.backbones import (
    BACKBONES,
    Backbone,
    InputConstraints,
    build_backbone,
    load_weights,
    normalization,
)

# Smallest (T, H, W) each backbone's constraints accept. MViT runs at torchvision's native
# input only (16 frames of 224x224).
SMALLEST = {
    "tiny": (1, 8, 8),
    "r3d_18": (1, 16, 16),
    "mc3_18": (1, 16, 16),
    "r2plus1d_18": (1, 16, 16),
    "s3d": (8, 32, 32),
    "mvit_v1_b": (16, 224, 224),
    "mvit_v2_s": (16, 224, 224),
    "swin3d_t": (2, 32, 32),
    "swin3d_s": (2, 32, 32),
}
FEATURE_DIM = {
    "tiny": 96,
    "r3d_18": 512,
    "mc3_18": 512,
    "r2plus1d_18": 512,
    "s3d": 1024,
    "mvit_v1_b": 768,
    "mvit_v2_s": 768,
    "swin3d_t": 768,
    "swin3d_s": 768,
}
DATA_OPTIONS = ("data.frames_per_clip", "data.img_height", "data.img_width")


def test_tables_cover_every_backbone():
    assert set(SMALLEST) == set(BACKBONES) == set(FEATURE_DIM)


MVITS = [n for n in BACKBONES if n.startswith("mvit")]


@pytest.fixture(scope="module", params=BACKBONES)
def built(request) -> Backbone:
    """Each backbone built once (random init) at its smallest size, in eval mode (builds take
    well under a second each on one thread, see conftest.py)."""
    torch.manual_seed(0)
    backbone = build_backbone(request.param, *SMALLEST[request.param])
    backbone.module.eval()
    return backbone


def _smallest_accepted(c: InputConstraints) -> tuple[int, int, int]:
    if c.fixed is not None:
        return c.fixed
    frames = math.ceil(c.min_frames / c.frame_multiple) * c.frame_multiple
    size = math.ceil(c.min_size / c.size_multiple) * c.size_multiple
    return frames, size, size


def _named_params(module: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in module.named_parameters()}


# -- building and features -----------------------------------------------------------------
# MViT's forward at its native 16x224x224 takes ~10 s here: slow; its stages and
# constraints are still checked by the default tests below.
@pytest.mark.parametrize(
    "built",
    [pytest.param(n, marks=pytest.mark.slow) if n in MVITS else n for n in BACKBONES],
    indirect=True,
)
def test_forward_at_smallest_size(built: Backbone):
    name = built.name
    assert built.feature_dim == FEATURE_DIM[name]
    assert _smallest_accepted(built.constraints) == SMALLEST[name]
    frames, height, width = SMALLEST[name]
    built.constraints.check(name, frames, height, width)  # accepted: no error
    # The stages must run in order (stem first, deepest last): record which stage each
    # parameterised submodule belongs to, in call order.
    owner = {}
    for index, stage in enumerate(built.stages):
        for module in stage.modules():
            if next(module.parameters(recurse=False), None) is not None:
                owner[module] = index
    calls: list[int] = []
    handles = [m.register_forward_hook(lambda m, i, o: calls.append(owner[m])) for m in owner]
    x = torch.randn(2, 3, frames, height, width)
    try:
        with torch.no_grad():
            y = built.module(x)
    finally:
        for h in handles:
            h.remove()
    assert y.shape == (2, built.feature_dim)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert not torch.equal(y[0], y[1])  # features depend on the clip
    assert set(calls) == set(range(len(built.stages))), "every stage runs"
    assert calls == sorted(calls), "stages are listed in the order the input flows through"


def test_stages_partition_parameters(built: Backbone):
    all_params = _named_params(built.module)
    submodules = {id(m) for m in built.module.modules()}
    assert built.stages, "stages list is empty"
    seen: set[int] = set()
    for index, stage in enumerate(built.stages):
        # A stage is a submodule, or a container (slice / ModuleList) of submodules.
        assert id(stage) in submodules or all(id(c) in submodules for c in stage.children()), (
            f"{built.name} stage {index} is not part of the module"
        )
        ids = {id(p) for p in stage.parameters()}
        assert ids, f"{built.name} stage {index} has no parameters"
        assert ids <= set(all_params), f"{built.name} stage {index} has foreign parameters"
        overlap = sorted(all_params[i] for i in ids & seen)
        assert not overlap, f"{built.name} stage {index} shares parameters: {overlap[:5]}"
        seen |= ids
    uncovered = sorted(all_params[i] for i in set(all_params) - seen)
    assert not uncovered, f"{built.name}: parameters in no stage: {uncovered[:10]}"


@pytest.mark.parametrize("built", [n for n in BACKBONES if n not in MVITS], indirect=True)
def test_accepted_non_minimal_size_runs(built: Backbone):
    """Constraints are honest: a larger, odd-sized clip they accept really runs."""
    assert built.constraints.fixed is None
    frames, height, width = SMALLEST[built.name]
    size = (frames + 1, height + 1, width + 7)
    built.constraints.check(built.name, *size)
    with torch.no_grad():
        y = built.module(torch.randn(1, 3, *size))
    assert y.shape == (1, built.feature_dim)


# -- input constraints ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "size", "problem"),
    [
        ("s3d", (4, 32, 32), "at least 8 frames"),
        ("s3d", (8, 24, 32), "height and width >= 32"),
        ("r3d_18", (4, 8, 16), "height and width >= 16"),
        ("tiny", (1, 4, 8), "height and width >= 8"),
        ("mvit_v1_b", (16, 48, 48), "needs exactly 16 frames of 224x224"),
        ("mvit_v2_s", (16, 224, 200), "needs exactly 16 frames of 224x224"),
        # Too small for torchvision's constructor itself: still a ValueError, before building.
        ("mvit_v2_s", (1, 32, 32), "needs exactly 16 frames of 224x224"),
    ],
)
def test_constraint_errors_name_backbone_and_options(name, size, problem):
    with pytest.raises(ValueError) as err:
        build_backbone(name, *size)
    message = str(err.value)
    assert repr(name) in message
    assert f"{size[0]} frames at {size[1]}x{size[2]}" in message
    assert problem in message
    for option in DATA_OPTIONS:
        assert option in message


@pytest.mark.parametrize("built", MVITS, indirect=True)
def test_mvit_accepts_only_its_built_size(built: Backbone):
    frames, height, width = SMALLEST[built.name]
    with pytest.raises(ValueError, match="needs exactly 16 frames of 224x224"):
        built.constraints.check(built.name, frames * 2, height, width)


def test_unknown_backbone():
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet50'.*r2plus1d_18"):
        build_backbone("resnet50", 8, 32, 32)


# -- pretrained weights ------------------------------------------------------------------
def _outputs(backbone: Backbone, size: tuple[int, int, int]) -> torch.Tensor:
    backbone.module.eval()
    with torch.no_grad():
        return backbone.module(torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("layout", ["plain", "wrapped", "with_head"])
@pytest.mark.parametrize("name", ["tiny", "mc3_18"])
def test_weights_file_round_trip(tmp_path, name, layout):
    size = SMALLEST[name]
    torch.manual_seed(0)
    source = build_backbone(name, *size)
    # Non-trivial BatchNorm statistics, so the buffers must load too.
    source.module.train()
    with torch.no_grad():
        source.module(torch.rand(3, 3, *size) * 3 + 1)
    expected = _outputs(source, size)
    state = dict(source.module.state_dict())
    if layout == "with_head":
        state["fc.weight"] = torch.randn(400, source.feature_dim)
        state["fc.bias"] = torch.randn(400)
    if layout == "wrapped":
        state = {"state_dict": state, "epoch": 3}
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)

    torch.manual_seed(1)
    fresh = build_backbone(name, *size)
    assert not torch.equal(_outputs(fresh, size), expected)  # another init differs...
    torch.manual_seed(1)
    loaded = build_backbone(name, *size, pretrained=str(path))
    assert torch.equal(_outputs(loaded, size), expected)  # ...the loaded one is identical


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("tiny", "s3d"),  # other parameter names
        ("mc3_18", "r3d_18"),  # same names, other kernel shapes
    ],
)
def test_weights_of_another_backbone_fail(tmp_path, source, target):
    path = tmp_path / f"{source}_weights.pth"
    torch.save(build_backbone(source, *SMALLEST[source]).module.state_dict(), path)
    with pytest.raises(ValueError) as err:
        build_backbone(target, *SMALLEST[target], pretrained=str(path))
    assert str(path) in str(err.value)
    assert repr(target) in str(err.value)


def test_weights_with_unknown_non_head_key_fail(tmp_path):
    backbone = build_backbone("tiny", 1, 8, 8)
    state = backbone.module.state_dict() | {"extra.weight": torch.zeros(1)}
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"unexpected \['extra.weight'\]"):
        load_weights(backbone, path)


def test_missing_weights_file(tmp_path):
    path = tmp_path / "nope" / "weights.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        build_backbone("tiny", 1, 8, 8, pretrained=str(path))


def test_tiny_has_no_torchvision_weights():
    with pytest.raises(ValueError, match="'tiny' has no torchvision weights"):
        build_backbone("tiny", 1, 8, 8, pretrained="torchvision")


@pytest.fixture
def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr("urllib.request.urlopen", refuse)


@pytest.fixture(params=["TORCH_HOME", "set_dir"])
def hub_dir(request, tmp_path, monkeypatch, no_download) -> Path:
    """An empty torch hub directory, chosen by $TORCH_HOME or torch.hub.set_dir."""
    if request.param == "TORCH_HOME":
        monkeypatch.setattr(torch.hub, "_hub_dir", None)  # as if set_dir was never called
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        hub = tmp_path / "torch" / "hub"
    else:
        hub = tmp_path / "my_hub"
        monkeypatch.setattr(torch.hub, "_hub_dir", None)
        torch.hub.set_dir(str(hub))  # undone by monkeypatch at teardown
    assert Path(torch.hub.get_dir()) == hub
    return hub


def test_torchvision_weights_offline_names_the_file(hub_dir, monkeypatch):
    """Offline (the download fails): one message naming the file and where to put it."""

    def offline(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    url = tvv.MC3_18_Weights.DEFAULT.url
    expected = hub_dir / "checkpoints" / Path(urlparse(url).path).name
    with pytest.raises(FileNotFoundError) as err:
        build_backbone("mc3_18", 1, 16, 16, pretrained="torchvision")
    message = str(err.value)
    assert str(expected) in message
    assert url in message
    assert "no route to host" in message
    assert "model.pretrained" in message
    assert not expected.exists()


def test_torchvision_weights_downloaded_through_the_weights_api(hub_dir, monkeypatch):
    """Online: torch.hub fetches the URL into the hub cache (checksum checked), once."""
    torch.manual_seed(0)
    source = build_backbone("mc3_18", 1, 16, 16)
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        torch.save(source.module.state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    loaded = build_backbone("mc3_18", 1, 16, 16, pretrained="torchvision")
    assert torch.equal(_outputs(loaded, (1, 16, 16)), _outputs(source, (1, 16, 16)))
    url = tvv.MC3_18_Weights.DEFAULT.url
    assert calls == [(url, Path(urlparse(url).path).name.split("-")[-1].split(".")[0])]
    build_backbone("mc3_18", 1, 16, 16, pretrained="torchvision")  # from the cache now
    assert len(calls) == 1


def test_torchvision_weights_from_cache(hub_dir):
    url = tvv.MC3_18_Weights.DEFAULT.url
    cached = hub_dir / "checkpoints" / Path(urlparse(url).path).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(0)
    source = build_backbone("mc3_18", 1, 16, 16)
    # Like the real file: the Kinetics classifier is in it and must be ignored.
    state = source.module.state_dict() | {
        "fc.weight": torch.randn(400, 512),
        "fc.bias": torch.randn(400),
    }
    torch.save(state, cached)
    torch.manual_seed(1)
    loaded = build_backbone("mc3_18", 1, 16, 16, pretrained="torchvision")
    assert torch.equal(_outputs(loaded, (1, 16, 16)), _outputs(source, (1, 16, 16)))


@pytest.mark.parametrize(
    ("name", "mean", "std"),
    [
        ("mvit_v2_s", (0.45,) * 3, (0.225,) * 3),
        ("swin3d_t", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("r2plus1d_18", (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)),
        ("tiny", (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)),
    ],
)
def test_normalization_from_the_weights(name, mean, std):
    got_mean, got_std = normalization(name)
    assert got_mean == pytest.approx(mean)
    assert got_std == pytest.approx(std)


def test_pretrained_from_an_mvcli_checkpoint(tmp_path):
    """A checkpoint of ours (backbone under network.backbone.) seeds a new backbone."""
    from mvcli.task.module import ClipInput, MVFoulModule

    module = MVFoulModule(backbone="tiny", clip=ClipInput(num_frames=4, height=16, width=16))
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": module.state_dict()}, path)
    fresh = build_backbone("tiny", 4, 16, 16, pretrained=str(path))
    for name, tensor in fresh.module.state_dict().items():
        assert torch.equal(tensor, module.network.backbone.state_dict()[name]), name


@pytest.mark.parametrize("content", [b"not a torch file", None])
def test_unreadable_weights_name_the_file(tmp_path, content):
    path = tmp_path / "weights.pth"
    if content is None:
        torch.save(torch.zeros(3), path)  # a tensor, not a state dict
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="weights.pth"):
        build_backbone("tiny", 4, 16, 16, pretrained=str(path))
