"""View pooling ignores padded views whatever they hold, and matches pooling by hand."""

from __future__ import annotations

import pytest
import torch

from mvcli.models.pooling import AttentionPool, MaxPool, MeanPool, build_pooling

POOLINGS = ["max", "mean", "attention"]
DIM = 6


def _batch(seed: int = 0):
    """4 actions of up to 3 views: view counts 3, 1, 2, 1 (padding at the end or middle)."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(4, 3, DIM, generator=g)
    mask = torch.tensor(
        [[True, True, True], [True, False, False], [True, True, False], [False, True, False]]
    )
    return features, mask


def _pool(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_pooling(name, DIM)


def _by_hand(pool: torch.nn.Module, name: str, real: torch.Tensor) -> torch.Tensor:
    """Pool (V_real, F) features of one action, written independently of the module."""
    if name == "max":
        return real.max(dim=0).values
    if name == "mean":
        return real.sum(dim=0) / real.shape[0]
    linear1, _, linear2 = pool.score
    scores = torch.tanh(real @ linear1.weight.T + linear1.bias) @ linear2.weight.T + linear2.bias
    weights = torch.exp(scores - scores.max())
    weights = weights / weights.sum()
    return (weights * real).sum(dim=0)


def test_build_pooling_types():
    assert isinstance(build_pooling("max", DIM), MaxPool)
    assert isinstance(build_pooling("mean", DIM), MeanPool)
    assert isinstance(build_pooling("attention", DIM), AttentionPool)
    with pytest.raises(ValueError, match="unknown pooling 'sum'"):
        build_pooling("sum", DIM)


@pytest.mark.parametrize("name", POOLINGS)
def test_matches_pooling_over_real_views_only(name):
    pool = _pool(name)
    features, mask = _batch()
    out = pool(features, mask)
    assert out.shape == (4, DIM)
    for b in range(4):
        expected = _by_hand(pool, name, features[b][mask[b]])
        torch.testing.assert_close(out[b], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("garbage", [1e6, -1e6, 3e4])
@pytest.mark.parametrize("name", POOLINGS)
def test_padded_views_do_not_matter(name, garbage):
    pool = _pool(name)
    features, mask = _batch()
    reference = pool(features, mask)
    dirty = features.clone()
    dirty[~mask] = garbage
    torch.testing.assert_close(pool(dirty, mask), reference, rtol=0, atol=0)
    noisy = features.clone()
    noisy[~mask] = torch.randn(int((~mask).sum()), DIM) * 1e5
    torch.testing.assert_close(pool(noisy, mask), reference, rtol=0, atol=0)


@pytest.mark.parametrize("name", POOLINGS)
def test_single_real_view_is_passed_through(name):
    pool = _pool(name)
    features, mask = _batch()
    out = pool(features, mask)
    torch.testing.assert_close(out[1], features[1, 0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out[3], features[3, 1], rtol=1e-6, atol=1e-6)


def test_attention_weights_sum_to_one_over_real_views():
    pool = _pool("attention")
    features, mask = _batch()
    # Identical real views: the output is the view itself only if the weights of the real
    # views sum to one (padded views, here huge, must get weight exactly zero).
    same = features[:, :1].expand(-1, 3, -1).clone()
    same[~mask] = 1e6
    first_real = same[torch.arange(4), mask.float().argmax(1)]
    torch.testing.assert_close(pool(same, mask), first_real, rtol=1e-6, atol=1e-5)
    # And the weights really differ between views (a learned, not a uniform, average).
    mean = build_pooling("mean", DIM)(features, mask)
    assert not torch.allclose(pool(features, mask)[0], mean[0], atol=1e-4)


def _gradient(name: str):
    """Pooled (B, F) output and the gradient of its squared sum w.r.t. the (B, V, F) features,
    padded views set to 1e6."""
    pool = _pool(name)
    features, mask = _batch()
    features[~mask] = 1e6
    features.requires_grad_(True)
    out = pool(features, mask)
    out.square().sum().backward()
    return pool, out.detach(), features.grad, mask


@pytest.mark.parametrize("name", POOLINGS)
def test_gradient_reaches_real_views_only(name):
    _, _, grad, mask = _gradient(name)
    assert torch.isfinite(grad).all()
    assert (grad[~mask] == 0).all()


def test_max_gradient_goes_to_the_view_holding_the_maximum():
    _, out, grad, _ = _gradient("max")
    torch.testing.assert_close(grad.sum(1), 2 * out)


def test_mean_gradient_is_shared_equally_by_the_real_views():
    _, out, grad, mask = _gradient("mean")
    count = mask.sum(1, keepdim=True)
    for b in range(4):
        torch.testing.assert_close(
            grad[b][mask[b]], (2 * out[b] / count[b]).expand(int(count[b]), -1)
        )


def test_attention_gradient_reaches_every_real_view_and_the_scorer():
    pool, _, grad, mask = _gradient("attention")
    assert (grad.abs().sum(-1)[mask] > 0).all()
    # The scorer learns (its last bias only shifts all scores: softmax ignores it).
    for p in (pool.score[0].weight, pool.score[0].bias, pool.score[2].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
