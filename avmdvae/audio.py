"""Audio front end: one power-spectrogram frame per video frame, and its inverses (torch, CPU or CUDA).

Framing is defined by the video clock, not by an integer hop: spectrogram frame k is centred on sample
round(k * sample_rate / fps). At 30 fps the hop is 16_000 / 30 = 533.33 samples, so an integer-hop STFT
would drift by 1/3 sample per frame (200 samples after 60 s). We gather the frames by index instead,
which keeps every centre within half a sample of the exact video timestamp for any clip length.

Shapes: audio (..., S) float; complex spectrogram (..., N, 513); any leading batch dims.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from avmdvae.constants import MODEL_FPS, N_FFT, SAMPLE_RATE, Progress, no_progress

HALF = N_FFT // 2  # 512: frame k covers samples [centre - 512, centre + 512)
# Periodic Hann window: w[512] = 1 sits on the frame centre; at 30 fps neighbouring windows
# (533.33 samples apart) overlap by 1024 - 533 = 491 samples, so sum_k w^2 > 0 everywhere.
# Overlap-add divides by sum_k w^2 (>= 0.19 inside the signal at >= 25 fps). Only past the last
# frame's centre does it fall towards 0; flooring it at 1e-3 (w >= 0.032, i.e. up to 453 samples from
# the centre) bounds the gain there at 31x, and beyond that the output fades out smoothly to 0.
_WSUM_FLOOR = 1e-3

GL_ITERS = 64  # default Griffin-Lim iterations
# An audio track whose peak stays below -80 dBFS is silent (digital silence, a muted recording): its
# spectrogram carries no speech (preprocess skips such clips, manipulation warns about them).
SILENCE_PEAK = 1e-4
GL_CHUNK = 900  # frames per inversion segment (30 s at 30 fps): bounds memory for long clips
GL_OVERLAP = 16  # frames of cross-fade between inversion segments (0.53 s)
GL_MOMENTUM = 0.99  # Perraudin, Balazs & Sondergaard (2013) "fast Griffin-Lim", alpha = 0.99


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x)
    if not (t.is_floating_point() or t.is_complex()):
        t = t.float()
    return t


def frame_centers(n_frames: int, fps: float = MODEL_FPS, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Centre sample of each spectrogram frame: round(k * sample_rate / fps), k = 0..n_frames-1. (N,) int64.

    Computed in float64 from k directly (never by accumulating a hop), so there is no drift: the
    error is at most half a sample for any k.
    """
    k = torch.arange(n_frames, dtype=torch.float64)
    return torch.floor(k * sample_rate / fps + 0.5).long()


