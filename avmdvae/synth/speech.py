"""Source-filter speech synthesis (numpy/scipy) driven by a clip's `Timeline`.

    glottal pulses at f0 (Rosenberg flow, differentiated for lip radiation, spectral tilt)
  + aspiration noise (pulsed with the glottal cycle)
  -> cascade of 4 formant resonators F1..F4 (time-varying, from the articulation timeline)
  + frication / burst noise of the consonants (fixed band-pass per consonant)
  + a -65 dBFS noise floor.

The glottal phase is the running integral of f0 (no jitter) and the pulse shape is evaluated at the
continuous phase, so the period is exact even when it is not a whole number of samples.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from avmdvae.synth.factors import CONTROL_RATE, SAMPLE_RATE, Speaker, Timeline, formants

BLOCK = 80  # samples (5 ms) per resonator coefficient update; state carries across blocks
BANDWIDTHS = np.array([70.0, 100.0, 150.0, 220.0])  # Hz, F1..F4 (typical vowel bandwidths)
VOICED_RMS = 0.04  # -28 dBFS: RMS of the voiced parts at 0 dB gain (aroused clips get up to +9 dB)
NOISE_FLOOR = 10 ** (-65 / 20)
# Frication / burst noise: band edges (Hz) and level per consonant.
NOISE_BANDS: dict[str, tuple[float, float, float]] = {
    "s": (3800.0, 7500.0, 1.0),
    "sh": (2000.0, 5000.0, 0.9),
    "f": (1200.0, 7500.0, 0.35),
    "p": (400.0, 2500.0, 0.8),
    "t": (2800.0, 7000.0, 1.0),
    "k": (1400.0, 3500.0, 0.9),
}
_NOISE_SOS = {c: signal.butter(2, (lo, hi), btype="bandpass", fs=SAMPLE_RATE, output="sos")
              for c, (lo, hi, _) in NOISE_BANDS.items()}


def _to_samples(x: np.ndarray, n: int) -> np.ndarray:
    """Linear interpolation of a control-rate array (C,) onto the sample grid (n,)."""
    t = np.arange(n) * (CONTROL_RATE / SAMPLE_RATE)
    return np.interp(t, np.arange(len(x)), x)


def glottal_flow(phase: np.ndarray, open_quotient: float) -> np.ndarray:
    """Rosenberg glottal flow for a cycle phase in [0, 1): rise over 65% of the open phase, fall over 35%."""
    tp, tn = 0.65 * open_quotient, 0.35 * open_quotient
    g = np.zeros_like(phase)
    rise = phase < tp
    g[rise] = 0.5 * (1 - np.cos(np.pi * phase[rise] / tp))
    fall = (phase >= tp) & (phase < open_quotient)
    g[fall] = np.cos(0.5 * np.pi * (phase[fall] - tp) / tn)
    return g


def resonator_sos(freqs: np.ndarray, bws: np.ndarray) -> np.ndarray:
    """Klatt resonators with unit DC gain as second-order sections: (..., K) -> (..., K, 6)."""
    t = 1.0 / SAMPLE_RATE
    c = -np.exp(-2 * np.pi * bws * t)
    b = 2 * np.exp(-np.pi * bws * t) * np.cos(2 * np.pi * freqs * t)
    a = 1 - b - c
    sos = np.zeros((*freqs.shape, 6))
    sos[..., 0] = a
    sos[..., 3] = 1.0
    sos[..., 4] = -b
    sos[..., 5] = -c
    return sos


def vocal_tract(x: np.ndarray, formant_hz: np.ndarray, bws: np.ndarray) -> np.ndarray:
    """Filter x (S,) through resonators whose frequencies change every BLOCK samples.

    formant_hz: (ceil(S / BLOCK), K) Hz per block; bws: (K,) or (blocks, K) Hz. The filter state is
    carried from block to block, so the output is continuous (the coefficients move smoothly).
    """
    sos = resonator_sos(formant_hz, np.broadcast_to(bws, formant_hz.shape))
    y = np.empty_like(x)
    zi = np.zeros((formant_hz.shape[1], 2))
    for i in range(formant_hz.shape[0]):
        sl = slice(i * BLOCK, (i + 1) * BLOCK)
        y[sl], zi = signal.sosfilt(sos[i], x[sl], zi=zi)
    return y


def synthesize(tl: Timeline, speaker: Speaker, rng: np.random.Generator) -> np.ndarray:
    """Speech waveform (S,) float32 at SAMPLE_RATE, S = tl.n_samples, for one clip."""
    n = tl.n_samples
    f0 = _to_samples(tl.f0, n)
    voice = _to_samples(tl.voice, n)
    asp = _to_samples(tl.aspiration, n)

    phase = np.cumsum(f0 / SAMPLE_RATE)
    frac = phase - np.floor(phase)
    flow = glottal_flow(frac, speaker.open_quotient)
    pulses = np.diff(flow, prepend=0.0) * (SAMPLE_RATE / 200.0)  # derivative, ~unit peak at f0 = 200 Hz
    pulses = signal.lfilter([1 - speaker.tilt], [1, -speaker.tilt], pulses)
    # Aspiration: white noise, stronger while the glottis is open.
    breath = rng.standard_normal(n) * np.where(frac < speaker.open_quotient, 1.0, 0.4)
    excitation = pulses * voice + 0.6 * breath * asp

    n_blocks = -(-n // BLOCK)
    centres = (np.arange(n_blocks) * BLOCK + BLOCK / 2) * (CONTROL_RATE / SAMPLE_RATE)
    idx = np.minimum(np.round(centres).astype(int), len(tl.jaw) - 1)
    fhz = formants(tl.jaw[idx], tl.lip[idx], speaker.vtl_scale)
    bws = BANDWIDTHS * speaker.bandwidth_scale * np.array([1 + 2 * speaker.breathiness, 1, 1, 1])
    y = vocal_tract(excitation, fhz, bws)

    # Calibrate the voiced level (pulse amplitude and resonator gains vary with f0 and formants), so
    # that the clip's loudness is set by gain_db (speaker level + arousal) alone.
    voiced = voice >= 0.5
    y *= VOICED_RMS / max(float(np.sqrt(np.mean(y[voiced] ** 2))) if voiced.any() else 1.0, 1e-9)
    white = rng.standard_normal(n)
    for c, env in tl.noise.items():
        lo, hi, level = NOISE_BANDS[c]
        y += level * VOICED_RMS * signal.sosfilt(_NOISE_SOS[c], white) * _to_samples(env, n)

    y *= 10 ** (tl.gain_db / 20)
    y += NOISE_FLOOR * rng.standard_normal(n)
    peak = np.abs(y).max()
    if peak > 0.98:  # never clip: scale the rare hot clip down
        y *= 0.98 / peak
    return y.astype(np.float32)
