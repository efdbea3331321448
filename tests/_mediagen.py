"""Generate small test media with PyAV: frames that encode their own index, tones and clicks."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

W, H = 64, 64  # 4 x 4 blocks of 16 x 16 pixels (one macroblock each): 16 bits of frame index
_ON = np.array([250, 220, 40], np.uint8)  # yellow = bit 1
_OFF = np.array([20, 40, 160], np.uint8)  # blue = bit 0


def index_frame(k: int, width: int = W, height: int = H) -> np.ndarray:
    """An RGB frame whose 4x4 block pattern spells the integer k (bit b at block b, row-major)."""
    bits = (k >> np.arange(16)) & 1
    grid = np.where(bits.reshape(4, 4, 1).astype(bool), _ON, _OFF)  # (4, 4, 3)
    img = np.repeat(np.repeat(grid, height // 4, axis=0), width // 4, axis=1)
    return np.ascontiguousarray(img.astype(np.uint8))


def frame_index(img: np.ndarray) -> int:
    """Read back the index spelled by `index_frame` (from the block centres' red channel)."""
    h, w = img.shape[:2]
    ys = (np.arange(4) * h // 4 + h // 8).astype(int)
    xs = (np.arange(4) * w // 4 + w // 8).astype(int)
    red = img[ys[:, None], xs[None, :], 0].reshape(-1)
    return int(((red > 128).astype(int) << np.arange(16)).sum())


def clicks(times: list[float], sample_rate: int, duration: float, channels: int = 2,
           tone_hz: float | None = 440.0) -> np.ndarray:
    """(C, S) float32: a quiet tone plus one-sample clicks of amplitude 0.9 at `times` (seconds)."""
    n = int(round(duration * sample_rate))
    t = np.arange(n) / sample_rate
    x = np.zeros(n) if tone_hz is None else 0.05 * np.sin(2 * np.pi * tone_hz * t)
    for c in times:
        x[int(round(c * sample_rate))] = 0.9
    return np.repeat(x[None, :], channels, axis=0).astype(np.float32)


def encode(path: Path, *, n_frames: int = 0, rate: Fraction = Fraction(30), pts: list[float] | None = None,
           vcodec: str = "libx264", audio: np.ndarray | None = None, acodec: str = "aac",
           sample_rate: int = 48_000, audio_start: float = 0.0, fmt: str | None = None,
           size: tuple[int, int] = (W, H)) -> Path:
    """Write a test file. Video: `n_frames` index frames at `rate`, or at explicit times `pts` (s,
    variable frame rate). Audio: (C, S) float32 starting at `audio_start` seconds. Either may be absent.
    """
    vtimes = pts if pts is not None else [k / rate for k in range(n_frames)]
    with av.open(str(path), "w", format=fmt) as c:
        vs = None
        if vtimes:
            vs = c.add_stream(vcodec, rate=rate)
            vs.width, vs.height = size
            vs.pix_fmt = "yuv420p"
            vs.codec_context.time_base = Fraction(1, 1000) if pts is not None else 1 / Fraction(rate)
            if vcodec == "libx264":
                vs.options = {"crf": "10", "preset": "ultrafast"}
            else:
                vs.bit_rate = 4_000_000
        as_ = None
        if audio is not None:
            layout = "stereo" if audio.shape[0] == 2 else "mono"
            as_ = c.add_stream(acodec, rate=sample_rate, layout=layout)
        if vs is not None:
            tb = vs.codec_context.time_base
            for k, t in enumerate(vtimes):
                f = av.VideoFrame.from_ndarray(index_frame(k, *size), format="rgb24")
                f.pts = int(round(Fraction(t) / tb))
                f.time_base = tb
                c.mux(vs.encode(f))
            c.mux(vs.encode(None))
        if as_ is not None:
            fmt_name = as_.codec_context.format.name
            a = audio if fmt_name.endswith("p") else np.ascontiguousarray(audio.T.reshape(1, -1))
            if fmt_name.startswith("s16"):
                a = (np.clip(a, -1, 1) * 32767).astype(np.int16)
            start = int(round(audio_start * sample_rate))
            chunk = 1024
            n = audio.shape[1]
            for i in range(0, n, chunk):
                j = min(n, i + chunk)
                piece = a[:, i:j] if fmt_name.endswith("p") else a[:, i * audio.shape[0]:j * audio.shape[0]]
                f = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format=fmt_name,
                                               layout=as_.codec_context.layout.name)
                f.sample_rate = sample_rate
                f.pts = start + i
                f.time_base = Fraction(1, sample_rate)
                c.mux(as_.encode(f))
            c.mux(as_.encode(None))
    return path
