"""Tests for mvcli.data.video: frame selection, padding, exactness vs. the naive reader, errors."""

from __future__ import annotations

import math
import os
import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mvcli.data import video
from mvcli.data.video import (
    VideoDecodeError,
    read_full_then_select,
    read_window,
    select_nearest,
    window_timestamps,
)

W, H = 128, 64  # synthetic clips: 8 vertical bands of 16 px, band b white iff bit b of the index
OUT_H, OUT_W = 32, 64  # decoded size: bands become 8 px wide


def _sample_dir() -> Path | None:
    # <checkout>/../shared/data/mvfoul-sample, also from a fresh clone beside shared/.
    candidates = [Path(__file__).resolve().parents[2].parent / "shared/data/mvfoul-sample"]
    if os.environ.get("MVCLI_SAMPLE_DIR"):
        candidates.append(Path(os.environ["MVCLI_SAMPLE_DIR"]))
    return next((p for p in candidates if p.is_dir()), None)


SAMPLE = _sample_dir()


def _pattern(index: int) -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    for bit in range(8):
        if index >> bit & 1:
            img[:, bit * 16 : (bit + 1) * 16] = 255
    return img


def _indices(clip: torch.Tensor) -> list[int]:
    """Recover the frame index encoded by _pattern from each decoded (OUT_H, OUT_W) frame."""
    band_w = clip.shape[2] // 8
    centers = clip[:, :, band_w // 2 :: band_w].float().mean(dim=(1, 3))  # (T, 8)
    bits = (centers > 128).long()
    return (bits * (2 ** torch.arange(8))).sum(dim=1).tolist()


def _expected(targets: list[float], fps: float, n: int) -> list[int]:
    # Nearest frame k/fps, ties to the earlier one, clamped to the clip.
    return [min(max(math.ceil(t * fps - 0.5), 0), n - 1) for t in targets]


def _write(
    path: Path,
    n: int,
    *,
    fps: float = 25,
    codec: str = "libx264",
    gop: int = 12,
    pix_fmt: str = "yuv420p",
    options: dict | None = None,
) -> Path:
    try:
        av.codec.Codec(codec, "w")
    except ValueError:  # UnknownCodecError: this FFmpeg build lacks the encoder
        pytest.skip(f"encoder {codec} not available")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        stream.codec_context.gop_size = gop  # several keyframes, so seeking is exercised
        if options:
            stream.options = options
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(_pattern(i), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    return {
        "h264_100": _write(root / "h264_100.mp4", 100),  # B-frames, keyframe every <= 12
        "h264_40": _write(root / "h264_40.mp4", 40),
        "h264_50fps": _write(root / "h264_50fps.mp4", 100, fps=50),
        "h264_3": _write(root / "h264_3.mp4", 3),
        "h264_mkv": _write(root / "h264.mkv", 100),
    }


def _read(path, center, n=16, fps=25.0, **kw) -> torch.Tensor:
    return read_window(
        path, center_time=center, num_frames=n, target_fps=fps, height=OUT_H, width=OUT_W, **kw
    )


def _naive(path, center, n=16, fps=25.0) -> torch.Tensor:
    return read_full_then_select(
        path, center_time=center, num_frames=n, target_fps=fps, height=OUT_H, width=OUT_W
    )


def test_window_timestamps():
    assert window_timestamps(3.0, 4, 25.0) == pytest.approx([2.92, 2.96, 3.0, 3.04])
    assert window_timestamps(1.0, 3, 10.0) == pytest.approx([0.9, 1.0, 1.1])


def test_select_nearest_ties_go_to_earlier_frame():
    assert select_nearest([0.0, 1.0, 2.0], [-5.0, 0.5, 1.4, 1.6, 9.0]) == [0, 0, 1, 2, 2]
    assert select_nearest([0.0, 1.0, 1.0, 2.0], [1.0, 1.2]) == [1, 1]


def test_selects_the_right_frames(clips):
    out = _read(clips["h264_100"], center=2.0)
    assert out.shape == (16, OUT_H, OUT_W, 3) and out.dtype == torch.uint8
    assert _indices(out) == list(range(42, 58))


@pytest.mark.parametrize(
    ("clip", "center", "fps", "n_frames", "expected"),
    [
        ("h264_100", 0.12, 25.0, 100, [0] * 5 + list(range(0, 11))),  # pad at the start
        ("h264_40", 1.52, 25.0, 40, list(range(30, 40)) + [39] * 6),  # pad at the end
        ("h264_100", 2.0, 12.5, 100, list(range(34, 66, 2))),  # every other frame
        ("h264_50fps", 1.0, 25.0, 100, list(range(34, 66, 2))),  # 50 fps source
        ("h264_100", -3.0, 25.0, 100, [0] * 16),  # window wholly before the clip
        ("h264_40", 9.0, 25.0, 40, [39] * 16),  # window wholly after the clip
    ],
)
def test_selection_and_padding(clips, clip, center, fps, n_frames, expected):
    out = _read(clips[clip], center=center, fps=fps)
    assert _indices(out) == expected
    src_fps = 50 if clip == "h264_50fps" else 25
    assert expected == _expected(window_timestamps(center, 16, fps), src_fps, n_frames)


@pytest.mark.parametrize("center", [-1.0, 0.0, 0.3, 1.0, 2.0, 2.47, 3.5, 3.9, 6.0])
@pytest.mark.parametrize("clip", ["h264_100", "h264_mkv"])
def test_equals_naive_on_synthetic(clips, clip, center):
    for n, fps in [(16, 25.0), (24, 12.5), (5, 30.0)]:
        assert torch.equal(_read(clips[clip], center, n, fps), _naive(clips[clip], center, n, fps))


def test_threads_do_not_change_output(clips):
    ref = _read(clips["h264_100"], center=2.0)
    for threads, thread_type in [(1, None), (2, None), (2, "AUTO"), (0, "FRAME")]:
        out = _read(clips["h264_100"], center=2.0, threads=threads, thread_type=thread_type)
        assert torch.equal(out, ref)


def test_fast_path_seeks_and_stops_early(clips, monkeypatch):
    runs = []
    original = video._decode

    def spy(*args, **kwargs):
        runs.append(original(*args, **kwargs))
        return runs[-1]

    monkeypatch.setattr(video, "_decode", spy)
    _read(clips["h264_100"], center=2.0)
    assert len(runs) == 1, "fell back to decoding from the start"
    assert runs[0].seeked and runs[0].count < 40  # not the 58 frames up to the window end


@pytest.mark.parametrize(
    ("suffix", "codec", "pix_fmt", "options"),
    [
        ("mkv", "mpeg4", "yuv420p", None),
        ("avi", "mjpeg", "yuvj420p", None),
        ("webm", "libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
        ("mov", "libx264", "yuv420p", None),
        ("mp4", "libx265", "yuv420p", {"x265-params": "log-level=none"}),
    ],
)
def test_other_containers_and_codecs(tmp_path, suffix, codec, pix_fmt, options):
    path = _write(tmp_path / f"clip.{suffix}", 60, codec=codec, pix_fmt=pix_fmt, options=options)
    for center in (0.2, 1.6, 2.32):
        out = _read(path, center)
        assert torch.equal(out, _naive(path, center))
        assert _indices(out) == _expected(window_timestamps(center, 16, 25.0), 25, 60)


def _real_dirs() -> list[Path | None]:
    if SAMPLE is None:
        return [None]
    return sorted(SAMPLE.glob("Test/action_*")) or [None]


@pytest.mark.parametrize("action", _real_dirs(), ids=lambda p: p.name if p else "missing")
def test_equals_naive_on_real_clips(action):
    if action is None:
        pytest.skip("mvfoul-sample not found (set MVCLI_SAMPLE_DIR)")
    paths = sorted(action.glob("clip_*.mp4"))
    assert paths
    kw = {"center_time": 3.0, "num_frames": 16, "target_fps": 25.0, "height": 112, "width": 200}
    for path in paths:
        out = read_window(path, **kw)
        assert out.shape == (16, 112, 200, 3) and out.dtype == torch.uint8
        assert torch.equal(out, read_full_then_select(path, **kw)), path


def test_equals_naive_on_real_clip_edges():
    if SAMPLE is None or not list(SAMPLE.glob("Test/action_0/clip_*.mp4")):
        pytest.skip("mvfoul-sample not found (set MVCLI_SAMPLE_DIR)")
    path = sorted(SAMPLE.glob("Test/action_0/clip_*.mp4"))[0]
    for center, n, fps in [(0.1, 16, 25.0), (4.9, 24, 25.0), (3.0, 16, 12.5)]:
        kw = {
            "center_time": center,
            "num_frames": n,
            "target_fps": fps,
            "height": 112,
            "width": 200,
        }
        ref = read_full_then_select(path, **kw)
        assert torch.equal(read_window(path, **kw), ref)
        assert torch.equal(read_window(path, thread_type="AUTO", **kw), ref)


def _error(path, **kw) -> VideoDecodeError:
    with pytest.raises(VideoDecodeError) as info:
        _read(path, center=1.0, **kw)
    assert str(path) in str(info.value) and info.value.path == str(path)
    return info.value


def test_missing_file(tmp_path):
    assert _error(tmp_path / "nope.mp4").reason == "missing"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.touch()
    err = _error(path)
    assert err.reason == "empty" and "0 bytes" in str(err)


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    assert _error(path).reason in {"no_video_stream", "undecodable"}


def test_audio_only_file(tmp_path):
    path = tmp_path / "sound.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    err = _error(path)
    assert err.reason == "no_video_stream" and "no video stream" in str(err)


def test_too_few_frames(clips):
    err = _error(clips["h264_3"], min_frames=4)
    assert err.reason == "too_few_frames"
    assert _indices(_read(clips["h264_3"], center=0.04, min_frames=3))[:3] == [0, 0, 0]


def _truncated_sources(clips) -> list[Path]:
    sources = [clips["h264_100"], clips["h264_mkv"]]
    if SAMPLE is not None:
        sources += sorted(SAMPLE.glob("Test/action_*/clip_*.mp4"))[:1]
    return sources


def test_truncated_files(clips, tmp_path):
    decoded_any = False
    for i, src in enumerate(_truncated_sources(clips)):
        data = src.read_bytes()
        path = tmp_path / f"cut{i}{src.suffix}"
        path.write_bytes(data[: int(len(data) * 0.3)])
        try:
            out = _read(path, center=3.0)
        except VideoDecodeError as err:
            assert str(path) in str(err)
            with pytest.raises(VideoDecodeError):
                _naive(path, center=3.0)
            continue
        decoded_any = True
        assert torch.equal(out, _naive(path, center=3.0))
    assert decoded_any  # mkv keeps its header at the front, so its head stays decodable


def test_truncated_mkv_decodes_its_head(clips, tmp_path):
    data = clips["h264_mkv"].read_bytes()
    path = tmp_path / "cut.mkv"
    path.write_bytes(data[: int(len(data) * 0.3)])  # as in test_truncated_files
    out = _read(path, center=3.0)
    assert torch.equal(out, _naive(path, center=3.0))
    assert bool((out == out[0]).all())  # ~30 frames survive: the window is all last-frame padding


def test_error_is_picklable(tmp_path):
    err = _error(tmp_path / "nope.mp4")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.reason, str(back)) == (err.path, err.reason, str(err))


# -- property tests: any bytes decode or fail cleanly, within a time limit --------------------
# Each example must end well within the deadline (a hang fails the test); a decoding pass also
# has its own limit (DECODE_TIME_LIMIT_S), checked below.
DECODE_PROPERTY = {
    "max_examples": 50,
    "deadline": 5000,
    "suppress_health_check": [HealthCheck.function_scoped_fixture],
}


def _decode_or_reason(path: Path) -> str:
    try:
        clip = _read(path, 1.0, n=8)
    except VideoDecodeError as err:
        assert err.reason in ("missing", "empty", "no_video_stream", "undecodable",
                              "too_few_frames")  # fmt: skip
        return err.reason
    assert clip.dtype == torch.uint8 and clip.shape == (8, OUT_H, OUT_W, 3)
    return "ok"


@settings(**DECODE_PROPERTY)
@given(raw=st.binary(max_size=4096), suffix=st.sampled_from([".mp4", ".mkv", ".avi", ".webm"]))
def test_random_bytes_never_crash_the_decoder(raw, suffix, tmp_path):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(raw)
    _decode_or_reason(path)


@settings(**DECODE_PROPERTY)
@given(data=st.data())
def test_corrupted_real_clip_never_crashes_the_decoder(clips, data, tmp_path):
    source = clips[data.draw(st.sampled_from(["h264_100", "h264_mkv"]))].read_bytes()
    cut = data.draw(st.integers(0, len(source)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(source) - 1), st.integers(1, 255)),
                               max_size=20))  # fmt: skip
    damaged = bytearray(source[:cut] if data.draw(st.booleans()) else source)
    for offset, mask in flips:
        if offset < len(damaged):
            damaged[offset] ^= mask
    path = tmp_path / "damaged.mp4"
    path.write_bytes(bytes(damaged))
    _decode_or_reason(path)


def test_decoding_has_a_time_limit(clips, monkeypatch):
    monkeypatch.setattr(video, "DECODE_TIME_LIMIT_S", -1.0)  # every pass is over its limit
    with pytest.raises(VideoDecodeError, match="time limit") as err:
        _read(clips["h264_100"], 2.0)
    assert err.value.reason == "undecodable"