def n_frames_for(num_samples: int, fps: float = MODEL_FPS, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of frames whose centre lies inside a signal of `num_samples` samples.

    Inverse of `num_samples_for`: n_frames_for(round(N * sr / fps)) == N. Centre k is inside when
    round(k * sr / fps) <= S - 1, i.e. k < (S - 0.5) * fps / sr.
    """
    if num_samples <= 0:
        return 0
    return int(math.ceil((num_samples - 0.5) * fps / sample_rate - 1e-9))


def num_samples_for(n_frames: int, fps: float = MODEL_FPS, sample_rate: int = SAMPLE_RATE) -> int:
    """Samples spanned by `n_frames` video frames: round(N * sample_rate / fps)."""
    return int(math.floor(n_frames * sample_rate / fps + 0.5))


class _Framing:
    """Gather/scatter indices for N frames over a signal of S samples (zero-padded by HALF on the left).

    idx (N, N_FFT): position in the padded signal of every windowed sample; padded length L.
    """

    def __init__(self, n_frames: int, num_samples: int, fps: float, device: torch.device,
                 dtype: torch.dtype) -> None:
        centers = frame_centers(n_frames, fps).to(device)
        self.n_frames, self.num_samples = n_frames, num_samples
        # padded index of sample (centre - 512 + j) is centre + j
        self.idx = centers[:, None] + torch.arange(N_FFT, device=device)[None, :]  # (N, N_FFT)
        last = int(centers[-1]) + N_FFT if n_frames else 0
        self.length = max(num_samples + HALF, last)  # padded length covering signal and all frames
        self.window = torch.hann_window(N_FFT, periodic=True, dtype=dtype, device=device)
        self._wsum: torch.Tensor | None = None

    def wsum(self) -> torch.Tensor:
        """Sum of squared windows at every padded position: (L,)."""
        if self._wsum is None:
            w2 = (self.window**2).expand(self.n_frames, N_FFT).reshape(-1)
            self._wsum = torch.zeros(self.length, dtype=w2.dtype, device=w2.device).index_add_(
                0, self.idx.reshape(-1), w2)
        return self._wsum

    def analyse(self, audio: torch.Tensor) -> torch.Tensor:
        """(..., S) real -> (..., N, 513) complex."""
        pad_right = self.length - HALF - audio.shape[-1]
        padded = torch.nn.functional.pad(audio, (HALF, pad_right))  # (..., L)
        frames = padded[..., self.idx]  # (..., N, N_FFT)
        return torch.fft.rfft(frames * self.window, n=N_FFT)

    def synthesise(self, spec: torch.Tensor) -> torch.Tensor:
        """(..., N, 513) complex -> (..., S) real by weighted overlap-add, normalised by sum w^2."""
        batch = spec.shape[:-2]
        frames = torch.fft.irfft(spec, n=N_FFT) * self.window  # (..., N, N_FFT)
        flat = frames.reshape(-1, self.n_frames * N_FFT)  # (B, N*N_FFT)
        out = torch.zeros(flat.shape[0], self.length, dtype=flat.dtype, device=flat.device)
        out.index_add_(1, self.idx.reshape(-1), flat)
        wsum = self.wsum()
        out = out / wsum.clamp_min(_WSUM_FLOOR)
        return out[:, HALF:HALF + self.num_samples].reshape(*batch, self.num_samples)


def stft(audio: torch.Tensor | np.ndarray, fps: float = MODEL_FPS,
         n_frames: int | None = None) -> torch.Tensor:
    """Complex STFT, one frame per video frame: (..., S) -> (..., N, 513).

    Frame k is the Hann-windowed 1024-sample segment centred on sample round(k * 16000 / fps), zero
    padded beyond the signal edges. `n_frames` defaults to `n_frames_for(S, fps)`; pass the video frame
    count to get exactly one spectrogram frame per video frame (extra frames see zeros).
    """
    x = _as_tensor(audio)
    if n_frames is None:
        n_frames = n_frames_for(x.shape[-1], fps)
    if n_frames <= 0:
        raise ValueError(f"need at least one frame, got n_frames={n_frames} for {x.shape[-1]} samples")
    return _Framing(n_frames, x.shape[-1], fps, x.device, x.dtype).analyse(x)


def istft(spec: torch.Tensor | np.ndarray, fps: float = MODEL_FPS,
          num_samples: int | None = None) -> torch.Tensor:
    """Inverse of `stft` by weighted overlap-add: (..., N, 513) complex -> (..., S) real.

    S defaults to round(N * 16000 / fps). Exact (up to float rounding) wherever sum_k w^2 >= 1e-3, i.e.
    up to about 450 samples past the last frame's centre; beyond that (the last ~80 samples of a clip at
    30 fps, ~190 at 25 fps) no window reaches and the output fades to 0.
    """
    z = _as_tensor(spec)
    if not z.is_complex():
        raise ValueError("istft expects a complex spectrogram (..., N, 513)")
    n_frames = z.shape[-2]
    if num_samples is None:
        num_samples = num_samples_for(n_frames, fps)
    real = z.real.dtype
    return _Framing(n_frames, num_samples, fps, z.device, real).synthesise(z)


def power_spectrogram(audio: torch.Tensor | np.ndarray, fps: float = MODEL_FPS,
                      n_frames: int | None = None) -> torch.Tensor:
    """|stft|^2 as float32: (..., S) -> (..., N, 513)."""
    return stft(audio, fps=fps, n_frames=n_frames).abs().square().float()


def _magnitude(power: torch.Tensor | np.ndarray) -> torch.Tensor:
    p = _as_tensor(power)
    return p.clamp_min(0).sqrt()


def griffin_lim(power: torch.Tensor | np.ndarray, fps: float = MODEL_FPS, n_iter: int = GL_ITERS,
                momentum: float = GL_MOMENTUM, num_samples: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Waveform (..., S) from a power spectrogram (..., N, 513) by fast Griffin-Lim.

    Perraudin et al. (2013): with A the target magnitude, P_C2 = stft(istft(.)) the projection on
    consistent spectrograms and P_C1(c) = A * c / |c|,
        t_n = P_C1(P_C2(c_{n-1})),   c_n = t_n + momentum * (t_n - t_{n-1}),
    starting from a random phase (drawn from `generator`, so the result is deterministic given it).
    momentum = 0 is the classic Griffin-Lim. Returns istft(t_n).
    """
    mag = _magnitude(power)
    n_frames = mag.shape[-2]
    if num_samples is None:
        num_samples = num_samples_for(n_frames, fps)
    fr = _Framing(n_frames, num_samples, fps, mag.device, mag.dtype)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    phase0 = torch.rand(mag.shape, generator=generator, device=gen_device, dtype=mag.dtype)
    c = torch.polar(mag, (2 * math.pi * phase0).to(mag.device))
    t_prev: torch.Tensor | None = None
    t = c
    tiny = torch.finfo(mag.dtype).tiny
    for _ in range(n_iter):
        rebuilt = fr.analyse(fr.synthesise(c))
        t = rebuilt * (mag / rebuilt.abs().clamp_min(tiny))  # real scale: cheaper than complex division
        c = t if t_prev is None or momentum == 0 else t + momentum * (t - t_prev)
        t_prev = t
    return fr.synthesise(t)


