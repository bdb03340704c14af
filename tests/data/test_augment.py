"""Batched training augmentation: presets and overrides, every op's effect, padding, seeds,
severity strength, soft targets, the worker path's distribution (where the data module runs
it: tests/data/test_datamodule.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from mvcli.data.augment import (
    PRESETS,
    Augmentation,
    AugmentingCollate,
    BatchAugmenter,
    severity_strength,
)
from mvcli.data.collate import collate_views
from tests.data.conftest import _batch

OFF = {k: 0.0 for k in PRESETS["none"] if k.endswith("_prob")}


def _only(**values) -> BatchAugmenter:
    return BatchAugmenter(Augmentation(preset="none", **values))


def test_presets_grow_in_strength_and_fields_override():
    keys = ("crop_prob", "brightness", "temporal_shift", "noise_std")
    for weaker, stronger in [("none", "mild"), ("mild", "moderate"), ("moderate", "aggressive")]:
        for key in keys:
            assert PRESETS[weaker][key] <= PRESETS[stronger][key], (weaker, stronger, key)
    values = Augmentation(preset="mild", hflip_prob=0.1, crop_scale=[0.5, 0.9]).resolved()
    assert values["hflip_prob"] == 0.1 and values["crop_scale"] == (0.5, 0.9)
    assert values["brightness"] == PRESETS["mild"]["brightness"]  # not overridden: preset's
    assert not BatchAugmenter(Augmentation()).active  # default: none


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("hflip_prob", 1.5, "hflip_prob must be in"),
        ("crop_scale", (0.0, 1.0), "crop_scale"),
        ("hue", 0.7, "hue must be in"),
        ("brightness", -0.1, "brightness must be >= 0"),
    ],
)
def test_bad_values_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        Augmentation(preset="mild", **{field: value}).resolved()


@pytest.mark.parametrize("preset", ["mild", "moderate", "aggressive"])
def test_presets_keep_shape_dtype_and_zero_padding(preset):
    torch.manual_seed(0)
    batch = _batch()
    out = BatchAugmenter(Augmentation(preset=preset), [1, 1.5, 2, 2])(batch)
    assert out["video"].dtype == torch.uint8
    assert out["video"].shape == batch["video"].shape
    assert (out["video"][~batch["view_mask"]] == 0).all()
    assert not torch.equal(out["video"], batch["video"])
    assert batch["video"] is not out["video"]  # the input batch is left as it was


def test_flip_is_exact_and_shared_by_views():
    batch = _batch(padded=False)
    out = _only(hflip_prob=1.0)(batch)
    assert torch.equal(out["video"], batch["video"].flip(-1))


@pytest.mark.parametrize(
    ("policy", "low", "high"),
    [("same", 1.0, 1.0), ("independent", 0.3, 0.7)],  # independent coins agree half the time
    ids=["same", "independent"],
)
def test_view_policy(policy, low, high):
    torch.manual_seed(0)
    batch = _batch(b=64, v=2, padded=False)
    out = BatchAugmenter(Augmentation(preset="none", hflip_prob=0.5, view_policy=policy))(batch)
    flipped = (out["video"] == batch["video"].flip(-1)).flatten(2).all(-1)  # (B, V)
    agree = (flipped[:, 0] == flipped[:, 1]).float().mean()
    assert low <= agree <= high


def test_temporal_ops_only_reuse_decoded_frames_in_order():
    torch.manual_seed(0)
    b, t = 32, 8
    video = torch.arange(t, dtype=torch.uint8).view(1, 1, 1, t, 1, 1)
    video = video.expand(b, 1, 3, t, 4, 4).clone()
    batch = {"video": video, "view_mask": torch.ones(b, 1, dtype=torch.bool)}
    out = _only(temporal_prob=1.0, temporal_shift=2, frame_drop_prob=0.3)(batch)["video"]
    frames = out[:, 0, 0, :, 0, 0].long()  # the frame index each output frame shows
    assert ((frames >= 0) & (frames < t)).all()
    assert (frames.diff(dim=1) >= 0).all()  # time never runs backwards
    assert (frames != torch.arange(t)).any(dim=1).float().mean() > 0.5
    repeats = (frames.diff(dim=1) == 0).float().mean()
    assert repeats > 0.1  # dropped frames repeat the previous one


def test_color_and_noise_change_values_not_geometry():
    torch.manual_seed(0)
    batch = _batch(padded=False)
    out = _only(color_prob=1.0, brightness=0.5, noise_prob=1.0, noise_std=0.05)(batch)
    diff = (out["video"].float() - batch["video"].float()).abs().mean()
    assert diff > 5
    # Geometry kept: the augmented clip still correlates with its source pixel by pixel.
    a = out["video"].float().flatten(1)
    b = batch["video"].float().flatten(1)
    corr = torch.nn.functional.cosine_similarity(a - a.mean(1, True), b - b.mean(1, True))
    assert (corr > 0.5).all()


def test_crop_zooms_in():
    torch.manual_seed(0)
    # A frame with a bright border: a crop pushes the border out of view.
    video = torch.zeros(8, 1, 3, 2, 32, 32, dtype=torch.uint8)
    video[..., :2, :] = video[..., -2:, :] = 255
    batch = {"video": video, "view_mask": torch.ones(8, 1, dtype=torch.bool)}
    out = _only(crop_prob=1.0, crop_scale=(0.5, 0.6))(batch)["video"]
    assert out.float().mean() < video.float().mean() * 0.6


def test_reproducible_under_a_seed():
    aug = BatchAugmenter(Augmentation(preset="aggressive", mix_prob=1.0))
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append(aug(_batch()))
    assert torch.equal(outs[0]["video"], outs[1]["video"])
    for head in ("offence_severity", "action"):
        assert torch.equal(outs[0]["soft_targets"][head], outs[1]["soft_targets"][head])


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixing_gives_soft_targets_for_both_heads(mode):
    torch.manual_seed(1)
    alphas = {"mixup_alpha": 0.0, "cutmix_alpha": 0.0} | {f"{mode}_alpha": 1.0}
    batch = _batch(h=32, w=32)
    out = _only(mix_prob=1.0, **alphas)(batch)
    for head, classes in (("offence_severity", 4), ("action", 8)):
        soft = out["soft_targets"][head]
        assert soft.shape == (6, classes)
        torch.testing.assert_close(soft.sum(1), torch.ones(6))
        assert (soft.max(1).values < 1).any()  # labels really mixed
        assert torch.equal(out[head], batch[head])  # hard labels kept for metrics
    assert (out["video"][~batch["view_mask"]] == 0).all()


def test_severity_strength_from_counts():
    strength = severity_strength([400, 100, 25, 0], max_strength=3.0)
    assert strength == pytest.approx([1.0, 2.0, 3.0, 3.0])  # sqrt(n_max / n_c), capped
    assert severity_strength([50, 50, 50, 50], 2.0) == [1.0] * 4


def test_rarer_severity_is_augmented_more_often():
    torch.manual_seed(0)
    b = 400
    batch = _batch(b=b, v=1, t=2, h=4, w=4, padded=False)
    batch["offence_severity"] = torch.arange(b) % 2  # classes 0 and 1
    aug = BatchAugmenter(
        Augmentation(preset="none", noise_prob=0.25, noise_std=0.2), [1.0, 3.0, 1, 1]
    )
    changed = (aug(batch)["video"] != batch["video"]).flatten(1).any(1).float()
    common, rare = changed[0::2].mean(), changed[1::2].mean()
    assert abs(common - 0.25) < 0.08 and abs(rare - 0.75) < 0.08


# -- where it runs ---------------------------------------------------------------------------
class _Clips(torch.utils.data.Dataset):
    """Constant grey clips with one view: any change of the mean is the augmentation's."""

    def __len__(self) -> int:
        return 600

    def __getitem__(self, i: int) -> dict:
        video = torch.full((1, 3, 4, 8, 8), 128, dtype=torch.uint8)
        return {
            "action_id": str(i),
            "views": ["clip_0.mp4"],
            "skipped_views": [],
            "video": video,
            "offence_severity": i % 4,
            "action": i % 8,
        }


