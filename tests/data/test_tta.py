"""Test-time augmentation: windows decoded at the shifted centres, flipped copies, the
average of the copies' probabilities (by hand), and the CLI runs that record it."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mvcli.cli import main
from mvcli.data.annotations import read_split
from mvcli.data.collate import collate_views
from mvcli.data.datamodule import MVFoulDataModule
from mvcli.data.dataset import MultiViewDataset
from mvcli.data.tta import (
    TestTimeAugmentation,
    average_copies,
    shifted_center,
    window_specs,
    with_flipped_copies,
)
from mvcli.data.video import ClipSpec, decode_view
from mvcli.deploy.review import write_review
from mvcli.deploy.scoring import score
from mvcli.task.module import ClipInput, MVFoulModule
from mvcli.utils.errors import UsageError
from tests.conftest import tiny_args
from tests.evaluator import official_evaluate
from tests.task.test_module import PAIRS, _split_with_dives_fixed

SPEC = ClipSpec(num_frames=8, center_frame=12, height=32, width=56)
TTA_ARGS = ["--data.tta.flip", "true", "--data.tta.window_offsets", "[-4,0,4]"]


# -- the average, by hand ------------------------------------------------------------------
def test_average_copies_is_the_log_of_the_mean_probabilities():
    # Copy 1: softmax([0, ln 3]) = [1/4, 3/4]; copy 2: softmax([0, 0]) = [1/2, 1/2].
    # Mean probabilities: [3/8, 5/8]. (Averaging the logits would give [0, ln 3 / 2],
    # softmax [0.366, 0.634]: told apart below.)
    copies = [{"h": torch.tensor([[0.0, math.log(3)]])}, {"h": torch.tensor([[0.0, 0.0]])}]
    scores = average_copies(copies)["h"]
    torch.testing.assert_close(scores.exp(), torch.tensor([[3 / 8, 5 / 8]]))
    torch.testing.assert_close(scores.softmax(-1), torch.tensor([[3 / 8, 5 / 8]]))
    assert scores.dtype == torch.float32


# Per copy (the value every pixel of the copy holds), each head's logits for 2 actions.
COPY_LOGITS = {
    0: {"offence_severity": [[0.0, 0, 0, math.log(3)], [0.0, 0, 0, 0]],
        "action": [[math.log(2), 0, 0, 0, 0, 0, 0, 0]] * 2},
    1: {"offence_severity": [[0.0, 0, 0, 0], [math.log(5), 0, 0, 0]],
        "action": [[0.0, 0, 0, 0, 0, 0, 0, 0]] * 2},
}  # fmt: skip


class CopyLogits(nn.Module):
    """A network whose logits are COPY_LOGITS of the copy it is given (told by its pixels)."""

    def forward(self, video: torch.Tensor, view_mask: torch.Tensor, num_views=None) -> dict:
        copy = int(video[0, 0, 0, 0, 0, 0])
        return {h: torch.tensor(v) for h, v in COPY_LOGITS[copy].items()}


def _two_copy_batch() -> dict:
    video = torch.zeros((2, 2, 3, 3, 4, 4, 4), dtype=torch.uint8)
    video[:, 1] = 1
    return {
        "video": video,
        "view_mask": torch.ones((2, 3), dtype=torch.bool),
        "offence_severity": torch.tensor([3, 0]),
        "action": torch.tensor([0, 1]),
        "action_id": ["1", "2"],
        "views": [["clip_0.mp4"]] * 2,
        "skipped_views": [[], []],
        "failed": [],
    }


def test_the_module_averages_the_copies_probabilities_by_hand(monkeypatch):
    module = MVFoulModule(backbone="tiny", clip=ClipInput(num_frames=4, height=16, width=16))
    monkeypatch.setattr(module, "network", CopyLogits())
    batch = _two_copy_batch()
    # Hand-computed: offence_severity action 1: copy 0 [1/6, 1/6, 1/6, 1/2], copy 1 [1/4]*4
    # -> [5/24, 5/24, 5/24, 3/8]; action 2: copy 0 [1/4]*4, copy 1 [5/8, 1/8, 1/8, 1/8] ->
    # [7/16, 3/16, 3/16, 3/16]. action: copy 0 [2/9, 1/9 x 7], copy 1 [1/8]*8 -> [25/144,
    # 17/144 x 7] for both actions.
    expected = {
        "offence_severity": torch.tensor(
            [[5 / 24, 5 / 24, 5 / 24, 3 / 8], [7 / 16, 3 / 16, 3 / 16, 3 / 16]]
        ),
        "action": torch.tensor([[25 / 144] + [17 / 144] * 7] * 2),
    }
    scores = module.batch_logits(batch)
    for head, probs in expected.items():
        torch.testing.assert_close(scores[head].exp(), probs)
    predicted = module.predict_step(batch, 0)["probabilities"]
    for head, probs in expected.items():
        torch.testing.assert_close(predicted[head], probs)
    # The evaluation loss: the negative log-likelihood of the averaged probabilities (the
    # task weights are 1: the sum of the heads' means).
    loss, parts = module.criterion(scores, batch)
    nll_os = -(math.log(3 / 8) + math.log(7 / 16)) / 2
    nll_action = -(math.log(25 / 144) + math.log(17 / 144)) / 2
    assert float(parts["offence_severity"]) == pytest.approx(nll_os, rel=1e-5)
    assert float(parts["action"]) == pytest.approx(nll_action, rel=1e-5)
    assert float(loss) == pytest.approx(nll_os + nll_action, rel=1e-5)


def test_a_six_dimensional_batch_takes_the_plain_forward(monkeypatch):
    module = MVFoulModule(backbone="tiny", clip=ClipInput(num_frames=4, height=16, width=16))
    monkeypatch.setattr(module, "network", CopyLogits())
    batch = _two_copy_batch()
    batch["video"] = batch["video"][:, 1]  # no copies axis: copy 1's logits, as they are
    scores = module.batch_logits(batch)
    for head, logits in COPY_LOGITS[1].items():
        assert torch.equal(scores[head], torch.tensor(logits))


# -- windows ---------------------------------------------------------------------------------
def test_offsets_count_at_the_target_rate():
    spec = ClipSpec(center_frame=75, source_fps=25.0, target_fps=12.5)
    assert [shifted_center(spec, o) for o in (-3, 0, 2)] == [69, 75, 79]
    assert [s.center_frame for s in window_specs(spec, (-3, 0, 2))] == [69, 75, 79]
    assert window_specs(spec, (0,)) == (spec,)  # the training window, as is


def test_each_window_decodes_at_its_shifted_centre(synthetic_root):
    records, _ = read_split(synthetic_root / "Valid")
    offsets = (-4, 0, 4)
    dataset = MultiViewDataset(records, SPEC, windows=window_specs(SPEC, offsets))
    sample = dataset[0]
    views = records[0].views
    assert sample["video"].shape == (3, len(views), 3, 8, 32, 56)
    for a, offset in enumerate(offsets):
        spec = ClipSpec(num_frames=8, center_frame=12 + offset, height=32, width=56)
        for v, path in enumerate(views):
            expected = decode_view(path, spec).permute(3, 0, 1, 2)
            assert torch.equal(sample["video"][a, v], expected), (offset, path.name)
    assert not torch.equal(sample["video"][0], sample["video"][2])  # the windows differ
    # The collated batch: (B, A, V, C, T, H, W), views padded on their own axis.
    batch = collate_views([dataset[i] for i in range(4)])
    counts = [len(r.views) for r in records[:4]]
    assert batch["video"].shape == (4, 3, max(counts), 3, 8, 32, 56)
    assert batch["view_mask"].sum(1).tolist() == counts
    for i, count in enumerate(counts):
        assert torch.equal(batch["video"][i, :, :count], dataset[i]["video"])
        assert not batch["video"][i, :, count:].any()


def test_one_window_at_zero_is_todays_sample(synthetic_root):
    records, _ = read_split(synthetic_root / "Valid")
    plain = MultiViewDataset(records, SPEC)
    windowed = MultiViewDataset(records, SPEC, windows=window_specs(SPEC, (0,)))
    for i in range(3):
        assert torch.equal(windowed[i]["video"], plain[i]["video"])
        assert windowed[i]["video"].dim() == 5


def test_windows_past_the_file_repeat_its_edge_frames(synthetic_root):
    # The synthetic clips have 24 frames: a window centred on frame 24 reads past the end.
    records, _ = read_split(synthetic_root / "Valid")
    dataset = MultiViewDataset(records, SPEC, windows=window_specs(SPEC, (0, 12)))
    late = dataset[0]["video"][1, 0]  # (C, T, H, W)
    assert torch.equal(late[:, -1], late[:, -2])  # the last frame, repeated


# -- flip ------------------------------------------------------------------------------------
def test_flipped_copies_are_the_copies_mirrored():
    video = torch.randint(0, 256, (2, 3, 2, 3, 4, 5, 6), dtype=torch.uint8)
    out = with_flipped_copies(video)
    assert out.shape == (2, 6, 2, 3, 4, 5, 6)
    assert torch.equal(out[:, :3], video)
    assert torch.equal(out[:, 3:], torch.flip(video, dims=[-1]))
    plain = video[:, 0]  # one window: a copies axis appears
    assert torch.equal(with_flipped_copies(plain), torch.stack([plain, plain.flip(-1)], 1))


def _datamodule(synthetic_root, tta: TestTimeAugmentation) -> MVFoulDataModule:
    return MVFoulDataModule(
        root=synthetic_root,
        frames_per_clip=8,
        center_frame=12,
        img_height=32,
        img_width=56,
        num_workers=0,
        tta=tta,
    )


def test_the_datamodule_flips_evaluation_batches_only(synthetic_root):
    dm = _datamodule(synthetic_root, TestTimeAugmentation(flip=True, window_offsets=(-4, 4)))
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    video = batch["video"]
    assert video.shape[1] == 2
    dm.trainer = SimpleNamespace(training=False)
    out = dm.on_after_batch_transfer(dict(batch), 0)["video"]
    assert torch.equal(out, torch.cat([video, video.flip(-1)], dim=1))
    dm.trainer = SimpleNamespace(training=True)
    assert torch.equal(dm.on_after_batch_transfer(dict(batch), 0)["video"], video)
    assert dm.hparams.tta == {"flip": True, "window_offsets": [-4, 4]}  # plain values


def test_default_tta_leaves_batches_as_they_were(synthetic_root):
    dm = _datamodule(synthetic_root, TestTimeAugmentation())
    dm.setup("validate")
    dm.trainer = SimpleNamespace(training=False)
    records = dm.records("Valid")
    batch = next(iter(dm.val_dataloader()))
    plain = collate_views(
        [MultiViewDataset(records, dm.spec)[i] for i in range(len(batch["action_id"]))]
    )
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)["video"], plain["video"])
    assert batch["video"].dim() == 6


def test_training_batches_never_get_windows(synthetic_root):
    dm = _datamodule(synthetic_root, TestTimeAugmentation(window_offsets=(-4, 0, 4)))
    dm.setup("fit")
    assert dm.datasets["train"].windows == () and dm.datasets["train"].spec == dm.spec
    assert len(dm.datasets["val"].windows) == 3


def test_the_cache_holds_every_window(synthetic_root, tmp_path):
    """``mvcli cache`` (and a fit's prepare_data: the same build) caches each evaluation
    window like the training one; evaluation then reads them all without decoding."""
    cache_dir = tmp_path / "cache"
    args = [*tiny_args(synthetic_root, tmp_path), "--data.cache_dir", str(cache_dir)]
    args += ["--data.tta.window_offsets", "[-4,0,4]", "--trainer.enable_progress_bar", "false"]
    cli = main(["cache", *args, "--splits", "[Train, Valid]"])
    labels = sorted(p.name.rsplit("-", 1)[0] for p in (cache_dir / "index").iterdir())
    assert labels == ["Train", "Valid", "Valid@+4", "Valid@-4"]
    dm = cli.datamodule
    train, valid = ({v for r in dm.records(s) for v in r.views} for s in ("Train", "Valid"))
    entries = sorted(cache_dir.rglob("*.npy"))
    assert len(entries) == len(train) + 3 * len(valid)
    dm.setup("validate")
    cached = next(iter(dm.val_dataloader()))
    assert len(cached["video"][0]) == 3
    assert sorted(cache_dir.rglob("*.npy")) == entries  # every window was there
    # Read straight into the batch (the copy-once path), equal to decoding every window.
    decoded = main([*args, "--data.cache_dir", "null"], run=False).datamodule
    decoded.setup("validate")
    plain = next(iter(decoded.val_dataloader()))
    assert plain["action_id"] == cached["action_id"]
    assert torch.equal(plain["view_mask"], cached["view_mask"])
    assert torch.equal(plain["video"], cached["video"])


@pytest.mark.parametrize(
    ("offsets", "message"),
    [
        ("[]", r"data\.tta\.window_offsets is empty"),
        ("[0,4,0]", r"data\.tta\.window_offsets \[0, 4, 0\] repeats an offset"),
        ("[-20,0]", r"data\.tta\.window_offsets: offset -20 puts the window's centre at frame -8"),
    ],
)
def test_bad_offsets_are_named(synthetic_root, tmp_path, offsets, message):
    args = [*tiny_args(synthetic_root, tmp_path), "--model.backbone", "tiny"]
    with pytest.raises(UsageError, match=message):
        main([*args, "--data.tta.window_offsets", offsets], run=False)


# -- the CLI: recorded in the outputs ---------------------------------------------------------
def test_test_and_predict_record_the_tta(trained, synthetic_root, tmp_path):
    """Both record it, and agree: test's metrics are the official evaluator's on predict's
    file (test and predict average the same copies)."""
    common, fit = trained
    split = _split_with_dives_fixed(synthetic_root, tmp_path)
    args = [
        *common,
        "--data.root",
        str(tmp_path),
        "--ckpt_path",
        fit.trainer.checkpoint_callback.best_model_path,
        *TTA_ARGS,
    ]
    record = {"flip": True, "window_offsets": [-4, 0, 4], "average": "probabilities", "copies": 6}
    main(["test", *args, "--output_dir", str(tmp_path / "t")])
    metrics = json.loads((tmp_path / "t/test_metrics.json").read_text())
    assert metrics["tta"] == record
    markdown = (tmp_path / "t/test_metrics.md").read_text()
    assert "test-time augmentation (data.tta): flip, windows -4/0/+4 frames: 6 copies" in markdown
    main(["predict", *args, "--output_dir", str(tmp_path / "p")])
    predictions = tmp_path / "p/predictions.json"
    assert json.loads(predictions.read_text())["tta"] == record
    # Its readers take it as ever: mvcli score, mvcli review, the official evaluator.
    annotations = split / "annotations.json"
    official = official_evaluate(annotations, predictions)
    scored = score(predictions, annotations)
    for mine, theirs in PAIRS.items():
        assert 100 * metrics[f"test/{mine}"] == pytest.approx(official[theirs], abs=1e-4), mine
        assert scored[theirs] == pytest.approx(official[theirs], abs=1e-4), mine
    assert write_review(predictions, annotations).path.is_file()


def test_the_default_is_recorded_as_none(trained, tmp_path):
    common, fit = trained
    best = fit.trainer.checkpoint_callback.best_model_path
    main(["validate", *common, "--ckpt_path", best, "--output_dir", str(tmp_path)])
    metrics = json.loads((tmp_path / "validate_metrics.json").read_text())
    assert metrics["tta"] == {
        "flip": False, "window_offsets": [0], "average": "probabilities", "copies": 1
    }  # fmt: skip