def invert_with_phase(power: torch.Tensor | np.ndarray, phase: torch.Tensor | np.ndarray,
                      fps: float = MODEL_FPS, num_samples: int | None = None) -> torch.Tensor:
    """Waveform (..., S) from a power spectrogram and a phase (radians), both (..., N, 513)."""
    mag = _magnitude(power)
    ph = _as_tensor(phase).to(device=mag.device, dtype=mag.dtype)
    return istft(torch.polar(mag, ph), fps=fps, num_samples=num_samples)


def spectral_convergence(power: torch.Tensor | np.ndarray, audio: torch.Tensor | np.ndarray,
                         fps: float = MODEL_FPS) -> float:
    """|| |stft(audio)| - sqrt(power) ||_F / || sqrt(power) ||_F  (lower is better; 0 = consistent)."""
    target = _magnitude(power)
    est = stft(audio, fps=fps, n_frames=target.shape[-2]).abs().to(target.dtype)
    return float(torch.linalg.vector_norm(est - target) / torch.linalg.vector_norm(target).clamp_min(1e-12))


# The decoded sound comes out 8-10 dB quieter than its input (the VQ-VAE's spectra are smoothed and
# Griffin-Lim's inconsistent phases cancel energy). Matching the input's RMS undoes that; the gain is
# capped so that no sample clips and a near-silent output is not blown up into noise.
MAX_GAIN_DB = 24.0
PEAK = 0.99  # largest sample value after the gain


def is_silent(audio: np.ndarray) -> bool:
    """No sound to speak of: empty, or peak below SILENCE_PEAK (-80 dBFS)."""
    a = np.asarray(audio)
    return a.size == 0 or float(np.max(np.abs(a))) < SILENCE_PEAK


