"""Decode one view's frame window into a uint8 ``(T, H, W, 3)`` RGB tensor with PyAV.

Two readers share one frame-selection rule and one scaler, so their outputs are bit-identical:

* :func:`read_window` -- the fast path used for training: seek to the keyframe before the
  window, skip non-reference frames that cannot be selected, stop once past the window, and
  convert+resize only the selected frames inside swscale.
* :func:`read_full_then_select` -- the naive reference: decode every frame, then select.

Selection rule: output frame ``i`` is the decoded frame whose presentation time (relative to
the stream's ``start_time``) is nearest to ``window_timestamps(...)[i]``; ties go to the earlier
frame, times before the first frame use the first frame, times after the last decoded frame
use the last frame (padding for short or truncated clips).
"""

from __future__ import annotations

import bisect
import math
import os
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

__all__ = [
    "VideoDecodeError",
    "read_full_then_select",
    "read_window",
    "select_nearest",
    "window_timestamps",
]

# AREA averages source pixels, which avoids aliasing for the ~2x downscale typical here
# (398x224 -> 200x112) at the cost of bilinear; both readers must use the same value.
INTERPOLATION = "AREA"
# Seeking only pays off when the keyframe we land on can be after the file's start.
_SEEK_MIN_S = 0.5
# Seek to, and drop non-reference frames until, this many frame periods before the window.
# Any margin is exact (exact_for() verifies and falls back); a small one only avoids needless
# fallbacks when a keyframe's pts trails its dts (B-frames) or frame times jitter.
_MARGIN_FRAMES = 2.0

# Frame threading (thread_type="AUTO") is opt-in. Measured on the 2-core box, real 398x224
# h264 clips, 16 frames around frame 75: when the cores are otherwise idle it cuts the wall
# time of long decodes (84 frames: 22 ms with 2 frame threads vs 35 ms), but with the cores
# busy, as with DataLoader workers, read_window took 22.6 ms/clip with AUTO vs 19.9 ms with
# the default (and ~20% more CPU time), so the default stays.

# What PyAV raises on damaged input: FFmpeg errors and I/O errors, but also Python errors
# from fields it decodes (metadata that is not UTF-8, absurd time bases or sizes).
_ERRORS = (av.FFmpegError, OSError, ValueError, IndexError, OverflowError, ZeroDivisionError)
# Wall-clock limit of one decoding pass: a pathological file (endless stream, corrupt
# timestamps that never reach the window) is reported as undecodable instead of hanging a
# DataLoader worker. A normal view takes milliseconds.
DECODE_TIME_LIMIT_S = 30.0


