"""Load facenet-pytorch's MTCNN with or without a working torchvision.

facenet-pytorch 2.5.3 imports exactly two things from torchvision at module import time:
`torchvision.ops.boxes.batched_nms` and `torchvision.transforms.functional.to_tensor`. On our CPU
machines torchvision is either absent or broken (`import torchvision` raises "operator
torchvision::nms does not exist"), so this module provides pure-torch stand-ins for both.

The stand-ins are used ONLY when a working torchvision cannot be imported, and only while
facenet-pytorch is being imported: `load_mtcnn()` puts minimal stub modules into `sys.modules`,
imports facenet_pytorch (whose modules then hold references to the stand-in functions), and restores
`sys.modules` to what it was. Nothing named `torchvision` is left behind, so later imports (e.g.
torchmetrics probing for torchvision) see the real state of the environment.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avmdvae.errors import ConfigError

# Rows of the IoU matrix computed at once in `batched_nms`: bounds memory to NMS_BLOCK * n floats
# (PNet can emit thousands of candidate boxes on a large frame; 1024 * 20_000 * 4 B = 80 MB worst case).
NMS_BLOCK = 1024

# The stub module names facenet-pytorch's imports resolve through.
_STUB_NAMES = (
    "torchvision",
    "torchvision.ops",
    "torchvision.ops.boxes",
    "torchvision.transforms",
    "torchvision.transforms.functional",
)


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes a (M,4) against b (K,4), (x1,y1,x2,y2) with torchvision's area = w*h -> (M,K)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression with torchvision.ops.nms semantics.

    boxes (N,4) (x1,y1,x2,y2), scores (N,) -> LongTensor of kept indices, by decreasing score.
    A box is dropped when its IoU with a kept, higher-scoring box is > iou_threshold.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    suppressed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    for start in range(0, n, NMS_BLOCK):
        stop = min(start + NMS_BLOCK, n)
        if suppressed[start:stop].all():
            continue
        # over[i, j]: box start+i overlaps box start+j enough to suppress it (j >= i in sorted order).
        over = (_box_iou(b[start:stop], b[start:]) > iou_threshold).cpu().numpy()
        for i in range(start, stop):
            if suppressed[i]:
                continue
            keep.append(i)
            suppressed[i:] |= over[i - start, i - start :]
    keep_t = torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)
    return order[keep_t]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """torchvision.ops.boxes.batched_nms stand-in: NMS independently per category in `idxs`.

    boxes (N,4), scores (N,), idxs (N,) int -> LongTensor of kept indices sorted by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    kept = []
    for cat in torch.unique(idxs):
        members = torch.nonzero(idxs == cat).flatten()
        kept.append(members[nms(boxes[members], scores[members], iou_threshold)])
    keep = torch.cat(kept)
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


def to_tensor(pic) -> torch.Tensor:
    """torchvision.transforms.functional.to_tensor stand-in for numpy arrays and PIL images.

    (H,W,C) or (H,W) -> (C,H,W); uint8 input is scaled to [0,1] floats, other dtypes are kept.
    """
    if isinstance(pic, torch.Tensor):
        raise TypeError("to_tensor expects a numpy array or PIL image, not a tensor")
    arr = np.asarray(pic)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"to_tensor expects a 2-D or 3-D image, got shape {arr.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    if tensor.dtype == torch.uint8:
        return tensor.to(torch.get_default_dtype()).div(255)
    return tensor


@functools.cache
def torchvision_works() -> bool:
    """True when the real torchvision imports and its compiled NMS operator runs."""
    try:
        torchvision = importlib.import_module("torchvision")  # probed lazily: broken on CPU-only machines
        torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
    except Exception:  # ImportError, or RuntimeError "operator torchvision::nms does not exist"
        return False
    return True


def _stub_modules() -> dict[str, types.ModuleType]:
    """Minimal modules named like torchvision's that hold only the two stand-ins."""
    mods = {name: types.ModuleType(name, "avmdvae stand-in for torchvision (facenet-pytorch import only)")
            for name in _STUB_NAMES}
    for mod in mods.values():
        mod.__avmdvae_stub__ = True  # type: ignore[attr-defined]
    mods["torchvision"].ops = mods["torchvision.ops"]  # type: ignore[attr-defined]
    mods["torchvision"].transforms = mods["torchvision.transforms"]  # type: ignore[attr-defined]
    mods["torchvision.ops"].boxes = mods["torchvision.ops.boxes"]  # type: ignore[attr-defined]
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]  # type: ignore[attr-defined]
    mods["torchvision.ops.boxes"].batched_nms = batched_nms  # type: ignore[attr-defined]
    mods["torchvision.transforms.functional"].to_tensor = to_tensor  # type: ignore[attr-defined]
    return mods


@contextmanager
def _stubbed_torchvision() -> Iterator[None]:
    """Temporarily install the stub modules in sys.modules; restore the previous entries on exit."""
    saved = {name: sys.modules.get(name) for name in _STUB_NAMES}
    sys.modules.update(_stub_modules())
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


@functools.cache
def load_mtcnn() -> type:
    """Return facenet_pytorch.MTCNN, importing facenet-pytorch through the stand-ins if needed."""
    if "facenet_pytorch.models.utils.detect_face" in sys.modules or torchvision_works():
        from facenet_pytorch import MTCNN

        return MTCNN
    # A previous failed import can leave half-initialised facenet_pytorch submodules behind.
    for name in [n for n in sys.modules if n == "facenet_pytorch" or n.startswith("facenet_pytorch.")]:
        del sys.modules[name]
    with _stubbed_torchvision():
        from facenet_pytorch import MTCNN
    return MTCNN


_NETS = ("PNet", "RNet", "ONet")  # MTCNN's three stages, each with its weights in data/<name>.pt


def _safe_net(net_cls: type, weights: Path) -> torch.nn.Module:
    """One MTCNN stage with its bundled weights loaded as plain tensors (weights_only=True)."""
    net = net_cls(pretrained=False)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused or file damaged: not loadable as weights only
        raise ConfigError(f"cannot load the MTCNN weights {weights} as plain tensors ({e}); "
                           "reinstall facenet-pytorch==2.5.3") from None
    net.load_state_dict(state)
    return net


def build_mtcnn(**kwargs: Any) -> torch.nn.Module:
    """`facenet_pytorch.MTCNN(**kwargs)`, with its weights loaded safely.

    facenet-pytorch's PNet/RNet/ONet call `torch.load` without `weights_only`, which runs arbitrary
    pickled code on torch < 2.6 (we accept torch >= 2.2). While MTCNN is built, its module's three
    network classes are replaced by factories that load the same bundled files with
    `weights_only=True`; the classes are restored afterwards.
    """
    mtcnn_cls = load_mtcnn()
    module = sys.modules[mtcnn_cls.__module__]
    data = Path(module.__file__).resolve().parent.parent / "data"
    saved = {name: getattr(module, name) for name in _NETS}
    for name, net_cls in saved.items():
        setattr(module, name, functools.partial(_safe_net, net_cls, data / f"{name.lower()}.pt"))
    try:
        return mtcnn_cls(**kwargs)
    finally:
        for name, net_cls in saved.items():
            setattr(module, name, net_cls)


def uses_stand_in() -> bool:
    """True when the loaded facenet-pytorch runs on this module's NMS rather than torchvision's."""
    load_mtcnn()
    from facenet_pytorch.models.utils import detect_face

    return detect_face.batched_nms is batched_nms