def rms(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def match_loudness(wave: np.ndarray, reference: np.ndarray,
                   max_gain_db: float = MAX_GAIN_DB) -> tuple[np.ndarray, float]:
    """`wave` scaled to the RMS of `reference`, limited to peak PEAK and to +-max_gain_db.

    Returns (scaled float32 wave, gain). A silent reference or a silent `wave` leaves it unchanged
    (gain 1.0): there is no loudness to match.
    """
    wave = np.asarray(wave, np.float32)
    target, have = rms(reference), rms(wave)
    if target == 0.0 or have == 0.0:
        return wave, 1.0
    limit = 10 ** (max_gain_db / 20)
    gain = float(np.clip(target / have, 1 / limit, limit))
    peak = float(np.max(np.abs(wave)))
    gain = min(gain, PEAK / peak)
    return (wave * gain).astype(np.float32), gain


def to_waveform(
    power: np.ndarray,
    fps: float = MODEL_FPS,
    sample_rate: int = SAMPLE_RATE,
    phase_from: np.ndarray | None = None,
    n_iter: int = GL_ITERS,
    seed: int = 0,
    progress: Progress = no_progress,
    loudness_from: np.ndarray | None = None,
) -> np.ndarray:
    """Waveform (S,) float32 with S = num_samples_for(N), from a power spectrogram (N, 513) of any length.

    phase_from: a waveform whose STFT phase is used (the input clip: `--phase source`); None: fast
    Griffin-Lim (n_iter iterations, deterministic given `seed`). Long spectrograms are inverted in
    GL_CHUNK-frame segments cross-faded over GL_OVERLAP frames (bounded memory). loudness_from: the
    input waveform, whose RMS the output is matched to (`match_loudness`, limited so nothing clips).
    """
    power = np.asarray(power, np.float32)
    n = len(power)
    out = np.zeros(num_samples_for(n, fps, sample_rate), np.float32)
    gen = torch.Generator().manual_seed(seed)
    name = "source phase" if phase_from is not None else "griffin-lim"
    segs = _segments(n, GL_CHUNK, GL_OVERLAP)
    if phase_from is not None:
        padded = np.concatenate([np.zeros(HALF, np.float32), np.asarray(phase_from, np.float32)])
    for i, (a, b) in enumerate(segs):
        s0, s1 = num_samples_for(a, fps, sample_rate), num_samples_for(b, fps, sample_rate)
        p = torch.from_numpy(power[a:b])
        if phase_from is not None:
            y = invert_with_phase(p, _source_phase(padded, a, b, fps), fps=fps, num_samples=s1 - s0)
        else:
            y = griffin_lim(p, fps=fps, n_iter=n_iter, num_samples=s1 - s0, generator=gen)
        ov = num_samples_for(GL_OVERLAP, fps, sample_rate)
        _crossfade_add(out, y.numpy().astype(np.float32), s0, i > 0, i < len(segs) - 1, ov)
        progress(name, i + 1, len(segs))
    if loudness_from is not None:
        return match_loudness(out, loudness_from)[0]
    return np.clip(out, -1.0, 1.0)


def _source_phase(padded: np.ndarray, a: int, b: int, fps: float) -> torch.Tensor:
    """STFT phase (b - a, 513) of frames [a, b) of a waveform given zero-padded by HALF on the left.

    Frame k is centred on sample round(k * sr / fps) of the clip, exactly as in `audio.stft`.
    """
    centers = frame_centers(b, fps)[a:]
    lo, hi = int(centers[0]), int(centers[-1]) + N_FFT  # padded coordinates
    seg = padded[lo:hi]
    if len(seg) < hi - lo:
        seg = np.concatenate([seg, np.zeros(hi - lo - len(seg), np.float32)])
    idx = (centers - lo)[:, None] + torch.arange(N_FFT)[None, :]
    win = torch.hann_window(N_FFT, periodic=True)
    return torch.angle(torch.fft.rfft(torch.from_numpy(seg)[idx] * win, n=N_FFT))


def _segments(n: int, length: int, overlap: int) -> list[tuple[int, int]]:
    """[a, b) frame segments of at most `length` covering [0, n), consecutive ones sharing `overlap`."""
    if n <= length:
        return [(0, n)]
    out, a = [], 0
    while True:
        b = min(a + length, n)
        out.append((a, b))
        if b == n:
            return out
        a = b - overlap


def _crossfade_add(out: np.ndarray, y: np.ndarray, s0: int, fade_in: bool, fade_out: bool, ov: int) -> None:
    """Add segment y at s0 with linear fades over `ov` samples at the shared borders."""
    y = y[: len(out) - s0].copy()
    ov = min(ov, len(y) // 2)
    if ov > 0:
        ramp = (np.arange(ov, dtype=np.float32) + 0.5) / ov
        if fade_in:
            y[:ov] *= ramp
        if fade_out:
            y[-ov:] *= ramp[::-1]
    out[s0 : s0 + len(y)] += y
