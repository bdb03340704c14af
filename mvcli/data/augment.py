"""Training augmentation of whole batches of multi-view clips, on the device or in workers.

One batched pipeline over the uint8 ``(B, V, C, T, H, W)`` video of a training batch:
random parameters are drawn per action (``view_policy: same``: every view of an action gets
the same crop, flip, colour and time shift; frame drops are per view, as streams stutter
independently) or per view (``independent``), then every op runs
once for the whole batch as tensor ops (an affine ``grid_sample`` for crop + flip, per-clip
factors for colour, one ``gather`` for time), never a loop over samples. The result is
uint8 again (normalisation happens inside the network) and padded views stay zero.

Where it runs: ``gpu: true`` in the data module's ``on_after_batch_transfer`` (after the
uint8 batch reached the device), ``gpu: false`` in the loader workers' collate function.
Both call :meth:`BatchAugmenter.__call__` and draw the random parameters on the CPU from
torch's global generator, so both paths follow the same distribution (seeded by
``seed_everything``; workers get the DataLoader's per-worker seeds).

Presets: ``PRESETS`` below; their table is in docs/user-guide.md (Augmentation), checked
against ``PRESETS`` by tests/test_docs.py. Each value can be overridden from YAML,
``data.augmentation.<field>``.

Severity-aware strength: each action's probabilities and magnitudes (all but the flip and
mixing) are multiplied by a factor of its offence-severity class, rarer classes stronger;
by default ``min(severity_max_strength, sqrt(n_max / n_c))`` from the training counts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch
from torch.nn import functional as F

from mvcli.data.taxonomy import NUM_CLASSES

AugmentPreset = Literal["none", "mild", "moderate", "aggressive"]
ViewPolicy = Literal["same", "independent"]

PRESETS: dict[str, dict[str, object]] = {
    "none": {
        "hflip_prob": 0.0,
        "crop_prob": 0.0,
        "crop_scale": (1.0, 1.0),
        "crop_ratio": (1.0, 1.0),
        "color_prob": 0.0,
        "brightness": 0.0,
        "contrast": 0.0,
        "saturation": 0.0,
        "hue": 0.0,
        "noise_prob": 0.0,
        "noise_std": 0.0,
        "temporal_prob": 0.0,
        "temporal_shift": 0,
        "frame_drop_prob": 0.0,
        "mix_prob": 0.0,
        "mixup_alpha": 0.2,
        "cutmix_alpha": 1.0,
    },
}
PRESETS["mild"] = PRESETS["none"] | {
    "hflip_prob": 0.5,
    "crop_prob": 0.5,
    "crop_scale": (0.8, 1.0),
    "crop_ratio": (0.9, 1.1),
    "color_prob": 0.5,
    "brightness": 0.1,
    "contrast": 0.1,
    "saturation": 0.1,
    "noise_std": 0.02,
    "temporal_prob": 0.3,
    "temporal_shift": 1,
}
PRESETS["moderate"] = PRESETS["mild"] | {
    "crop_prob": 0.8,
    "crop_scale": (0.6, 1.0),
    "crop_ratio": (0.8, 1.25),
    "color_prob": 0.8,
    "brightness": 0.2,
    "contrast": 0.2,
    "saturation": 0.2,
    "hue": 0.02,
    "noise_prob": 0.2,
    "noise_std": 0.03,
    "temporal_prob": 0.5,
    "temporal_shift": 2,
    "frame_drop_prob": 0.05,
}
PRESETS["aggressive"] = PRESETS["moderate"] | {
    "crop_prob": 1.0,
    "crop_scale": (0.4, 1.0),
    "crop_ratio": (0.75, 1.33),
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.4,
    "hue": 0.05,
    "noise_prob": 0.3,
    "noise_std": 0.05,
    "temporal_prob": 0.8,
    "temporal_shift": 3,
    "frame_drop_prob": 0.1,
    "mix_prob": 0.3,
}


@dataclass
class Augmentation:
    """Training augmentation (``data.augmentation``): a preset, any field overridden.

    Unset (null) fields take the preset's value (``PRESETS``; table in
    docs/user-guide.md). Probabilities are per action (``view_policy: same``) or per view.

    Args:
        preset: ``none``, ``mild``, ``moderate`` or ``aggressive``.
        gpu: run on the device after the batch transfer (true) or in the loader workers.
        view_policy: ``same`` spatial/colour/time parameters for every view of an action, or
            ``independent`` draws per view.
        hflip_prob: probability of a horizontal flip.
        crop_prob: probability of a random resized crop (scale jitter), resized back to the
            clip size.
        crop_scale: range of the crop's area, as a fraction of the frame.
        crop_ratio: range of the crop's aspect ratio relative to the frame's (log-uniform).
        color_prob: probability of colour jitter (brightness, contrast, saturation, hue).
        brightness: brightness factor drawn in [1 - b, 1 + b].
        contrast: contrast factor drawn in [1 - c, 1 + c] (blend with the frame's mean grey).
        saturation: saturation factor drawn in [1 - s, 1 + s] (blend with greyscale).
        hue: hue rotation drawn in [-h, h] turns (0.5 = 180 degrees), in YIQ space.
        noise_prob: probability of additive Gaussian noise.
        noise_std: noise standard deviation, in [0, 1] pixel units.
        temporal_prob: probability of shifting the frame window.
        temporal_shift: largest shift in frames. The loader decodes exactly the window, so
            a shift repeats the edge frame (what was not decoded is not invented).
        frame_drop_prob: per-frame probability of a dropped frame (the previous frame is
            repeated in its place, as a stuttering stream does).
        mix_prob: probability that a batch is mixed (mixup or cutmix, 50/50 when both alphas
            are > 0), with the labels of both heads mixed alike (soft targets).
        mixup_alpha: Beta(alpha, alpha) of mixup's weight; 0 disables mixup.
        cutmix_alpha: Beta(alpha, alpha) of cutmix's kept area; 0 disables cutmix.
        severity_strength: multiplier of probabilities and magnitudes per offence-severity
            class (4 values); unset: derived from the training class counts.
        severity_max_strength: cap of the derived multipliers (1 turns the derivation off).
    """

    preset: AugmentPreset = "none"
    gpu: bool = True
    view_policy: ViewPolicy = "same"
    hflip_prob: float | None = None
    crop_prob: float | None = None
    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[float, float] | None = None
    color_prob: float | None = None
    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    hue: float | None = None
    noise_prob: float | None = None
    noise_std: float | None = None
    temporal_prob: float | None = None
    temporal_shift: int | None = None
    frame_drop_prob: float | None = None
    mix_prob: float | None = None
    mixup_alpha: float | None = None
    cutmix_alpha: float | None = None
    severity_strength: list[float] | None = None
    severity_max_strength: float = 2.0

    def resolved(self) -> dict[str, object]:
        """The preset's values with every set field applied; checked."""
        if self.preset not in PRESETS:
            raise ValueError(f"data.augmentation.preset must be one of {list(PRESETS)}")
        values = dict(PRESETS[self.preset])
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in values and value is not None:
                values[f.name] = tuple(value) if isinstance(value, list) else value
        _check(values)
        if self.severity_max_strength < 1:
            raise ValueError("data.augmentation.severity_max_strength must be >= 1")
        return values

    def describe(self) -> str:
        """The effective augmentation in words: ``preset none + hflip_prob 0.5, crop_prob 1.0``
        (the fields set apart from the preset's values), or ``preset mild`` alone."""
        preset = PRESETS.get(self.preset, {})
        changed = [
            f"{name} {_short(value)}"
            for name, value in self.resolved().items()
            if getattr(self, name) is not None and preset.get(name) != value
        ]
        return f"preset {self.preset}" + (" + " + ", ".join(changed) if changed else "")

    def to_dict(self) -> dict:
        return asdict(self)


def _short(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check(values: dict) -> None:
    for name, value in values.items():
        if name.endswith("_prob") and not 0.0 <= value <= 1.0:
            raise ValueError(f"data.augmentation.{name} must be in [0, 1], got {value}")
    for name in ("brightness", "contrast", "saturation", "noise_std", "mixup_alpha"):
        if values[name] < 0:
            raise ValueError(f"data.augmentation.{name} must be >= 0, got {values[name]}")
    if values["cutmix_alpha"] < 0 or values["temporal_shift"] < 0:
        raise ValueError("data.augmentation.cutmix_alpha and temporal_shift must be >= 0")
    if not 0.0 <= values["hue"] <= 0.5:
        raise ValueError(f"data.augmentation.hue must be in [0, 0.5], got {values['hue']}")
    lo, hi = values["crop_scale"]
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"data.augmentation.crop_scale must be 0 < low <= high <= 1, got {lo, hi}")
    lo, hi = values["crop_ratio"]
    if not 0.0 < lo <= hi:
        raise ValueError(f"data.augmentation.crop_ratio must be 0 < low <= high, got {lo, hi}")


def severity_strength(counts: list[int], max_strength: float) -> list[float]:
    """Per offence-severity class: ``min(max_strength, sqrt(n_max / n_c))``; absent: max."""
    n_max = max(counts)
    return [min(max_strength, math.sqrt(n_max / n)) if n else max_strength for n in counts]


class BatchAugmenter:
    """Augments a training batch dict in one pass (see the module docstring).

    Args:
        config: the augmentation settings.
        strength: per offence-severity class multiplier (None: 1 for every class).
    """

    def __init__(self, config: Augmentation, strength: list[float] | None = None) -> None:
        self.config = config
        self.params = config.resolved()
        self.strength = torch.tensor(strength or [1.0], dtype=torch.float32)

    @property
    def active(self) -> bool:
        p = self.params
        return any(p[k] > 0 for k in _PROBS) or (p["mix_prob"] > 0)

    def __call__(self, batch: dict, severity: torch.Tensor | None = None) -> dict:
        """The augmented batch. ``severity``: its offence-severity labels on the host, for a
        batch already on a device (the draws are made on the host: reading the batch's own
        labels back would make the host wait for the device)."""
        video = batch.get("video")
        if video is None or not self.active:
            return batch
        b, v, c, t, h, w = video.shape
        mask = batch["view_mask"]
        strength = self._strength(
            batch.get("offence_severity") if severity is None else severity, b
        )
        draw = _Draws(b, v, self.config.view_policy == "same", strength)
        x = self._temporal(video.reshape(b * v, c, t, h, w), draw)
        x = x.float().div_(255.0)
        x = self._spatial(x, draw)
        x = self._color(x, draw)
        x = self._noise(x, draw)
        x = x.reshape(b, v, c, t, h, w)
        batch = dict(batch)
        if self.params["mix_prob"] > 0 and torch.rand(()) < self.params["mix_prob"]:
            x, batch["soft_targets"] = self._mix(x, mask, batch)
        x = x.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
        batch["video"] = x * mask.view(b, v, 1, 1, 1, 1).to(x.device)  # padding stays zero
        return batch

    def _strength(self, labels: torch.Tensor | None, b: int) -> torch.Tensor:
        if labels is None or len(self.strength) == 1:
            return torch.ones(b)
        return self.strength[labels.cpu().clamp(max=len(self.strength) - 1)]

    # -- ops ---------------------------------------------------------------------------------
    def _temporal(self, x: torch.Tensor, draw: _Draws) -> torch.Tensor:
        p = self.params
        n, t = x.shape[0], x.shape[2]
        if (p["temporal_prob"] == 0 or p["temporal_shift"] == 0) and p["frame_drop_prob"] == 0:
            return x
        steps = torch.arange(t).expand(n, t)
        drop = torch.rand(n, t) < (p["frame_drop_prob"] * draw.strength)[:, None]
        drop[:, 0] = False
        # A dropped frame repeats the last kept one: the running max of kept indices.
        index = torch.where(drop, 0, steps).cummax(dim=1).values
        limit = (p["temporal_shift"] * draw.strength).round()
        shift = ((torch.rand(n) * 2 - 1) * (limit + 0.5)).round().clamp(-limit, limit)
        shift = torch.where(draw.coin(p["temporal_prob"]), shift, 0.0)
        shift = draw.share(shift)
        index = (index + shift[:, None].long()).clamp(0, t - 1)
        if torch.equal(index, steps):
            return x
        index = index.to(x.device)[:, None, :, None, None].expand(x.shape)
        return torch.gather(x, 2, index)

    def _spatial(self, x: torch.Tensor, draw: _Draws) -> torch.Tensor:
        p = self.params
        n = x.shape[0]
        flip = draw.share(draw.coin(p["hflip_prob"], scale=False).float())
        crop = draw.share(draw.coin(p["crop_prob"]).float())
        if not flip.any() and not crop.any():
            return x
        lo, hi = p["crop_scale"]
        # A stronger sample reaches smaller crops: the low end moves away from 1.
        lo = (1 - (1 - lo) * draw.strength).clamp(0.05, hi)
        area = draw.share(lo + (hi - lo) * torch.rand(n))
        r_lo, r_hi = (math.log(r) for r in p["crop_ratio"])
        ratio = draw.share(torch.exp(r_lo + (r_hi - r_lo) * torch.rand(n)))
        sw = torch.where(crop > 0, (area * ratio).sqrt().clamp(max=1), 1.0)
        sh = torch.where(crop > 0, (area / ratio).sqrt().clamp(max=1), 1.0)
        cx = draw.share(torch.rand(n) * 2 - 1) * (1 - sw)
        cy = draw.share(torch.rand(n) * 2 - 1) * (1 - sh)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = sw * (1 - 2 * flip)
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = sh
        theta[:, 1, 2] = cy
        _, c, t, h, w = x.shape
        frames = x.reshape(n, c * t, h, w)
        grid = F.affine_grid(theta.to(x.device), [n, c * t, h, w], align_corners=False)
        out = F.grid_sample(
            frames, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        return out.reshape(n, c, t, h, w)

    def _color(self, x: torch.Tensor, draw: _Draws) -> torch.Tensor:
        p = self.params
        n = x.shape[0]
        on = draw.share(draw.coin(p["color_prob"]).float())
        if not on.any():
            return x
        s = draw.strength

        def factor(magnitude: float) -> torch.Tensor:
            jitter = draw.share((torch.rand(n) * 2 - 1) * magnitude * s)
            return (1 + jitter * on).clamp(min=0).to(x.device).view(n, 1, 1, 1, 1)

        brightness, contrast, saturation = (
            factor(p[k]) for k in ("brightness", "contrast", "saturation")
        )
        hue = draw.share((torch.rand(n) * 2 - 1) * p["hue"] * s) * on  # on the host
        x = (x * brightness).clamp_(0, 1)
        gray = _grayscale(x)
        mean = gray.mean(dim=(-2, -1), keepdim=True)  # per frame, as torchvision's contrast
        x = (contrast * x + (1 - contrast) * mean).clamp_(0, 1)
        x = (saturation * x + (1 - saturation) * _grayscale(x)).clamp_(0, 1)
        if hue.any():
            rotation = _hue_matrix(hue).to(x.device)
            x = torch.einsum("nij,njthw->nithw", rotation, x).clamp_(0, 1)
        return x

    def _noise(self, x: torch.Tensor, draw: _Draws) -> torch.Tensor:
        p = self.params
        sigma = draw.share(draw.coin(p["noise_prob"]).float() * p["noise_std"] * draw.strength)
        chosen = (sigma > 0).nonzero().flatten()
        if len(chosen) == 0:
            return x
        chosen_d = chosen.to(x.device)
        noise = torch.randn_like(x[chosen_d]) * sigma[chosen].to(x.device).view(-1, 1, 1, 1, 1)
        x[chosen_d] = (x[chosen_d] + noise).clamp_(0, 1)
        return x

    def _mix(self, x: torch.Tensor, mask: torch.Tensor, batch: dict):
        """Mixup or cutmix across the actions of the batch; soft targets for both heads."""
        p = self.params
        b = x.shape[0]
        modes = [
            m for m, a in (("mixup", p["mixup_alpha"]), ("cutmix", p["cutmix_alpha"])) if a > 0
        ]
        if not modes:
            return x, None
        mode = modes[int(torch.randint(len(modes), ()))]
        alpha = p[f"{mode}_alpha"]
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(b)
        perm_d = perm.to(x.device)
        # Views the partner lacks (padding) stay unmixed.
        both = (mask & mask[perm_d]).to(x.device).view(*mask.shape, 1, 1, 1, 1)
        partner = x[perm_d]
        if mode == "mixup":
            mixed = lam * x + (1 - lam) * partner
        else:
            h, w = x.shape[-2:]
            cut = math.sqrt(1 - lam)
            ch, cw = round(h * cut), round(w * cut)
            y0, x0 = int(torch.randint(h - ch + 1, ())), int(torch.randint(w - cw + 1, ()))
            mixed = x.clone()
            mixed[..., y0 : y0 + ch, x0 : x0 + cw] = partner[..., y0 : y0 + ch, x0 : x0 + cw]
            lam = 1 - ch * cw / (h * w)
        x = torch.where(both, mixed, x)
        soft = {}
        for head in NUM_CLASSES:
            if head in batch:
                labels = batch[head]
                n_cls = NUM_CLASSES[head]
                one_hot = F.one_hot(labels, n_cls).float()
                soft[head] = lam * one_hot + (1 - lam) * one_hot[perm.to(labels.device)]
        return x, soft


_PROBS = ("hflip_prob", "crop_prob", "color_prob", "noise_prob", "temporal_prob", "frame_drop_prob")


class _Draws:
    """Random draws per clip (B*V), shared across an action's views under ``same``."""

    def __init__(self, b: int, v: int, same: bool, strength: torch.Tensor) -> None:
        self.b, self.v, self.same = b, v, same
        self.strength = strength.float().repeat_interleave(v)  # per clip

    def share(self, values: torch.Tensor) -> torch.Tensor:
        """Per-clip values; under ``same``, each action's first view's value for all views."""
        if not self.same:
            return values
        return values.view(self.b, self.v)[:, :1].expand(self.b, self.v).reshape(-1)

    def coin(self, prob: float, scale: bool = True) -> torch.Tensor:
        p = (prob * self.strength).clamp(max=1) if scale else torch.full_like(self.strength, prob)
        return torch.rand(self.b * self.v) < p


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, T, H, W) -> (N, 1, T, H, W), torchvision's ITU-R 601 weights."""
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _hue_matrix(hue: torch.Tensor) -> torch.Tensor:
    """(N,) rotations in turns -> (N, 3, 3) RGB matrices rotating the chroma plane of YIQ
    (computed where ``hue`` is: the host, as the other draws)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    angle = hue * 2 * math.pi
    cos, sin = angle.cos(), angle.sin()
    rot = torch.zeros(len(hue), 3, 3)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    return torch.linalg.inv(to_yiq) @ rot @ to_yiq


class AugmentingCollate:
    """``gpu: false``: the collate function of the training loader, augmenting in workers."""

    def __init__(self, collate, augmenter: BatchAugmenter) -> None:
        self.collate = collate
        self.augmenter = augmenter

    def __call__(self, samples: list[dict]) -> dict:
        return self.augmenter(self.collate(samples))
