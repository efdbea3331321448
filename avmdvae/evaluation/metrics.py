"""Objective quality metrics for resynthesised / denoised audiovisual speech.

Audio (numpy or torch waveforms, 1-D, any float dtype; the two signals are cut to the shorter length):
    stoi(clean, est, sample_rate)       short-time objective intelligibility (pystoi), ~0..1, higher better
    pesq_wb(clean, est, sample_rate)    wideband PESQ (ITU-T P.862.2, pesq package), 1.04..4.64, higher better
    si_sdr(clean, est)                  scale-invariant SDR in dB, higher better
    log_spectral_distance(p_ref, p_est) RMS dB distance between power spectrograms (..., N, F), lower better
Images (uint8 (..., H, W, 3) arrays in 0..255, or float arrays/tensors in 0..1, channels last or first):
    psnr(a, b, data_range=None)         dB over all pixels given (inf for identical inputs), higher better
    ssim(a, b, data_range=None)         mean over images of per-image SSIM (Wang et al. 2004), higher better
    psnr_frames / ssim_frames           the same per image: (N,) arrays
Convenience wrappers returning dicts (used by `avmdvae denoise` and the evaluation tasks):
    audio_metrics(clean, est, sample_rate) -> {"stoi", "pesq", "si_sdr"}
    face_metrics(clean, est) -> {"psnr", "ssim"}
Movement (a clip's frames minus their mean over the clip: what moves, not what the face looks like):
    project(u, v) -> (along, off)       a change u against a target change v
    face_movement(clean, est[, regions]) -> {"move_along_<name>", "move_off_<name>"} per band of FACE_BANDS,
        or per box of the crop given (the denoise task: the corrupted region)

pystoi and pesq are optional dependencies (extra `metrics`); a missing one raises ConfigError.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from avmdvae.constants import SAMPLE_RATE  # wideband PESQ is defined at 16 kHz only
from avmdvae.errors import ConfigError, MediaError

PESQ_MAX = 4.644  # P.862.2 wideband MOS-LQO ceiling: the mapping of a perfect raw score 4.5
PESQ_MIN_SECONDS = 0.25  # P.862 needs at least 1/4 s of signal to align and score
STOI_MIN_SECONDS = 0.4  # pystoi: 30 frames of 256 samples at 10 kHz (384 ms) form one intermediate block

SSIM_WIN = 11  # Wang et al. (2004): 11x11 circular-symmetric Gaussian window ...
SSIM_SIGMA = 1.5  # ... with standard deviation 1.5 pixels
SSIM_K1 = 0.01  # C1 = (K1 L)^2 and C2 = (K2 L)^2 stabilise the ratios (L = data range)
SSIM_K2 = 0.03
_SSIM_CHUNK = 256  # images per convolution batch: bounds memory at 256 * 5 * 3 * 64 * 64 * 8 B = 63 MB

# Horizontal bands of an aligned face crop, as fractions of its height. face.py crops a square of 1 + 2 * 0.2
# times the MTCNN box (brows to chin) around its centre, so a point at height y of the box lies at
# (0.2 + y) / 1.4 of the crop: eyes at about y = 0.3 -> 0.36, mouth at about y = 0.75 -> 0.68; the synthetic
# faces put them at 25 / 64 = 0.39 and 44 / 64 = 0.69. Each band reaches about half way to the nose.
FACE_BANDS = {"face": (0.0, 1.0), "eyes": (0.28, 0.50), "mouth": (0.56, 0.84)}

ArrayLike = np.ndarray | torch.Tensor


# ----------------------------------------------------------------------------------------- audio
def _wave(x: ArrayLike, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = np.squeeze(a).astype(np.float64)
    if a.ndim != 1:
        raise MediaError(f"{name}: expected a mono waveform (S,), got shape {tuple(np.shape(x))}; "
                         "mix channels down first.")
    return a


def _pair(clean: ArrayLike, est: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    c, e = _wave(clean, "clean"), _wave(est, "estimate")
    n = min(len(c), len(e))
    return c[:n], e[:n]


def _resample(x: np.ndarray, sample_rate: int, target: int) -> np.ndarray:
    if sample_rate == target:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(int(sample_rate), int(target))
    return resample_poly(x, target // g, int(sample_rate) // g)


def stoi(clean: ArrayLike, est: ArrayLike, sample_rate: int = SAMPLE_RATE, extended: bool = False) -> float:
    """STOI (Taal et al. 2011) of `est` against `clean`, both (S,) at `sample_rate`. ~1 for identical.

    Returns nan when the signals are shorter than one STOI block (0.4 s).
    """
    try:
        from pystoi import stoi as _stoi
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("STOI needs pystoi: pip install 'avmdvae[metrics]'.") from None
    c, e = _pair(clean, est)
    if len(c) < STOI_MIN_SECONDS * sample_rate:
        return float("nan")
    return float(_stoi(c, e, int(sample_rate), extended=extended))


def pesq_wb(clean: ArrayLike, est: ArrayLike, sample_rate: int = SAMPLE_RATE) -> float:
    """Wideband PESQ (MOS-LQO, 1.04 .. 4.64) of `est` against `clean`, both (S,) at `sample_rate`.

    Signals at another rate are resampled to 16 kHz. Returns nan when P.862 finds no speech
    (silence) or the signals are shorter than 0.25 s.
    """
    try:
        from pesq import PesqError
        from pesq import pesq as _pesq
    except ImportError:  # pragma: no cover
        raise ConfigError("PESQ needs the pesq package: pip install 'avmdvae[metrics]'.") from None
    c, e = _pair(clean, est)
    c, e = _resample(c, sample_rate, SAMPLE_RATE), _resample(e, sample_rate, SAMPLE_RATE)
    if len(c) < PESQ_MIN_SECONDS * SAMPLE_RATE or not np.any(c):
        return float("nan")
    # P.862 level-aligns internally; scale both by the clean peak so that float32 input in [-1, 1]
    # and int16-range input score the same.
    peak = float(np.max(np.abs(c)))
    try:
        return float(_pesq(SAMPLE_RATE, (c / peak).astype(np.float32), (e / peak).astype(np.float32), "wb"))
    except PesqError:  # no utterances detected, buffer too short: not scorable
        return float("nan")


def si_sdr(clean: ArrayLike, est: ArrayLike, eps: float = 1e-12) -> float:
    """Scale-invariant SDR (Le Roux et al. 2019) in dB; zero-mean signals, optimal scaling of `clean`."""
    c, e = _pair(clean, est)
    c, e = c - c.mean(), e - e.mean()
    alpha = float(np.dot(e, c) / (np.dot(c, c) + eps))
    target = alpha * c
    noise = e - target
    return float(10 * np.log10((np.dot(target, target) + eps) / (np.dot(noise, noise) + eps)))


LSD_EPS = 1e-10  # power floor of the log-spectral distance (a 100 dB range below unit power)


def log_spectral_distance(power_ref: ArrayLike, power_est: ArrayLike, eps: float = LSD_EPS) -> float:
    """RMS over bins of the dB difference, averaged over frames. Power spectrograms (..., N, F)."""
    r = torch.as_tensor(power_ref).double().clamp_min(0)
    e = torch.as_tensor(power_est).double().clamp_min(0)
    n = min(r.shape[-2], e.shape[-2])
    d = 10 * torch.log10((r[..., :n, :] + eps) / (e[..., :n, :] + eps))
    return float(d.square().mean(-1).sqrt().mean())


def audio_metrics(clean: ArrayLike, est: ArrayLike, sample_rate: int = SAMPLE_RATE) -> dict[str, float]:
    """{"stoi", "pesq", "si_sdr"} of one estimate against its clean reference (both (S,))."""
    return {"stoi": stoi(clean, est, sample_rate), "pesq": pesq_wb(clean, est, sample_rate),
            "si_sdr": si_sdr(clean, est)}


# ---------------------------------------------------------------------------------------- images
def _default_range(x: Any) -> float:
    dt = x.dtype
    if dt in (np.uint8, torch.uint8):
        return 255.0
    return 1.0


def _images(x: ArrayLike, channels_last: bool | None) -> torch.Tensor:
    """Any image batch -> float64 tensor (N, C, H, W).

    Accepted: (H, W), (H, W, C), (N, H, W, C), (C, H, W), (N, C, H, W) with C in {1, 3}. Channels-last
    is assumed when the last axis has 1 or 3 entries and the third-from-last does not (set
    `channels_last` to decide explicitly).
    """
    t = torch.as_tensor(x).detach().cpu().to(torch.float64)
    if t.ndim == 2:
        return t[None, None]
    if t.ndim not in (3, 4):
        raise MediaError(f"images: expected (N,H,W,C) or (N,C,H,W), got shape {tuple(t.shape)}.")
    if channels_last is None:
        channels_last = t.shape[-1] in (1, 3) and t.shape[-3] not in (1, 3)
    if channels_last:
        t = t.movedim(-1, -3)
    return t if t.ndim == 4 else t[None]


def _check_same(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise MediaError(f"images: shapes differ ({tuple(a.shape)} vs {tuple(b.shape)}); "
                         "compare crops of the same size and count.")


def psnr_frames(a: ArrayLike, b: ArrayLike, data_range: float | None = None,
                channels_last: bool | None = None) -> np.ndarray:
    """PSNR in dB of each image pair: (N,) float64 (inf where identical)."""
    rng = float(data_range) if data_range is not None else _default_range(a)
    x, y = _images(a, channels_last), _images(b, channels_last)
    _check_same(x, y)
    mse = (x - y).square().flatten(1).mean(1)
    with np.errstate(divide="ignore"):
        return (10 * np.log10(rng**2 / mse.numpy())).astype(np.float64)


def psnr(a: ArrayLike, b: ArrayLike, data_range: float | None = None,
         channels_last: bool | None = None) -> float:
    """PSNR in dB over all pixels of all images given: 10 log10(L^2 / MSE). inf for identical input.

    L = `data_range`, by default 255 for uint8 and 1.0 for float input.
    """
    rng = float(data_range) if data_range is not None else _default_range(a)
    x, y = _images(a, channels_last), _images(b, channels_last)
    _check_same(x, y)
    mse = float((x - y).square().mean())
    return float("inf") if mse == 0 else float(10 * math.log10(rng**2 / mse))


def _gaussian_window(size: int = SSIM_WIN, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian (size,) float64."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _band(n: int, g: torch.Tensor) -> torch.Tensor:
    """(n - k + 1, n) matrix whose row i holds the window g at columns i .. i+k-1 ('valid' filtering)."""
    k = g.shape[0]
    m = torch.zeros(n - k + 1, n, dtype=g.dtype)
    for i in range(n - k + 1):
        m[i, i:i + k] = g
    return m


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter of every map: (..., H, W) -> (..., H-k+1, W-k+1).

    Written as two products with banded matrices, Mh @ X @ Mw^T: on CPU this is several times
    faster than a grouped conv2d.
    """
    mh, mw = _band(x.shape[-2], g), _band(x.shape[-1], g)
    return mh @ x @ mw.T