class VideoDecodeError(Exception):
    """A view that cannot be used.

    Attributes:
        path: the file.
        reason: one of ``missing``, ``empty``, ``no_video_stream``, ``undecodable``,
            ``too_few_frames``.
        detail: what the decoder said, if anything.
    """

    def __init__(self, path: str | os.PathLike, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        message = f"{self.path}: {_REASON_TEXT.get(reason, reason)}"
        super().__init__(f"{message} ({detail})" if detail else message)
        self._args = (self.path, reason, detail)

    def __reduce__(self):
        # Keep it picklable (DataLoader workers) despite the custom __init__.
        return type(self), self._args


_REASON_TEXT = {
    "missing": "file not found",
    "empty": "empty file (0 bytes)",
    "no_video_stream": "not a readable video / no video stream",
    "undecodable": "undecodable or truncated video",
    "too_few_frames": "too few decodable frames",
}


def window_timestamps(center_time: float, num_frames: int, target_fps: float) -> list[float]:
    """Seconds of the output frames: ``center_time + (i - num_frames // 2) / target_fps``."""
    half = num_frames // 2
    return [center_time + (i - half) / target_fps for i in range(num_frames)]


def read_window(
    path: str | os.PathLike,
    *,
    center_time: float,
    num_frames: int,
    target_fps: float,
    height: int,
    width: int,
    min_frames: int = 1,
    threads: int = 0,
    thread_type: str | None = None,
) -> torch.Tensor:
    """Decode only what the window needs.

    Args:
        path: any FFmpeg-readable video file.
        center_time: seconds (from the stream start) of output frame ``num_frames // 2``.
        num_frames: output frames ``T``.
        target_fps: output frame rate; the source is resampled by nearest frame.
        height: output height.
        width: output width.
        min_frames: fewer decodable frames than this raises ``too_few_frames``.
        threads: decoder threads, 0 lets FFmpeg choose.
        thread_type: PyAV thread type ("SLICE", "FRAME", "AUTO"); None keeps PyAV's default
            (slice threading, a no-op for single-slice h264).

    Returns:
        uint8 tensor ``(T, H, W, 3)``, RGB.

    Raises:
        VideoDecodeError: the file is missing, empty, not a video, undecodable or too short.
    """
    targets = window_timestamps(center_time, num_frames, target_fps)
    opts = {"threads": threads, "thread_type": thread_type, "stop_after": targets[-1]}
    opts["min_frames"] = min_frames
    fast = targets[0] >= _SEEK_MIN_S
    run = _decode(path, anchor=targets[0], seek=fast, skip=True, **opts)
    if not run.exact_for(targets[0], max(min_frames, 1)):
        # Seek landed late, a skipped frame may have been the nearest, or the file is too short
        # to tell: redo plainly from the start (rare; only pathological files get here).
        run = _decode(path, anchor=targets[0], seek=False, skip=False, **opts)
    return _finish(path, run, targets, height, width, min_frames)


def read_full_then_select(
    path: str | os.PathLike,
    *,
    center_time: float,
    num_frames: int,
    target_fps: float,
    height: int,
    width: int,
    min_frames: int = 1,
) -> torch.Tensor:
    """Naive reference: decode every frame at native size, then select and resize.

    Same arguments, result and errors as :func:`read_window`.
    """
    targets = window_timestamps(center_time, num_frames, target_fps)
    run = _decode(path, anchor=None, seek=False, skip=False, threads=0, stop_after=None)
    return _finish(path, run, targets, height, width, min_frames)


@dataclass
class _Run:
    """Frames kept by one decoding pass, in decode order, with their times in seconds."""

    times: list[float] = field(default_factory=list)
    frames: list[av.VideoFrame] = field(default_factory=list)
    count: int = 0  # frames output by the decoder, kept or not
    seeked: bool = False
    skipped: list[float] = field(default_factory=list)  # packets sent with skip_frame=NONREF
    output: set[float] = field(default_factory=set)  # times of every frame output
    error: str = ""

    def keep(self, t: float, frame: av.VideoFrame, anchor: float | None) -> None:
        self.count += 1
        self.output.add(t)
        # A frame at/before the window start makes every earlier one useless (it is nearer to
        # every target); keep earlier equal times, since ties go to the earlier frame.
        if anchor is not None and t <= anchor and all(x < t for x in self.times):
            self.times.clear()
            self.frames.clear()
        self.times.append(t)
        self.frames.append(frame)

    def exact_for(self, anchor: float, min_frames: int) -> bool:
        """Whether this pass provably selects what a plain decode from the start would."""
        # Reference frames sent while skipping are still decoded; only the others were dropped.
        dropped = max((t for t in self.skipped if t not in self.output), default=-math.inf)
        if not self.seeked and dropped == -math.inf:
            return True
        if self.count < min_frames:
            return False  # frames before the seek point / dropped ones were not counted
        last_before = max((t for t in self.times if t <= anchor), default=-math.inf)
        if self.seeked and last_before == -math.inf:
            return False  # landed past the window start: the frame nearest to it may be missing
        return dropped < last_before


def _decode(
    path: str | os.PathLike,
    *,
    anchor: float | None,
    seek: bool,
    skip: bool,
    threads: int,
    stop_after: float | None,
    thread_type: str | None = None,
    min_frames: int = 1,
) -> _Run:
    """One decoding pass; stops at the first frame at/after ``stop_after`` (if given)."""
    _check_file(path)
    run = _Run()
    try:
        container = av.open(str(path))
    except _ERRORS as err:
        # Also what a truncated mp4 whose index (moov) sat at the end looks like.
        raise VideoDecodeError(path, "no_video_stream", f"cannot open: {err}") from err
    with container:
        if not container.streams.video:
            raise VideoDecodeError(path, "no_video_stream", "container has no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None:  # a codec id FFmpeg does not know (damaged header)
            raise VideoDecodeError(path, "no_video_stream", "video stream of an unknown codec")
        try:
            stream.codec_context.thread_count = threads
            if thread_type:
                stream.thread_type = thread_type
            clock = _Clock(stream)
            if seek and anchor is not None:
                target = clock.to_pts(anchor - _MARGIN_FRAMES * clock.frame_s)
                container.seek(target, backward=True, stream=stream)
                run.seeked = True
            _pump(container, stream, clock, run, anchor, skip, stop_after, min_frames)
        except _TimeLimit as err:
            raise VideoDecodeError(path, "undecodable", str(err)) from None
        except _ERRORS as err:  # truncated/corrupt data: keep what decoded so far
            run.error = f"{type(err).__name__}: {err}"
    return run


def _pump(container, stream, clock, run: _Run, anchor, skip, stop_after, min_frames) -> None:
    """Demux and decode until ``stop_after`` is reached (and ``min_frames`` seen) or the end."""
    ctx = stream.codec_context
    skip = skip and anchor is not None
    skip_until = anchor - _MARGIN_FRAMES * clock.frame_s if skip else -math.inf
    skipping = False
    deadline = time.monotonic() + DECODE_TIME_LIMIT_S
    for packet in container.demux(stream):
        if time.monotonic() > deadline:
            raise _TimeLimit(f"decoding stopped after {DECODE_TIME_LIMIT_S:g} s (time limit)")
        # Non-reference frames well before the window can never be selected and nothing else
        # depends on them, so the decoder may drop them; exact_for() verifies that afterwards.
        t_pkt = clock.seconds(packet.pts)
        if (t_pkt < skip_until) != skipping:
            skipping = not skipping
            ctx.skip_frame = "NONREF" if skipping else "DEFAULT"
        if skipping:
            run.skipped.append(t_pkt)
        for frame in packet.decode():
            t = clock.frame_seconds(frame)
            run.keep(t, frame, anchor)
            # A frame at/after the last target is as near to it as any later frame can be.
            if stop_after is not None and t >= stop_after and run.count >= min_frames:
                return


class _TimeLimit(Exception):
    """A decoding pass over :data:`DECODE_TIME_LIMIT_S`."""


class _Clock:
    """Stream timestamps -> seconds since the stream's start_time."""

    def __init__(self, stream) -> None:
        self.time_base = stream.time_base or Fraction(1, 1)
        self.start = stream.start_time or 0
        rate = stream.average_rate or stream.guessed_rate
        self.frame_s = float(1 / rate) if rate else 0.04
        self._tb = float(self.time_base)
        self._last = -math.inf

    def seconds(self, pts: int | None) -> float:
        # A packet without pts must never be skipped: report it as infinitely late.
        return math.inf if pts is None else (pts - self.start) * self._tb

    def frame_seconds(self, frame: av.VideoFrame) -> float:
        # Some AVI/raw streams carry no pts: continue from the previous frame at the nominal rate.
        if frame.pts is None:
            t = 0.0 if self._last == -math.inf else self._last + self.frame_s
        else:
            t = self.seconds(frame.pts)
        self._last = t
        return t

    def to_pts(self, seconds: float) -> int:
        return self.start + math.floor(Fraction(seconds) / self.time_base)


def _check_file(path: str | os.PathLike) -> None:
    p = Path(path)
    if not p.is_file():
        raise VideoDecodeError(path, "missing")
    if p.stat().st_size == 0:
        raise VideoDecodeError(path, "empty")


def _finish(path, run: _Run, targets: list[float], height: int, width: int, min_frames: int):
    """Enforce ``min_frames``, select the frames for ``targets`` and convert them."""
    if run.count < max(min_frames, 1) or not run.frames:
        if run.error:
            raise VideoDecodeError(path, "undecodable", run.error)
        raise VideoDecodeError(path, "too_few_frames", f"{run.count} < {max(min_frames, 1)}")
    picks = select_nearest(run.times, targets)
    return _to_tensor([run.frames[i] for i in picks], height, width)


def select_nearest(times: list[float], targets: list[float]) -> list[int]:
    """Index into ``times`` of the nearest frame for each target; ties -> earlier frame.

    Args:
        times: frame times in decode order (usually increasing).
        targets: wanted times.

    Returns:
        One index per target.
    """
    order = sorted(range(len(times)), key=times.__getitem__)  # stable: equal times keep order
    # Among equal times only the first (in decode order) can win a tie.
    sorted_t, sorted_i = [], []
    for i in order:
        if not sorted_t or times[i] != sorted_t[-1]:
            sorted_t.append(times[i])
            sorted_i.append(i)
    picks = []
    for t in targets:
        k = bisect.bisect_left(sorted_t, t)
        if k == len(sorted_t) or (k > 0 and t - sorted_t[k - 1] <= sorted_t[k] - t):
            k -= 1
        picks.append(sorted_i[max(k, 0)])
    return picks


def _to_tensor(frames: list[av.VideoFrame], height: int, width: int) -> torch.Tensor:
    """Convert+resize each distinct frame once in swscale; padding repeats reuse it."""
    scaler = VideoReformatter()  # one per call: it caches the SwsContext across frames
    cache: dict[int, np.ndarray] = {}
    out = []
    for frame in frames:
        if id(frame) not in cache:
            rgb = scaler.reformat(
                frame,
                width=width,
                height=height,
                format="rgb24",
                interpolation=INTERPOLATION,
                threads=1,
            )
            cache[id(frame)] = rgb.to_ndarray()
        out.append(cache[id(frame)])
    return torch.from_numpy(np.stack(out))


@dataclass(frozen=True)
class ClipSpec:
    """What to decode from each view: a window of frames, resampled and resized.

    Frame numbers count on the dataset's ``source_fps`` timeline (25 fps in MVFoul), so the
    window lands on the same moment whatever the file's own frame rate.
    """

    num_frames: int = 16
    center_frame: int = 75
    source_fps: float = 25.0
    target_fps: float = 25.0
    height: int = 224
    width: int = 398
    min_frames: int = 4

    @property
    def center_time(self) -> float:
        return self.center_frame / self.source_fps

    def window(self) -> dict:
        """The keyword arguments of the ``mvcli.data.video`` readers for this spec."""
        return {
            "center_time": self.center_time,
            "num_frames": self.num_frames,
            "target_fps": self.target_fps,
            "height": self.height,
            "width": self.width,
            "min_frames": self.min_frames,
        }


def decode_view(path: Path, spec: ClipSpec) -> torch.Tensor:
    """uint8 (T, H, W, C) window of one view."""
    return read_window(path, **spec.window())
