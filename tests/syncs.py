"""Host-device synchronisations in training steps, counted on a CPU run.

A CPU run has no device to wait for, so this follows which tensors would live on the device
(the batch after its transfer, the model's parameters and buffers, tensors made with an
explicit ``device=`` or moved with ``.to(device)``, and everything computed from those) and
records each call that would make the host wait for one of them:

- a value read on the host: ``item``, ``bool`` (``if tensor``), ``int``, ``float``,
  ``tolist``, ``numpy``, ``cpu``, formatting, ``in``;
- an operation whose output size depends on the values (the host must learn it): selection by
  a boolean mask (``x[mask]``, ``x[mask] = y``), ``nonzero``, ``masked_select``,
  ``masked_scatter``, ``unique``, ``bincount``, ``repeat_interleave`` without
  ``output_size``, ``one_hot`` without ``num_classes``, one-argument ``where``;
- comparisons answered on the host (``equal``, ``allclose``) and linear algebra that checks
  its errors on the host (``linalg.inv`` & co.).

Each record names where the call came from: the innermost frame outside torch, and whether
that is mvcli's code (directly, or through a torchmetrics metric it updates), Lightning's or
another library's. Used by tests/task/test_module.py on a real fit through ``mvcli.cli.main``.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

_T = torch.Tensor
READS = {
    _T.item, _T.__bool__, _T.__int__, _T.__float__, _T.__index__, _T.tolist, _T.numpy,
    _T.cpu, _T.__format__, _T.__repr__, _T.__array__, _T.__contains__,
}  # fmt: skip
SIZED = {
    torch.nonzero, _T.nonzero, torch.argwhere, _T.argwhere, torch.masked_select,
    _T.masked_select, _T.masked_scatter, _T.masked_scatter_, torch.unique, _T.unique,
    torch.unique_consecutive, _T.unique_consecutive, torch.bincount, _T.bincount,
    torch.equal, _T.equal, torch.allclose, _T.allclose, torch.linalg.inv, torch.inverse,
    _T.inverse, torch.linalg.cholesky, torch.linalg.solve, torch.linalg.eigh,
}  # fmt: skip
INDEXING = {_T.__getitem__, _T.__setitem__, _T.index_put, _T.index_put_}
ONE_HOT = {F.one_hot, torch._C._nn.one_hot}
MOVES = {_T.to, _T.cuda}

TORCH = str(Path(torch.__file__).parent)
HERE = str(Path(__file__))


@dataclass
class Sync:
    call: str  # the torch call
    origin: str  # "mvcli", "mvcli via torchmetrics", "lightning", "torchmetrics", "other"
    where: str  # file:line (function) of the attributed frame
    step: int  # training step index


class SyncCounter(TorchFunctionMode):
    """Records :class:`Sync` events inside training steps (:attr:`in_step` set by the test)."""

    def __init__(self) -> None:
        super().__init__()
        self.device = WeakIdKeyDictionary()
        self.events: list[Sync] = []
        self.in_step = False
        self.step = -1

    # -- which tensors would be on the device ----------------------------------------------
    def mark(self, *trees) -> None:
        for leaf in tree_flatten(trees)[0]:
            if isinstance(leaf, torch.Tensor):
                self.device[leaf] = True

    def on_device(self, value) -> bool:
        return isinstance(value, torch.Tensor) and value in self.device

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
        device_in = any(self.on_device(x) for x in leaves)
        if self.in_step:
            why = self._sync(func, args, kwargs, device_in)
            if why:
                self.events.append(Sync(why, *_origin(), self.step))

        out = func(*args, **kwargs)
        # A device object (``device=self.device``) is the model's device; the string "cpu"
        # is the host (torch.optim keeps its step counts there so).
        made_on_device = kwargs.get("device") not in (None, "cpu") and not leaves
        if func in MOVES and _names_device(args[1:], kwargs):
            self.mark(out)  # on the CPU, .to(device) may return its input itself
        elif (device_in and func not in READS) or made_on_device:
            # Not an input handed back (grouping helpers return their inputs): a host
            # tensor stays one, even when updated in place from device values.
            host = {id(x) for x in leaves if not self.on_device(x)}
            self.mark([x for x in tree_flatten(out)[0] if id(x) not in host])
        return out

    def _sync(self, func, args, kwargs, device_in: bool) -> str | None:
        name = getattr(func, "__qualname__", None) or getattr(func, "__name__", str(func))
        if func in READS and device_in:
            return name
        if func in SIZED and device_in:
            return name
        if func in INDEXING and len(args) > 1 and _has_mask(args[1], self):
            return f"{name} with a boolean mask"
        if func in ONE_HOT and device_in and _num_classes(args, kwargs) == -1:
            return "one_hot without num_classes"
        if func is torch.where and device_in and len(args) + len(kwargs) == 1:
            return "where(condition)"
        if func is torch.repeat_interleave or func is _T.repeat_interleave:
            repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
            if self.on_device(repeats) and kwargs.get("output_size") is None:
                return "repeat_interleave without output_size"
        return None

    def summary(self) -> Counter:
        return Counter((e.origin, e.where, e.call) for e in self.events)


def _names_device(args, kwargs) -> bool:
    values = [*args, kwargs.get("device")]
    return any(isinstance(v, torch.device | str) or isinstance(v, torch.Tensor) for v in values)


def _num_classes(args, kwargs) -> int:
    return kwargs.get("num_classes", args[1] if len(args) > 1 else -1)


def _has_mask(index, counter: SyncCounter) -> bool:
    parts = index if isinstance(index, tuple | list) else (index,)
    return any(
        isinstance(p, torch.Tensor)
        and p.dtype in (torch.bool, torch.uint8)
        and p.ndim > 0
        and counter.on_device(p)
        for p in parts
    )


def _origin() -> tuple[str, str]:
    """(origin, file:line) of the innermost frame outside torch and this file."""
    frame = sys._getframe(2)
    while frame is not None and (
        frame.f_code.co_filename.startswith(TORCH) or frame.f_code.co_filename == HERE
    ):
        frame = frame.f_back
    if frame is None:
        return "other", "?"
    first = _library(frame)
    if first == "torchmetrics":
        outer = frame
        while outer is not None and _library(outer) in ("torchmetrics", "torch"):
            outer = outer.f_back
        if outer is not None and _library(outer) == "mvcli":
            return "mvcli via torchmetrics", _where(outer)
    return first, _where(frame)


def _library(frame) -> str:
    path = frame.f_code.co_filename
    for name in ("mvcli", "lightning", "torchmetrics"):
        if f"/{name}/" in path:
            return name
    return "torch" if path.startswith(TORCH) else "other"


def _where(frame) -> str:
    path = Path(frame.f_code.co_filename)
    parts = path.parts
    short = "/".join(parts[parts.index("mvcli") :]) if "mvcli" in parts else path.name
    return f"{short}:{frame.f_lineno} ({frame.f_code.co_name})"