def ssim_frames(a: ArrayLike, b: ArrayLike, data_range: float | None = None,
                channels_last: bool | None = None) -> np.ndarray:
    """SSIM of each image pair: (N,) float64 in [-1, 1] (1 for identical images).

    Wang, Bovik, Sheikh & Simoncelli (2004): local means, variances and covariance under an 11x11
    Gaussian window (sigma 1.5), evaluated where the window fits inside the image ('valid'),
        SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)),
    averaged over positions and channels. Images smaller than the window use a window of their size.
    """
    rng = float(data_range) if data_range is not None else _default_range(a)
    # float32 on data scaled to [0, 1] (C1, C2 scaled alike): var = E[x^2] - mu^2 then has absolute
    # errors ~1e-7, far below C2 = 9e-4, at twice the speed of float64.
    x_all = (_images(a, channels_last) / rng).float()
    y_all = (_images(b, channels_last) / rng).float()
    _check_same(x_all, y_all)
    size = min(SSIM_WIN, x_all.shape[-1], x_all.shape[-2])
    g = _gaussian_window(size, SSIM_SIGMA).float()
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    out = []
    for s in range(0, x_all.shape[0], _SSIM_CHUNK):
        x, y = x_all[s:s + _SSIM_CHUNK], y_all[s:s + _SSIM_CHUNK]
        # One pair of matrix products for the five maps x, y, x^2, y^2, xy stacked together.
        mx, my, exx, eyy, exy = _blur(torch.stack([x, y, x * x, y * y, x * y]), g).unbind(0)
        vx, vy, cxy = exx - mx * mx, eyy - my * my, exy - mx * my
        s_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        out.append(s_map.flatten(1).double().mean(1))
    return torch.cat(out).numpy() if out else np.zeros(0)