def _ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    values = torch.cat([a, b]).sort().values
    cdf_a = torch.searchsorted(a.sort().values, values, right=True) / len(a)
    cdf_b = torch.searchsorted(b.sort().values, values, right=True) / len(b)
    return float((cdf_a - cdf_b).abs().max())


def test_worker_path_has_the_same_distribution():
    """gpu: false augments in a loader worker; same distribution as the device path."""
    config = Augmentation(preset="aggressive", mix_prob=0.0)
    aug = BatchAugmenter(config)
    torch.manual_seed(0)
    loader = DataLoader(
        _Clips(), batch_size=20, num_workers=1, collate_fn=AugmentingCollate(collate_views, aug)
    )
    in_workers = torch.cat([b["video"].float().mean((1, 2, 3, 4, 5)) for b in loader])
    on_device = torch.cat(
        [
            aug(b)["video"].float().mean((1, 2, 3, 4, 5))
            for b in DataLoader(_Clips(), batch_size=20, collate_fn=collate_views)
        ]
    )
    assert in_workers.std() > 1  # the statistic varies: augmentation happened
    n = len(in_workers)
    critical = 1.63 * math.sqrt(2 / n)  # two-sample KS at alpha = 0.01
    assert _ks_statistic(in_workers, on_device) < critical


def test_the_logged_augmentation_is_the_effective_one(synthetic_root, tmp_path, caplog):
    # The complaint: vars_baseline's run logged "augmentation: preset none" while flip, crop
    # and colour are configured on top of that preset.
    import logging

    import yaml

    from mvcli.cli import main
    from tests.conftest import CONF, CONFIGS, tiny_args

    section = yaml.safe_load((CONFIGS / "vars_baseline.yaml").read_text())["data"]["augmentation"]
    described = Augmentation(**section).describe()
    assert described.startswith("preset none + hflip_prob 0.5, crop_prob 1")
    assert "color_prob 1" in described and "brightness 0.5" in described
    assert Augmentation(preset="mild").describe() == "preset mild"

    args = ["fit", "--config", str(CONFIGS / "demo.yaml"), "--config", str(CONF / "fast_fit.yaml"),
            *tiny_args(synthetic_root, tmp_path), "--trainer.max_epochs", "1",
            "--data.augmentation.preset", "none", "--data.augmentation.hflip_prob", "0.5",
            "--data.augmentation.color_prob", "1.0",
            "--data.augmentation.brightness", "0.5"]  # fmt: skip
    with caplog.at_level(logging.INFO):
        main(args)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("augmentation:")]
    assert lines and lines[0].startswith(
        "augmentation: preset none + hflip_prob 0.5, color_prob 1, brightness 0.5, on the "
    ), lines
