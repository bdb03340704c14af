"""MultiViewNetwork on the tiny backbone: uint8 views + mask in, one logit set per head out."""

from __future__ import annotations

import pytest
import torch

from mvcli.models.backbones import build_backbone
from mvcli.models.network import MultiViewNetwork

NUM_CLASSES = {"offence_severity": 4, "action": 8}
MEAN = (0.43216, 0.394666, 0.37645)
STD = (0.22803, 0.22145, 0.216989)
T, H, W = 8, 32, 32
POOLINGS = ["max", "mean", "attention"]


def _network(pooling: str = "max", head_dropout: float = 0.0) -> MultiViewNetwork:
    torch.manual_seed(0)
    net = MultiViewNetwork(
        build_backbone("tiny", T, H, W), pooling, NUM_CLASSES, MEAN, STD, head_dropout
    )
    # Non-trivial BatchNorm statistics, so eval mode is not an identity normalisation.
    net.train()
    with torch.no_grad():
        net(*_batch(seed=5))
    return net.eval()


def _batch(seed: int = 0, views: int = 2):
    """3 actions of up to `views` views; the second action has one real view."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(0, 256, (3, views, 3, T, H, W), dtype=torch.uint8, generator=g)
    mask = torch.ones(3, views, dtype=torch.bool)
    mask[1, 1:] = False
    return video, mask


def _normalise(video: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(3, 1, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1, 1)
    return (video.float() / 255 - mean) / std


@pytest.mark.parametrize("pooling", POOLINGS)
def test_output_shapes(pooling):
    net = _network(pooling)
    video, mask = _batch()
    with torch.no_grad():
        out = net(video, mask)
    assert set(out) == set(NUM_CLASSES)
    assert out["offence_severity"].shape == (3, 4)
    assert out["action"].shape == (3, 8)
    for logits in out.values():
        assert logits.dtype == torch.float32
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("pooling", POOLINGS)
def test_action_does_not_depend_on_padded_views(pooling):
    net = _network(pooling)
    video, mask = _batch(views=3)
    mask[2, 2] = False
    with torch.no_grad():
        reference = net(video, mask)
        # Whatever the padded views hold...
        garbage = video.clone()
        garbage[~mask] = 255
        dirty = net(garbage, mask)
        # ...and each action alone, with only its real views (no padding at all).
        alone = [net(video[b : b + 1, mask[b]], mask[b : b + 1, mask[b]]) for b in range(3)]
    for head in NUM_CLASSES:
        torch.testing.assert_close(dirty[head], reference[head], rtol=0, atol=0)
        for b in range(3):
            torch.testing.assert_close(reference[head][b], alone[b][head][0], rtol=0, atol=1e-5)


def test_padded_views_are_never_run_and_features_are_zero():
    net = _network()
    video, mask = _batch(views=3)
    mask[0, 1] = False  # padding in the middle too
    seen: list[torch.Tensor] = []
    handle = net.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            features = net.features(video, mask)
            net(video, mask)
    finally:
        handle.remove()
    assert len(seen) == 2  # one backbone call per forward, all real views batched
    for clips in seen:
        assert clips.shape == (int(mask.sum()), 3, T, H, W)
        torch.testing.assert_close(clips, _normalise(video[mask]), rtol=0, atol=1e-5)
    assert features.shape == (3, 3, _feature_dim(net))
    assert (features[~mask] == 0).all()
    assert (features[mask].abs().sum(-1) > 0).all()


def test_uint8_input_equals_normalised_float_path():
    net = _network("attention")
    video, mask = _batch()
    with torch.no_grad():
        out = net(video, mask)
        # The same computation by hand: (x / 255 - mean) / std through the backbone, features
        # scattered back to their views, pooled, heads.
        feats = torch.zeros(3, 2, _feature_dim(net))
        feats[mask] = net.backbone(_normalise(video[mask]))
        pooled = net.pooling(feats, mask)
        for head, layer in net.heads.items():
            torch.testing.assert_close(out[head], layer(pooled), rtol=0, atol=1e-5)
        # A float tensor with the same 0..255 values takes the same path.
        as_float = net(video.float(), mask)
    for head in NUM_CLASSES:
        torch.testing.assert_close(as_float[head], out[head], rtol=0, atol=1e-5)


def test_normalisation_buffers_are_not_saved():
    """They follow from the configuration, so checkpoints stay loadable if it changes."""
    state = _network().state_dict()
    assert "scale" not in state and "shift" not in state
    assert any(k.startswith("backbone.") for k in state)
    assert any(k.startswith("heads.action.") for k in state)


def test_eval_mode_is_deterministic():
    net = _network("attention", head_dropout=0.5)
    video, mask = _batch()
    with torch.no_grad():
        first = net(video, mask)
        second = net(video, mask)
    for head in NUM_CLASSES:
        assert torch.equal(first[head], second[head])
    # Dropout is live in training mode; eval really switches it off.
    net.train()
    net.backbone.eval()  # keep BatchNorm statistics fixed: only dropout differs
    with torch.no_grad():
        dropped = net(video, mask)
    assert not torch.equal(dropped["action"], first["action"])


def test_gradient_reaches_backbone_and_heads():
    net = _network("attention").train()
    video, mask = _batch()
    out = net(video, mask)
    sum(o.sum() for o in out.values()).backward()
    for name, p in net.named_parameters():
        if name == "pooling.score.2.bias":
            continue  # softmax is shift invariant: no gradient for the score's last bias
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def _feature_dim(net) -> int:
    return next(iter(net.heads.values()))[-1].in_features
