"""Option keys renamed since mvcli 0.1, translated before jsonargparse validates anything.

mvcli 0.1 had the loss options flat in the model section (``model.loss: weighted``,
``model.label_smoothing: 0.1``, ...); they are now the ``model.loss`` section
(:class:`mvcli.task.losses.LossConfig`): ``model.loss.kind``, ``model.loss.label_smoothing``.
Config files (``--config``, through :meth:`ArgumentParser.parse_string`), command-line
options and dict arguments are translated here with one FutureWarning naming each old -> new
key; a checkpoint's hyperparameters (``mvcli.cli.checkpoint_defaults``) silently, since the
file is not the user's to edit.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import yaml

from mvcli.data.taxonomy import NUM_CLASSES
from mvcli.task.losses import LOSSES, LossConfig

# model.<old> -> model.loss.<new>; model.loss itself (a loss name or {head: name}) -> kind.
LOSS_KEYS = {
    "label_smoothing": "label_smoothing",
    "focal_gamma": "focal_gamma",
    "focal_alpha": "focal_alpha",
    "class_weighting": "class_weighting",
    "effective_beta": "effective_beta",
    "max_weight_ratio": "max_weight_ratio",
    "allow_double_balancing": "allow_double_balancing",
    "task_weights": "task_weights",
}
_SECTION_FIELDS = set(LossConfig.__dataclass_fields__)


def is_old_loss_value(value: Any) -> bool:
    """``model.loss`` as 0.1 wrote it: a loss name, or a mapping head -> loss name."""
    if isinstance(value, str):
        return value in LOSSES
    if isinstance(value, Mapping) and value:
        return set(value) <= set(NUM_CLASSES) and all(v in LOSSES for v in value.values())
    return False


def translate_model(model: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A model section with the 0.1 keys moved into ``loss``; and the renames, ``old -> new``."""
    out = dict(model)
    renames: list[str] = []
    section: dict[str, Any] = {}
    if "loss" in out and is_old_loss_value(out["loss"]):
        section["kind"] = out.pop("loss")
        renames.append("model.loss -> model.loss.kind")
    for old, new in LOSS_KEYS.items():
        if old in out:
            section[new] = out.pop(old)
            renames.append(f"model.{old} -> model.loss.{new}")
    if section:
        given = out.get("loss")
        out["loss"] = {**(dict(given) if isinstance(given, Mapping) else {}), **section}
    return out, renames


def translate_config(config: Any) -> tuple[Any, list[str]]:
    """A parsed config file (or dict of arguments) with its model sections translated: the
    top-level ``model``, one under a subcommand (``fit: {model: ...}``) and flat keys
    (``model.label_smoothing``)."""
    if not isinstance(config, Mapping):
        return config, []
    out = dict(config)
    renames: list[str] = []
    if isinstance(out.get("model"), Mapping):
        out["model"], renames = translate_model(out["model"])
    flat = {k[len("model.") :]: out.pop(k) for k in list(out) if _is_old_flat_key(k, out[k])}
    if flat:
        model, more = translate_model(flat)
        out |= {f"model.{k}": v for k, v in _flatten(model).items()}
        renames += more
    for key, value in out.items():
        nested = isinstance(value, Mapping) and isinstance(value.get("model"), Mapping)
        if key != "model" and nested:
            out[key], more = translate_config(value)
            renames += more
    return out, renames


def _is_old_flat_key(key: str, value: Any) -> bool:
    if key == "model.loss":
        return is_old_loss_value(value)
    return key.startswith("model.") and key[len("model.") :] in LOSS_KEYS


def _flatten(model: dict[str, Any]) -> dict[str, Any]:
    """``{loss: {kind: x}}`` -> ``{"loss.kind": x}`` (the section's fields only)."""
    out = {k: v for k, v in model.items() if k != "loss"}
    out |= {f"loss.{k}": v for k, v in model.get("loss", {}).items() if k in _SECTION_FIELDS}
    return out


def translate_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Command-line options: ``--model.label_smoothing 0.1`` -> ``--model.loss.label_smoothing
    0.1``, ``--model.loss weighted`` -> ``--model.loss.kind weighted`` (a config path or
    string given to ``--model.loss`` is left alone)."""
    out: list[str] = []
    renames: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=")
        if isinstance(arg, str) and name.startswith("--model."):
            key = name[len("--model.") :]
            has_value = bool(eq) or i + 1 < len(args)
            value = inline if eq else (args[i + 1] if i + 1 < len(args) else None)
            new = None
            if key in LOSS_KEYS:
                new = f"loss.{LOSS_KEYS[key]}"
            elif key == "loss" and has_value and is_old_loss_value(_load(value)):
                new = "loss.kind"
            if new is not None:
                renames.append(f"--model.{key} -> --model.{new}")
                out.append(f"--model.{new}{eq}{inline}")
                i += 1
                continue
        out.append(arg)
        i += 1
    return out, renames


def _load(value: Any) -> Any:
    try:
        return yaml.safe_load(value) if isinstance(value, str) else value
    except yaml.YAMLError:
        return value


def warn_renamed(renames: list[str], where: str) -> None:
    """The one deprecation line for the old keys found in ``where``."""
    if renames:
        warnings.warn(
            f"renamed options in {where} (mvcli 0.1 keys, translated; please rename): "
            + ", ".join(dict.fromkeys(renames)),
            FutureWarning,
            stacklevel=3,
        )


def translate_config_text(content: str, where: str) -> str:
    """A YAML/JSON config text with the old keys translated (unchanged text if none)."""
    try:
        config = yaml.safe_load(content)
    except yaml.YAMLError:
        return content  # jsonargparse reports it
    new, renames = translate_config(config)
    if not renames:
        return content
    warn_renamed(renames, where)
    return yaml.safe_dump(new, sort_keys=False)
