"""`mvcli predict` on the world's inputs: any layout, container, codec, size, fps, damage."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from mvcli.__main__ import run
from mvcli.cli import main
from mvcli.data.video import read_window
from tests.evaluator import official_evaluate

# (suffix, codec, pixel format, fps, width, height): what an analyst might drop in a folder.
RECODINGS = [
    (".mkv", "mpeg4", "yuv420p", 30, 200, 112),
    (".avi", "mjpeg", "yuvj420p", 25, 160, 90),
    (".webm", "libvpx-vp9", "yuv420p", 50, 128, 72),
    (".mov", "libx264", "yuv420p", 25, 320, 180),
    (".mp4", "hevc", "yuv420p", 24, 144, 80),
]


def _best(fit) -> str:
    return fit.trainer.checkpoint_callback.best_model_path


def _predict(common, fit, out: Path, *extra: str):  # fmt: skip
    return main(["predict", *common, "--ckpt_path", _best(fit),
                 "--prediction_writer.output_path", str(out), *extra])  # fmt: skip


def _reencode(src: Path, dst: Path, codec: str, pix_fmt: str, fps: int, width: int, height: int):
    frames = read_window(
        src, center_time=2.5, num_frames=int(5 * fps), target_fps=fps, height=height, width=width
    )
    with av.open(str(dst), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for image in frames.numpy():
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _write_clip(path: Path, num_frames: int, size=(56, 32)) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        for i in range(num_frames):
            image = np.full((size[1], size[0], 3), 20 * i, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def _encoder_available(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        return False
    return True


def test_predict_needs_only_the_checkpoint(synthetic_root, tmp_path):
    """Preprocessing set in training travels in the checkpoint; explicit options still win."""
    runs = tmp_path / "runs"
    fit = main(["fit", "--model.backbone", "tiny", "--data.root", str(synthetic_root),
                "--data.frames_per_clip", "6", "--data.center_frame", "11",
                "--data.img_height", "40", "--data.img_width", "72", "--data.num_workers", "0",
                "--data.target_fps", "20", "--trainer.max_epochs", "1",
                "--trainer.logger.init_args.save_dir", str(runs),
                "--trainer.default_root_dir", str(runs),
                "--trainer.enable_progress_bar", "false"])  # fmt: skip
    ckpt = Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    out = tmp_path / "p.json"
    cli = main(["predict", "--ckpt_path", str(ckpt), "--data.predict_root",
                str(synthetic_root / "Chall"), "--prediction_writer.output_path", str(out),
                "--trainer.logger", "false", "--trainer.default_root_dir", str(runs)])  # fmt: skip
    spec = cli.datamodule.spec
    assert (spec.num_frames, spec.center_frame, spec.height, spec.width, spec.target_fps) == (
        6,
        11,
        40,
        72,
        20.0,
    )
    assert cli.model.hparams.backbone == "tiny" and cli.model.hparams.clip["num_frames"] == 6
    assert len(json.loads(out.read_text())["Actions"]) == 4
    cli = main(["predict", "--ckpt_path", str(ckpt), "--data.predict_root",
                str(synthetic_root / "Chall"), "--data.img_height", "48",
                "--prediction_writer.output_path", str(tmp_path / "q.json"),
                "--trainer.logger", "false", "--trainer.default_root_dir", str(runs)])  # fmt: skip
    assert (cli.datamodule.spec.height, cli.model.hparams.clip["height"]) == (48, 48)


def test_predict_any_container_codec_size_and_fps(trained, sample_root, tmp_path):
    common, fit = trained
    folder = tmp_path / "clips"
    used = []
    for (suffix, codec, pix_fmt, fps, width, height), action in zip(
        RECODINGS, sorted((sample_root / "Test").glob("action_*")), strict=False
    ):
        if not _encoder_available(codec):
            continue
        target = folder / action.name
        target.mkdir(parents=True)
        for clip in sorted(action.glob("clip_*.mp4")):
            _reencode(clip, target / (clip.stem + suffix), codec, pix_fmt, fps, width, height)
        used.append((action.name.removeprefix("action_"), suffix))
    assert len(used) >= 3
    out = tmp_path / "p.json"
    _predict(common, fit, out, "--data.predict_root", str(folder), "--data.center_frame", "62")
    preds = json.loads(out.read_text())
    assert sorted(preds["Actions"]) == sorted(a for a, _ in used)
    for action_id, suffix in used:
        views = preds["details"][action_id]["views"]
        assert views and all(v.endswith(suffix) for v in views)
        assert preds["details"][action_id]["skipped_views"] == []


def test_damaged_views_never_stop_the_run(trained, synthetic_root, tmp_path):
    common, fit = trained
    split = tmp_path / "Test"
    shutil.copytree(synthetic_root / "Test", split)
    actions = sorted(split.glob("action_*"), key=lambda p: int(p.name.split("_")[1]))
    clip = actions[0] / "clip_0.mp4"
    clip.write_bytes(b"")  # 0-byte
    truncated = actions[1] / "clip_0.mp4"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 3])
    (actions[2] / "clip_0.mp4").write_text("this is not a video")
    _write_clip(actions[3] / "clip_0.mp4", num_frames=3)  # too short to be a view
    for view in actions[4].iterdir():  # no readable view at all
        view.write_bytes(b"")
    shutil.rmtree(actions[5])  # listed in annotations.json, no folder on disk
    out = tmp_path / "p.json"
    _predict(common, fit, out, "--data.predict_root", str(split), "--prediction_writer.csv",
             "true")  # fmt: skip
    preds = json.loads(out.read_text())
    dead = actions[4].name.removeprefix("action_")
    assert dead not in preds["Actions"] and dead in preds["failed"]
    gone = actions[5].name.removeprefix("action_")
    assert preds["failed"][gone][0]["reason"] == "no_views"
    reasons = {
        a.name.removeprefix("action_"): preds["details"][a.name.removeprefix("action_")][
            "skipped_views"
        ]
        for a in actions[:4]
    }
    assert [r[0]["view"] for r in reasons.values()] == ["clip_0.mp4"] * 4
    assert reasons[actions[0].name.removeprefix("action_")][0]["reason"] == "empty"
    assert reasons[actions[3].name.removeprefix("action_")][0]["reason"] == "too_few_frames"
    for action in actions[:4]:
        assert "clip_0.mp4" not in preds["details"][action.name.removeprefix("action_")]["views"]
    # The file is accepted unchanged by the official evaluator; the dead action counts as missed.
    official = official_evaluate(split / "annotations.json", out)
    assert 0 <= official["accuracy_action"] <= 100
    with out.with_suffix(".csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["action_id"] for r in rows} == set(preds["Actions"]) | {dead, gone}
    dead_row = next(r for r in rows if r["action_id"] == dead)
    assert dead_row["Action class"] == "" and "empty" in dead_row["skipped_views"]


def test_nothing_predictable_exits_non_zero(trained, synthetic_root, tmp_path, capsys):
    common, fit = trained
    action = tmp_path / "action_1"
    action.mkdir()
    (action / "clip_0.mp4").write_bytes(b"")
    args = ["predict", *common, "--ckpt_path", _best(fit), "--data.predict_root", str(action),
            "--prediction_writer.output_path", str(tmp_path / "p.json")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        run(args)
    assert exit_info.value.code == 1
    assert "nothing could be predicted" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        run([*args[:-4], "--data.predict_root", str(empty)])
    assert exit_info.value.code == 1


def test_single_action_folder(trained, sample_root, tmp_path):
    common, fit = trained
    out = tmp_path / "p.json"
    _predict(common, fit, out, "--data.predict_root", str(sample_root / "Test/action_4"),
             "--data.center_frame", "75")  # fmt: skip
    preds = json.loads(out.read_text())
    assert list(preds["Actions"]) == ["4"]
    assert preds["details"]["4"]["views"] == ["clip_0.mp4", "clip_1.mp4", "clip_3.mp4"]


def test_score_command_matches_official_evaluator(trained, synthetic_root, tmp_path, capsys):
    common, fit = trained
    out = tmp_path / "p.json"
    _predict(common, fit, out)
    truth = synthetic_root / "Test/annotations.json"
    run(["score", str(out), str(truth), "--output", str(tmp_path / "s.json")])
    printed = capsys.readouterr().out
    ours = json.loads((tmp_path / "s.json").read_text())
    official = official_evaluate(truth, out)
    for key, value in official.items():
        assert ours[key] == pytest.approx(value)
        assert f"{value:8.3f}" in printed


def test_annotation_id_cannot_make_predict_read_outside_the_root(trained, synthetic_root,
                                                                 tmp_path):  # fmt: skip
    """The reported case: id 0/../../../../outside/secret_action was read and predicted."""
    common, fit = trained
    data = tmp_path / "a" / "b"
    split = data / "Test"
    shutil.copytree(synthetic_root / "Test", split)
    secret = tmp_path / "outside" / "secret_action"
    secret.mkdir(parents=True)
    shutil.copy(next((split / "action_0").iterdir()), secret / "clip_0.mp4")
    action_id = "0/" + "../" * 4 + "outside/secret_action"
    assert (split / f"action_{action_id}").resolve() == secret.resolve()
    annotations = json.loads((split / "annotations.json").read_text())
    annotations["Actions"][action_id] = dict(annotations["Actions"]["0"])
    (split / "annotations.json").write_text(json.dumps(annotations))
    out = tmp_path / "p.json"
    _predict(common, fit, out, "--data.predict_root", str(split))
    preds = json.loads(out.read_text())
    assert action_id not in preds["Actions"] and action_id not in preds["failed"]
    assert "0" in preds["Actions"]
