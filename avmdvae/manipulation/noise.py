"""Corruptions for `avmdvae denoise --add-noise SPEC` (demonstrations and evaluation).

SPEC is MODALITY:KIND:VALUE:

    audio:white:SNR_DB      white Gaussian noise at SNR_DB dB below the speech power
    audio:babble:SNR_DB     babble (the sum of BABBLE_TALKERS other speech signals) at SNR_DB
    visual:gaussian:SIGMA   i.i.d. Gaussian pixel noise, SIGMA in units of the full range (0.1 = 25.5 levels)
    visual:occlude:mouth    a grey box over the mouth region of the aligned face crop
    visual:occlude:eyes     a grey box over the eye region

Audio noise is added to the waveform (before the spectrogram). The SNR is measured over the whole
clip: noise power = speech power / 10^(SNR/10). Visual corruptions act on the aligned 64x64 crops,
where the face is at a fixed place (face.py: the face box, brows to chin, is the central 1/1.4 of
the crop side with DEFAULT_MARGIN = 0.2), so the regions below are fixed fractions of the crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from avmdvae.constants import SAMPLE_RATE
from avmdvae.errors import ConfigError

BABBLE_TALKERS = 6  # talkers summed into babble (more than ~4 is no longer intelligible speech)
BABBLE_SEED = 7  # synthetic babble voices come from this synth seed (not the corpus' seed)
OCCLUDE_GREY = 128  # fill value of the occluding box (mid grey)
# Regions as (y0, y1, x0, x1) fractions of the crop side. A face box (brows to chin) spans
# [0.2, 1.2] / 1.4 = [0.14, 0.86] of the crop; eyes sit ~1/3 down the box, the mouth ~4/5 down.
REGIONS: dict[str, tuple[float, float, float, float]] = {
    "eyes": (0.28, 0.50, 0.18, 0.82),
    "mouth": (0.58, 0.86, 0.26, 0.74),
}


@dataclass(frozen=True)
class NoiseSpec:
    modality: str  # "audio" | "visual"
    kind: str  # white | babble | gaussian | occlude
    value: float | str  # SNR dB, sigma, or region name

    def __str__(self) -> str:
        return f"{self.modality}:{self.kind}:{self.value}"


_USAGE = (
    "use audio:white:SNR_DB, audio:babble:SNR_DB, visual:gaussian:SIGMA or "
    "visual:occlude:mouth|eyes (e.g. audio:white:5)"
)


def parse_noise(text: str) -> NoiseSpec:
    """'audio:white:5' -> NoiseSpec('audio', 'white', 5.0); ConfigError (one line) when malformed."""
    parts = text.strip().split(":")
    if len(parts) != 3:
        raise ConfigError(f"noise spec {text!r} is not MODALITY:KIND:VALUE; {_USAGE}")
    modality, kind, value = (p.strip().lower() for p in parts)
    if (modality, kind) in (("audio", "white"), ("audio", "babble"), ("visual", "gaussian")):
        try:
            v = float(value)
        except ValueError:
            raise ConfigError(f"noise spec {text!r}: {value!r} is not a number; {_USAGE}") from None
        if not np.isfinite(v):
            raise ConfigError(f"noise spec {text!r}: value must be finite")
        if kind == "gaussian" and not 0 <= v <= 1:
            raise ConfigError(
                f"noise spec {text!r}: SIGMA is a fraction of the intensity range, 0..1 (e.g. 0.1)"
            )
        return NoiseSpec(modality, kind, v)
    if (modality, kind) == ("visual", "occlude"):
        if value not in REGIONS:
            raise ConfigError(f"noise spec {text!r}: occlude {', '.join(REGIONS)}, not {value!r}")
        return NoiseSpec(modality, kind, value)
    raise ConfigError(f"unknown noise {modality}:{kind}; {_USAGE}")


def scale_to_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """noise scaled so that 10 log10(P_speech / P_noise) = snr_db (powers over the whole signal)."""
    ps = float(np.mean(np.square(speech, dtype=np.float64)))
    pn = float(np.mean(np.square(noise, dtype=np.float64)))
    if pn <= 0:
        return noise
    if ps <= 0:
        raise ConfigError("cannot set an SNR on silent audio: the clip's audio track is all zeros")
    return (noise * np.sqrt(ps / (pn * 10 ** (snr_db / 10)))).astype(np.float32)


def synthetic_babble(n_samples: int, rng: np.random.Generator, talkers: int = BABBLE_TALKERS) -> np.ndarray:
    """Babble of `talkers` synthetic voices (avmdvae.synth), each looped to n_samples at a random offset."""
    from avmdvae.synth.factors import ClipSpec, make_sentence, make_speaker, make_timeline
    from avmdvae.synth.speech import synthesize

    voices = []
    for i in range(talkers):
        spk_index = int(rng.integers(0, 1000))
        sentence = int(rng.integers(1, 100))
        speaker = make_speaker(BABBLE_SEED, spk_index)
        spec = ClipSpec(spk_index, "neutral", 1, sentence)
        tl = make_timeline(BABBLE_SEED, spec, speaker, make_sentence(BABBLE_SEED, sentence))
        voices.append(synthesize(tl, speaker, spec.rng(BABBLE_SEED, 1 + i)))
    return mix_babble(voices, n_samples, rng)


def mix_babble(voices: Sequence[np.ndarray], n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Sum of the voices, each normalised to unit power, looped to n_samples from a random offset."""
    out = np.zeros(n_samples, np.float64)
    for v in voices:
        v = np.asarray(v, np.float64)
        v = v[np.abs(v) > 0] if np.any(v) else v
        if len(v) == 0:
            continue
        v = v / max(np.sqrt(np.mean(v**2)), 1e-12)
        start = int(rng.integers(0, len(v)))
        idx = (start + np.arange(n_samples)) % len(v)
        out += v[idx]
    return out.astype(np.float32)


