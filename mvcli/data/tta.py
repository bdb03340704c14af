"""Test-time augmentation: the windows and flips of an evaluation batch, and their average.

Every evaluation loader (validate, test, predict, and a fit's validation) serves each action
in ``A`` augmented copies: each view decoded at every window of ``window_offsets`` (by the
dataset, through the clip cache: :func:`window_specs`), then, with ``flip``, each copy again
mirrored left-right on the device (:func:`with_flipped_copies`, A -> 2A). The batch's video is
then ``(B, A, V, C, T, H, W)``; the module runs the network on each copy and averages the
softmax probabilities (:func:`average_copies`). Without augmentation (one window at offset 0,
no flip) nothing changes: the video stays ``(B, V, C, T, H, W)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from mvcli.data.video import ClipSpec

# What the copies' predictions are combined by (recorded in the outputs).
AVERAGE = "probabilities"
# The copies axis of an augmented batch's video (B, A, V, C, T, H, W).
COPIES_DIM = 1


@dataclass(frozen=True)
class TestTimeAugmentation:
    """Test-time augmentation of every evaluation loader (``data.tta``), never of training.

    Each action is predicted on every window and (with ``flip``) its mirror image; the
    softmax probabilities of the copies are averaged. Costs one forward pass per copy.

    Args:
        flip: add a horizontally flipped copy of every window (on the device, no decoding).
        window_offsets: the windows' centres relative to ``data.center_frame``, in frames at
            ``data.target_fps`` (each shifts the centre by ``offset x source_fps /
            target_fps`` source frames, rounded). Distinct, at least one; ``[0]``: the
            training window only.
    """

    __test__ = False  # not a pytest test class, despite its name

    flip: bool = False
    window_offsets: tuple[int, ...] = (0,)

    @classmethod
    def of(cls, value: TestTimeAugmentation | Mapping | None) -> TestTimeAugmentation:
        """The section from itself, a plain dict (checkpoint hparams) or None (none)."""
        if value is None:
            return cls()
        if isinstance(value, Mapping):
            offsets = value.get("window_offsets", (0,))
            return cls(flip=bool(value.get("flip", False)), window_offsets=tuple(offsets))
        return value

    @property
    def copies(self) -> int:
        """Augmented copies of each action: windows x (2 with the flip)."""
        return len(self.window_offsets) * (2 if self.flip else 1)

    @property
    def active(self) -> bool:
        """Whether evaluation batches differ from the training window's."""
        return self.flip or tuple(self.window_offsets) != (0,)

    def check(self, spec: ClipSpec) -> None:
        """Raise ValueError, naming ``data.tta.window_offsets``, on offsets that cannot be
        used with ``spec`` (the data section's window)."""
        offsets = list(self.window_offsets)
        if not offsets:
            raise ValueError(
                "data.tta.window_offsets is empty: give at least one offset ([0]: the "
                "training window only)"
            )
        if len(set(offsets)) != len(offsets):
            raise ValueError(
                f"data.tta.window_offsets {offsets} repeats an offset: a window counted twice "
                "weighs twice in the average; give distinct offsets"
            )
        for offset in offsets:
            center = shifted_center(spec, offset)
            if center < 0:
                raise ValueError(
                    f"data.tta.window_offsets: offset {offset} puts the window's centre at "
                    f"frame {center} (data.center_frame {spec.center_frame} + {offset} x "
                    f"{spec.source_fps:g}/{spec.target_fps:g} source/target fps), before the "
                    "clip's first frame; offsets must keep the centre at frame 0 or later"
                )

    def record(self) -> dict:
        """What the outputs (predictions.json, the metrics files) state about it."""
        return {
            "flip": self.flip,
            "window_offsets": list(self.window_offsets),
            "average": AVERAGE,
            "copies": self.copies,
        }

    def describe(self) -> str:
        """In words: ``none``, or ``flip, windows -8/0/+8 frames: 6 copies, probabilities
        averaged``."""
        if not self.active:
            return "none"
        parts = ["flip"] if self.flip else []
        if tuple(self.window_offsets) != (0,):
            windows = "/".join(f"{o:+d}" if o else "0" for o in self.window_offsets)
            parts.append(f"windows {windows} frames")
        return f"{', '.join(parts)}: {self.copies} copies, {AVERAGE} averaged"

    def to_dict(self) -> dict:
        """Plain values (checkpoints load with ``weights_only``)."""
        return {"flip": self.flip, "window_offsets": list(self.window_offsets)}


def shifted_center(spec: ClipSpec, offset: int) -> int:
    """The centre frame (at ``source_fps``) of the window ``offset`` target-rate frames away."""
    return spec.center_frame + round(offset * spec.source_fps / spec.target_fps)


def window_specs(spec: ClipSpec, offsets: Sequence[int]) -> tuple[ClipSpec, ...]:
    """One spec per window, ``spec`` shifted by each offset (each cached under its own key)."""
    return tuple(
        dataclasses.replace(spec, center_frame=shifted_center(spec, offset)) for offset in offsets
    )


def with_flipped_copies(video: torch.Tensor) -> torch.Tensor:
    """``(B, [A,] V, C, T, H, W)`` -> ``(B, 2A, V, C, T, H, W)``: the copies, then each of them
    mirrored along the width (padded views stay zero)."""
    if video.dim() == 6:
        video = video.unsqueeze(COPIES_DIM)
    return torch.cat([video, video.flip(-1)], dim=COPIES_DIM)


def average_copies(logits: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per head, ``log(mean_a softmax(logits[a]))``: the log of the copies' averaged
    probabilities, in float32.

    Scores whose argmax is the averaged probabilities' argmax and whose softmax gives them
    back, so metrics, the loss (cross-entropy of these scores is the negative
    log-likelihood of the averaged probabilities) and ``predict`` use them like logits.
    """
    count = math.log(len(logits))
    return {
        head: torch.stack([copy[head].float().log_softmax(-1) for copy in logits]).logsumexp(0)
        - count
        for head in logits[0]
    }


def tta_of(datamodule: object) -> TestTimeAugmentation | None:
    """The test-time augmentation a data module applies (its ``tta``; None: it has none)."""
    tta = getattr(datamodule, "tta", None)
    return tta if isinstance(tta, TestTimeAugmentation) else None