def ssim(a: ArrayLike, b: ArrayLike, data_range: float | None = None,
         channels_last: bool | None = None) -> float:
    """Mean over images of the per-image SSIM (see `ssim_frames`)."""
    return float(np.mean(ssim_frames(a, b, data_range, channels_last)))


def face_metrics(clean: ArrayLike, est: ArrayLike, data_range: float | None = None) -> dict[str, float]:
    """{"psnr", "ssim"} of face crops (N, 64, 64, 3) against their clean reference."""
    return {"psnr": psnr(clean, est, data_range), "ssim": ssim(clean, est, data_range)}


# ----------------------------------------------------------------------------------------- movement
def project(u: Any, v: Any) -> tuple[float, float]:
    """A change u against a target change v (arrays or tensors of one shape): (<u, v> / |v|^2, |u - along v|^2
    / |v|^2), the share of v made and what else changed in units of |v|^2; (nan, nan) when v is zero."""
    vv = float((v * v).sum())
    if not np.isfinite(vv) or vv <= 1e-12:
        return float("nan"), float("nan")
    along = float((u * v).sum()) / vv
    return along, float(((u - along * v) ** 2).sum()) / vv


def face_movement(clean: ArrayLike, est: ArrayLike,
                  regions: Mapping[str, tuple[float, float, float, float]] | None = None) -> dict[str, float]:
    """How much of a clip's movement a reconstruction renders. clean, est: the clip's face crops (N, H, W, 3),
    uint8 or float in [0, 1]; each minus its mean over the N frames is the movement. Per region (name ->
    (y0, y1, x0, x1), fractions of the crop; default: the full-width bands of FACE_BANDS), `project` of est's
    movement on clean's: "move_along_<name>" (1 = all of it, 0 = a still face) and "move_off_<name>"
    (movement clean does not make, in units of clean's); nan for a region that does not move."""
    a, b = (_images(x, channels_last=True) / _default_range(x) for x in (clean, est))  # (N, 3, H, W) in [0, 1]
    _check_same(a, b)
    a, b = a - a.mean(0), b - b.mean(0)
    h, w = a.shape[-2:]
    if regions is None:
        regions = {band: (lo, hi, 0.0, 1.0) for band, (lo, hi) in FACE_BANDS.items()}
    out = {}
    for name, (y0, y1, x0, x1) in regions.items():
        box = (..., slice(round(y0 * h), round(y1 * h)), slice(round(x0 * w), round(x1 * w)))
        out[f"move_along_{name}"], out[f"move_off_{name}"] = project(b[box], a[box])
    return out


__all__ = [
    "FACE_BANDS", "PESQ_MAX", "SAMPLE_RATE", "audio_metrics", "face_metrics", "face_movement",
    "log_spectral_distance", "pesq_wb", "project", "psnr", "psnr_frames", "si_sdr", "ssim", "ssim_frames", "stoi",
]


def stats(values: Iterable[float | None]) -> dict[str, float]:
    """{"mean", "std", "median", "n"} over the finite values (nan when none)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if len(v) == 0:
        return {"mean": float("nan"), "std": float("nan"), "median": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "median": float(np.median(v)), "n": int(len(v))}
