"""Hugging Face video transformers as backbones: ``model.backbone: hf:<hub id or folder>``.

``hf:MCG-NJU/videomae-base`` reads the model from the Hugging Face hub through its cache
(``$HF_HOME/hub``; offline, ``HF_HUB_OFFLINE=1`` reads the cache only); ``hf:/path/to/folder``
reads a folder written by ``save_pretrained``. The model is loaded with ``transformers``'
``AutoConfig`` + ``AutoModel`` (the optional extra ``pip install -e '.[hf]'``), never with
``trust_remote_code``: only the families below, implemented inside ``transformers``, are
accepted.

The backbone's feature is the encoder's pooled representation as the family defines it
(VideoMAE: the mean of the patch tokens when ``use_mean_pooling``, TimeSformer: the CLS token,
V-JEPA 2: the mean of the patch tokens), never classification logits; V-JEPA 2's predictor
(used for pre-training only) is dropped. Its stages are the embeddings and then each block
(the final norm with the last block), so freezing strategies and ``model.finetune.layer_decay``
work per block. Normalisation comes from the model's video processor (its saved
``video_preprocessor_config.json`` / ``preprocessor_config.json``, else the family's processor
defaults); the frames and sizes the model takes come from its config, checked before the
weights are read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from jsonargparse.typing import restricted_string_type
from torch import nn

HF_PREFIX = "hf:"
# A backbone name of the form ``hf:<hub id>`` or ``hf:<folder>`` (jsonargparse checks it).
HFModelName = restricted_string_type("HFModelName", r"^hf:\S+$")
PROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")


def is_hf(name: str) -> bool:
    return isinstance(name, str) and name.startswith(HF_PREFIX)


def model_ref(name: str) -> str:
    """The hub id or folder after ``hf:`` (a folder's ``~`` expanded)."""
    ref = name[len(HF_PREFIX) :]
    if ref.startswith(("/", ".", "~")) or Path(ref).expanduser().is_dir():
        return str(Path(ref).expanduser())
    return ref


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError(
            "Hugging Face backbones (model.backbone: hf:...) need transformers: "
            "pip install -e '.[hf]'"
        ) from None
    return transformers


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _load(what: str, ref: str, loader: Callable, **kwargs):
    """``loader(ref, **kwargs)``; a missing model or no network -> one line, no traceback."""
    try:
        return loader(ref, trust_remote_code=False, **kwargs)
    except OSError as err:  # offline, unknown id, missing files: transformers raises OSError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        offline = os.environ.get("HF_HUB_OFFLINE", "0")
        raise FileNotFoundError(
            f"could not load the {what} of Hugging Face model {ref!r} ({first}). Models are "
            f"read from the hub cache {_cache_dir()} (HF_HUB_OFFLINE={offline}; with "
            "HF_HUB_OFFLINE=1 only the cache is read): on a connected machine run "
            f"`hf download {ref}` into that cache (set HF_HOME to move it), or pass "
            "model.backbone=hf:/path/to/folder written with save_pretrained"
        ) from None


@dataclass(frozen=True)
class Family:
    """How mvcli uses one ``transformers`` model family (``config.model_type``)."""

    input_key: str  # the forward argument taking (B, T, C, H, W) pixels
    pooling: Callable[[object], str]  # config -> "cls" or "mean"
    embeddings: Callable[[nn.Module], nn.Module]
    blocks: Callable[[nn.Module], nn.ModuleList]
    final_norm: Callable[[nn.Module], nn.Module | None]
    constraints: Callable[[object], dict]  # config -> InputConstraints fields
    native_drop_path: bool  # config.drop_path_rate exists
    extra_inputs: tuple[tuple[str, object], ...] = ()
    default_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    default_std: tuple[float, ...] = (0.229, 0.224, 0.225)


def _constraints(**kwargs) -> dict:
    return kwargs


def _videomae_constraints(c) -> dict:
    # Fixed sinusoidal position table for config.num_frames x image_size^2: no other input.
    return _constraints(
        fixed=(c.num_frames, c.image_size, c.image_size),
        fixed_reason="the input its position table is built for (config.num_frames, image_size)",
    )


def _timesformer_constraints(c) -> dict:
    # Position and time embeddings are interpolated to other grids; patches must tile.
    return _constraints(min_size=c.patch_size, size_multiple=c.patch_size)


def _vjepa2_constraints(c) -> dict:
    # 3D RoPE over a spatial grid of config.crop_size; any number of tubelets.
    return _constraints(
        min_frames=c.tubelet_size,
        frame_multiple=c.tubelet_size,
        fixed_size=(c.crop_size, c.crop_size),
        fixed_reason="its rotary positions are laid out for config.crop_size",
    )


FAMILIES: dict[str, Family] = {
    "videomae": Family(
        "pixel_values",
        lambda c: "mean" if c.use_mean_pooling else "cls",
        lambda m: m.embeddings,
        lambda m: m.encoder.layer,
        lambda m: m.layernorm,
        _videomae_constraints,
        native_drop_path=False,
    ),
    "timesformer": Family(
        "pixel_values",
        lambda c: "cls",
        lambda m: m.embeddings,
        lambda m: m.encoder.layer,
        lambda m: m.layernorm,
        _timesformer_constraints,
        native_drop_path=True,
        default_mean=(0.45, 0.45, 0.45),
        default_std=(0.225, 0.225, 0.225),
    ),
    "vjepa2": Family(
        "pixel_values_videos",
        lambda c: "mean",
        lambda m: m.encoder.embeddings,
        lambda m: m.encoder.layer,
        lambda m: m.encoder.layernorm,
        _vjepa2_constraints,
        native_drop_path=True,
        extra_inputs=(("skip_predictor", True),),
    ),
}


class HFVideoBackbone(nn.Module):
    """(N, C, T, H, W) clips -> (N, hidden_size) pooled encoder features of a HF model."""

    def __init__(self, model: nn.Module, family: Family, pooling: str) -> None:
        super().__init__()
        self.model = model
        self.input_key = family.input_key
        self.extra = dict(family.extra_inputs)
        self.pooling = pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(**{self.input_key: x.transpose(1, 2)}, **self.extra)
        tokens = out.last_hidden_state
        return tokens[:, 0] if self.pooling == "cls" else tokens.mean(1)


def _family(config, name: str) -> Family:
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise ValueError(
            f"backbone {name!r} is a {config.model_type!r} model; mvcli's Hugging Face "
            f"backbones are {', '.join(sorted(FAMILIES))}"
        )
    return family


def load_config(name: str):
    transformers = _transformers()
    return _load("config", model_ref(name), transformers.AutoConfig.from_pretrained)


def constraints(name: str) -> dict:
    config = load_config(name)
    return _family(config, name).constraints(config)


def preprocessing(name: str) -> dict:
    """The model's video processor settings: ``mean``/``std`` in [0, 1] units, and the
    processor's size/crop/frame fields when saved (recorded for reference)."""
    config = load_config(name)
    family = _family(config, name)
    saved = _processor_file(model_ref(name))
    if saved is None:
        cls = _processor_class(config.model_type)
        mean = getattr(cls, "image_mean", None) or family.default_mean
        std = getattr(cls, "image_std", None) or family.default_std
        saved = {}
    else:
        mean = saved.get("image_mean") or family.default_mean
        std = saved.get("image_std") or family.default_std
    out = {"mean": tuple(float(v) for v in mean), "std": tuple(float(v) for v in std)}
    for key in ("size", "crop_size", "num_frames"):
        if key in saved:
            out[key] = saved[key]
    return out


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    prep = preprocessing(name)
    return prep["mean"], prep["std"]


def _processor_file(ref: str) -> dict | None:
    from transformers.utils import cached_file

    for file in PROCESSOR_FILES:
        path = cached_file(
            ref,
            file,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
        if path is not None:
            return json.loads(Path(path).read_text())
    return None


def _processor_class(model_type: str):
    transformers = _transformers()
    try:
        from transformers.models.auto.video_processing_auto import (
            VIDEO_PROCESSOR_MAPPING_NAMES,
        )
    except ImportError:
        return None
    names = VIDEO_PROCESSOR_MAPPING_NAMES.get(model_type) or {}
    if isinstance(names, dict):
        names = names.get("torchvision") or next(iter(names.values()), None)
    return getattr(transformers, names, None) if isinstance(names, str) else None


def build_hf_backbone(name: str, finetune, checkpointing: bool = False) -> dict:
    """Load ``name`` (``hf:<id or folder>``; its input already checked against
    :func:`constraints`) with ``finetune`` (a ``FineTuning``) applied and, with
    ``checkpointing``, the model's own per-layer activation checkpointing on: the fields of
    its :class:`mvcli.models.backbones.Backbone` (module, feature_dim, stages, stage_names)."""
    transformers = _transformers()
    ref = model_ref(name)
    config = load_config(name)
    family = _family(config, name)
    if finetune.drop_path and family.native_drop_path:
        # Not setattr: TimesformerConfig's strict validation types the rate as int.
        vars(config)["drop_path_rate"] = float(finetune.drop_path)
    model = _load("weights", ref, transformers.AutoModel.from_pretrained, config=config)
    if getattr(model, "predictor", None) is not None:
        model.register_module("predictor", None)  # V-JEPA 2 pre-training only: never used here
    if finetune.drop_path and not family.native_drop_path:
        add_drop_path(family.blocks(model), finetune.drop_path)
    if checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ValueError(f"{name}: this model has no gradient checkpointing")
        # Newer transformers renamed the switch (the old name warns).
        options = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    module = HFVideoBackbone(model, family, family.pooling(config))
    blocks = list(family.blocks(model))
    norm = family.final_norm(model)
    last = nn.ModuleList([blocks[-1], norm]) if norm is not None else blocks[-1]
    return {
        "module": module,
        "feature_dim": config.hidden_size,
        "stages": [family.embeddings(model), *blocks[:-1], last],
        "stage_names": ["embeddings", *(f"block{i}" for i in range(len(blocks)))],
    }


class _DropPath:
    """Forward hook scaling a residual branch's output per sample (stochastic depth)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate

    def __call__(self, module: nn.Module, args, output):
        if not module.training or self.rate == 0.0:
            return output
        keep = 1.0 - self.rate
        shape = (output.shape[0],) + (1,) * (output.ndim - 1)
        mask = output.new_empty(shape).bernoulli_(keep)
        return output * mask / keep


def add_drop_path(blocks: nn.ModuleList, rate: float) -> None:
    """Stochastic depth on both residual branches of VideoMAE/ViT-style blocks (attention
    output; MLP output before its residual add), linearly from 0 to ``rate`` with depth,
    as timm's (and VideoMAE's reference code's) ``drop_path_rate``."""
    n = len(blocks)
    for i, block in enumerate(blocks):
        r = rate * i / (n - 1) if n > 1 else rate
        block.attention.register_forward_hook(_DropPath(r))
        block.output.dropout.register_forward_hook(_DropPath(r))
