"""Contact sheets (PNG or JPEG, after the file name's suffix): rows of face frames, each with its
spectrogram underneath.

One row per clip (input, reconstruction, swap, or one interpolation step): `n_frames` frames evenly
spaced over the clip, upscaled to `face_px`, and below them the log-power spectrogram of the whole
clip (time left to right, 0 Hz at the bottom, magma colour map over DYN_RANGE_DB below the sheet's
loudest bin), stretched to the same width so that a frame sits above the sound it goes with.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from avmdvae.atomic import atomic_path
from avmdvae.errors import ConfigError

DYN_RANGE_DB = 80.0  # colour range of the spectrograms (dB below the maximum)
LABEL_H = 16  # pixels above each row for its label
SPEC_H = 96  # spectrogram height in pixels (513 bins resampled)
PAD = 4  # pixels between rows / around the sheet
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}  # suffix -> PIL format


@dataclass
class SheetRow:
    label: str
    faces: np.ndarray  # (N, S, S, 3) uint8
    power: np.ndarray | None = None  # (N, 513) power spectrogram


def _colormap(name: str = "magma") -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colour map (greyscale if matplotlib is missing)."""
    try:
        import matplotlib

        lut = matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3]
        return (lut * 255).round().astype(np.uint8)
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        g = np.arange(256, dtype=np.uint8)
        return np.stack([g, g, g], 1)


def spectrogram_image(
    power: np.ndarray,
    width: int,
    height: int = SPEC_H,
    top_db: float | None = None,
    lut: np.ndarray | None = None,
) -> np.ndarray:
    """(N, F) power -> (height, width, 3) uint8, log scale, 0 Hz at the bottom."""
    db = 10 * np.log10(np.maximum(np.asarray(power, np.float64), 1e-12))
    top = float(db.max()) if top_db is None else top_db
    v = np.clip((db - (top - DYN_RANGE_DB)) / DYN_RANGE_DB, 0, 1)  # (N, F) in [0, 1]
    img = Image.fromarray((v.T[::-1] * 255).astype(np.uint8))  # (F, N): frequency up
    img = img.resize((width, height), Image.BILINEAR)
    lut = _colormap() if lut is None else lut
    return lut[np.asarray(img)]


def frame_indices(n: int, k: int) -> np.ndarray:
    """k frame indices evenly spread over [0, n) (centres of k equal parts)."""
    k = max(1, min(k, n))
    return np.minimum(((np.arange(k) + 0.5) * n / k).astype(int), n - 1)


def render_sheet(rows: Sequence[SheetRow], n_frames: int = 8, face_px: int = 96) -> np.ndarray:
    """The sheet as an RGB uint8 array."""
    if not rows:
        raise ValueError("no rows to draw")
    width = n_frames * face_px
    lut = _colormap()
    powers = [r.power for r in rows if r.power is not None]
    top = max(float(10 * np.log10(max(float(np.max(p)), 1e-12))) for p in powers) if powers else None
    blocks: list[np.ndarray] = []
    for r in rows:
        idx = frame_indices(len(r.faces), n_frames)
        tiles = [
            np.asarray(Image.fromarray(r.faces[i]).resize((face_px, face_px), Image.BICUBIC)) for i in idx
        ]
        strip = np.zeros((face_px, width, 3), np.uint8)
        for j, t in enumerate(tiles):
            strip[:, j * face_px : (j + 1) * face_px] = t
        label = Image.new("RGB", (width, LABEL_H), (255, 255, 255))
        ImageDraw.Draw(label).text((2, 2), r.label, fill=(0, 0, 0))
        parts = [np.asarray(label), strip]
        if r.power is not None:
            parts.append(spectrogram_image(r.power, width, SPEC_H, top, lut))
        parts.append(np.full((PAD, width, 3), 255, np.uint8))
        blocks.append(np.concatenate(parts, 0))
    sheet = np.concatenate(blocks, 0)
    return np.pad(sheet, ((PAD, 0), (PAD, PAD), (0, 0)), constant_values=255)


def image_format(path: str | os.PathLike[str], option: str = "--sheet") -> str:
    """The PIL format that the suffix of `path` names (PNG or JPEG); ConfigError for any other."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in IMAGE_FORMATS:
        raise ConfigError(f"{option} {path}: name an image ending in .png, .jpg or .jpeg")
    return IMAGE_FORMATS[suffix]


def write_sheet(
    path: str | os.PathLike[str], rows: Sequence[SheetRow], n_frames: int = 8, face_px: int = 96
) -> None:
    """Render `rows` and save as PNG or JPEG after the suffix of `path` (`image_format`), atomically."""
    fmt = image_format(path)
    img = Image.fromarray(render_sheet(rows, n_frames, face_px))
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