def add_audio_noise(
    audio: np.ndarray,
    spec: NoiseSpec,
    rng: np.random.Generator,
    babble_voices: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Corrupt a waveform (S,) float32. Babble uses `babble_voices` when given, else synthetic voices."""
    if spec.modality != "audio":
        raise ValueError(f"{spec} is not an audio corruption")
    audio = np.asarray(audio, np.float32)
    n = len(audio)
    if spec.kind == "white":
        noise = rng.standard_normal(n).astype(np.float32)
    elif babble_voices:
        noise = mix_babble(babble_voices, n, rng)
    else:
        noise = synthetic_babble(n, rng)
    return np.clip(audio + scale_to_snr(audio, noise, float(spec.value)), -1.0, 1.0)


def region_box(region: str, size: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) pixel bounds of a face region on a size x size aligned crop."""
    y0, y1, x0, x1 = REGIONS[region]
    return round(y0 * size), round(y1 * size), round(x0 * size), round(x1 * size)


def corrupted_region(spec: NoiseSpec) -> tuple[float, float, float, float]:
    """(y0, y1, x0, x1), fractions of the crop, that a visual corruption changes: the occluded box, else all."""
    return REGIONS[str(spec.value)] if spec.kind == "occlude" else (0.0, 1.0, 0.0, 1.0)


def corrupt_faces(faces: np.ndarray, spec: NoiseSpec, rng: np.random.Generator) -> np.ndarray:
    """Corrupt aligned face crops (N, S, S, 3) uint8 -> a new uint8 array."""
    if spec.modality != "visual":
        raise ValueError(f"{spec} is not a visual corruption")
    faces = np.asarray(faces)
    if spec.kind == "gaussian":
        noisy = faces.astype(np.float32) + rng.standard_normal(faces.shape, dtype=np.float32) * (
            float(spec.value) * 255.0
        )
        return np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    out = faces.copy()
    y0, y1, x0, x1 = region_box(str(spec.value), faces.shape[1])
    out[:, y0:y1, x0:x1] = OCCLUDE_GREY
    return out


def corpus_voices(
    corpus_path: str,
    exclude_source: str | None = None,
    count: int = BABBLE_TALKERS,
    seed: int = 0,
    max_seconds: float = 10.0,
) -> list[np.ndarray]:
    """Speech of up to `count` clips of a corpus (read from their source media), for babble.

    Prefers clips of different speakers; clips whose source is gone are skipped. Returns [] when the
    corpus or its sources are unavailable (the caller then synthesises babble).
    """
    from avmdvae import media
    from avmdvae.corpus import Corpus
    from avmdvae.errors import AvmdvaeError

    try:
        corpus = Corpus.open(corpus_path)
    except (AvmdvaeError, OSError):
        return []
    rng = np.random.default_rng(seed)
    clips = [c for c in corpus.clips if c.source != exclude_source]
    order = rng.permutation(len(clips))
    seen: set[str] = set()
    used: set[int] = set()
    voices: list[np.ndarray] = []
    for pass_ in (0, 1):  # first one clip per speaker, then any
        for i in order:
            c = clips[int(i)]
            if len(voices) >= count:
                return voices
            if int(i) in used or (pass_ == 0 and c.speaker in seen):
                continue
            used.add(int(i))
            try:
                a = media.read_audio(c.source)[: int(max_seconds * SAMPLE_RATE)]
            except AvmdvaeError:
                continue
            if np.any(a):
                voices.append(a)
                seen.add(c.speaker)
    return voices
