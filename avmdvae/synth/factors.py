"""Generative factors of the synthetic corpus: speakers, emotions, sentences and per-clip timelines.

The factors mirror the MDVAE's latent structure (docs/synthetic-corpus.md):

- static, speaker (part of w): face geometry and colours; mean f0, vocal-tract length, voice quality;
- static, emotion (part of w): MEAD's 8 categories x 3 intensities, each mapped to (arousal, valence);
  arousal acts on the voice only, valence on the face only, both scaled by the intensity;
- dynamical, shared (z(av)): one articulation timeline (jaw opening, lip width) drives the formants
  (F1 from the jaw, F2/F3 from the lips) and the drawn mouth;
- dynamical, audio only (z(a)): the intonation (f0 contour), drawn independently of everything else;
- dynamical, visual only (z(v)): blinks and head pose / position / scale jitter.

Everything is drawn from numpy Generators seeded by `SeedSequence([seed, tag, ...ids])`, so a
speaker, a sentence or a clip does not depend on how many others are generated nor in which order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from avmdvae.constants import MODEL_FPS, SAMPLE_RATE

# -------------------------------------------------------------------------------------- constants

FPS = MODEL_FPS  # video clock; the ground-truth arrays are sampled at k / FPS
CONTROL_RATE = 1000  # Hz: articulation / f0 / amplitude timelines are built on a 1 ms grid

EMOTIONS = ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")  # MEAD
LEVELS = (1, 2, 3)

# (arousal, valence) per category, on a 3x3 grid with one free cell (low arousal, positive valence).
# Every category has a unique pair, but each arousal value (the voice) is shared by 2-3 categories and
# each valence value (the face) too, so neither modality alone identifies the category.
AROUSAL_VALENCE: dict[str, tuple[float, float]] = {
    "neutral": (0.0, 0.0),
    "angry": (1.0, -1.0),
    "contempt": (-1.0, 0.0),
    "disgusted": (0.0, -1.0),
    "fear": (1.0, 0.0),
    "happy": (0.0, 1.0),
    "sad": (-1.0, -1.0),
    "surprised": (1.0, 1.0),
}
INTENSITY_SCALE = {1: 0.4, 2: 0.7, 3: 1.0}  # MEAD level -> multiplier of (arousal, valence)

# Arousal -> voice. With a = scaled arousal in [-1, 1]:
AROUSAL_PITCH_ST = 4.0  # f0 level shift in semitones at |a| = 1
AROUSAL_RANGE = 0.6  # intonation range multiplier 1 + 0.6 a
AROUSAL_GAIN_DB = 6.0  # loudness shift in dB at |a| = 1
AROUSAL_RATE = 0.18  # speaking rate multiplier 1 + 0.18 a (durations divided by it)

# Articulation space: jaw in [0, 1] (0 = lips closed) and lip width in [0, 1] (0 = rounded, 1 = spread).
# The formants are affine in them (reference adult male tract, scaled by the speaker's vtl_scale):
# F1 follows the jaw, F2 and F3 follow the lips (rounding lowers F2/F3, spreading raises them).
F1_RANGE = (250.0, 850.0)
F2_RANGE = (780.0, 2300.0)
F3_RANGE = (2250.0, 2950.0)
F4_REF = 3600.0
# Vowel targets (jaw, lip width): i, e, a, o, u give F1/F2 close to textbook male averages.
VOWELS: dict[str, tuple[float, float]] = {
    "i": (0.10, 1.00),  # F1 310, F2 2300
    "e": (0.45, 0.80),  # F1 520, F2 1995
    "a": (0.95, 0.40),  # F1 820, F2 1390
    "o": (0.50, 0.10),  # F1 550, F2 930
    "u": (0.15, 0.00),  # F1 340, F2 780
}
# Consonants: kind, jaw target, lip target (nan = coarticulated with the neighbours), duration (s).
# Stops: closure, then a noise burst and aspiration; fricatives: band-limited noise; nasals and the
# lateral are voiced (weaker voicing through a nearly closed tract).
CONSONANTS: dict[str, tuple[str, float, float, float]] = {
    "p": ("stop", 0.00, np.nan, 0.090),
    "t": ("stop", 0.10, np.nan, 0.085),
    "k": ("stop", 0.15, np.nan, 0.090),
    "s": ("fricative", 0.10, 0.70, 0.110),
    "sh": ("fricative", 0.12, 0.15, 0.115),
    "f": ("fricative", 0.06, np.nan, 0.100),
    "m": ("nasal", 0.00, np.nan, 0.075),
    "n": ("nasal", 0.10, np.nan, 0.070),
    "l": ("lateral", 0.25, np.nan, 0.060),
}
VOWEL_DUR = 0.150  # s, unstressed; stressed x 1.35
STRESS_DUR = 1.35
STRESS_GAIN_DB = 3.0
SILENCE_JAW, SILENCE_LIP = 0.0, 0.5  # mouth closed, lips neutral

ARTIC_SMOOTH_S = 0.060  # Hann smoothing of the articulators (coarticulation)
VOICE_SMOOTH_S = 0.020  # Hann smoothing of the voicing / noise amplitudes
VOICED_THRESHOLD = 0.5  # a frame is voiced (f0 > 0 in the truth) when voicing amplitude >= this


# ------------------------------------------------------------------------------------- generators


def rng_for(seed: int, *ids: int) -> np.random.Generator:
    """An independent Generator for (seed, ids...): same ids -> same stream, whatever else runs."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *(int(i) for i in ids)]))


_TAG_SPEAKER, _TAG_SENTENCE, _TAG_CLIP = 1, 2, 3
STREAM_TIMELINE, STREAM_SPEECH, STREAM_RENDER = 0, 1, 2


# ---------------------------------------------------------------------------------------- speakers


@dataclass(frozen=True)
class Speaker:
    """Static speaker factors. Face lengths are in units of the head height (chin to crown)."""

    name: str  # MEAD-like id: M001, W002, ...
    sex: str  # "M" or "W"
    # voice
    f0_mean: float  # Hz, neutral speaking f0
    vtl_scale: float  # formant frequency multiplier (1 = reference adult male tract; shorter -> larger)
    open_quotient: float  # fraction of the glottal period the glottis is open
    tilt: float  # one-pole low-pass coefficient on the glottal source (higher = darker voice)
    breathiness: float  # aspiration noise relative to the glottal pulses
    bandwidth_scale: float  # formant bandwidth multiplier
    level_db: float  # speaker loudness offset
    # face geometry
    head_aspect: float  # head width / head height
    chin_taper: float  # 0 = elliptic head, higher = narrower lower face
    eye_y: float  # eye line below the head centre (negative = above)
    eye_dx: float  # half the distance between the eye centres
    eye_w: float
    eye_h: float
    brow_gap: float  # brow height above the eye centre
    brow_thick: float
    brow_len: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_thick: float
    ear_size: float
    hair_style: int  # 0 short, 1 long, 2 cropped
    # colours (RGB 0-255)
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    iris: tuple[int, int, int]
    lips: tuple[int, int, int]
    shirt: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The darkest tone is limited to what MTCNN still finds reliably on these drawn faces (measured: a
# (110, 72, 50) skin was found in 13-60% of frames, (140, 92, 64) with contrasting hair in > 90%).
_SKIN_TONES = ((255, 224, 196), (241, 194, 158), (224, 172, 130), (198, 134, 95), (165, 110, 75),
               (140, 92, 64))
_HAIR_TONES = ((25, 20, 18), (70, 45, 30), (120, 80, 45), (190, 150, 90), (150, 60, 30), (140, 140, 140))
_IRIS_TONES = ((60, 40, 25), (40, 90, 140), (60, 110, 60), (110, 80, 40))


def _jitter_colour(rng: np.random.Generator, base: tuple[int, int, int], amount: float) -> tuple[int, ...]:
    c = np.asarray(base, float) * (1 + rng.uniform(-amount, amount)) + rng.normal(0, 6, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _luma(c: tuple[int, ...]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


HAIR_SKIN_CONTRAST = 45.0  # min luma difference: hair the colour of the skin hides the head outline


def _pick_hair(rng: np.random.Generator, skin: tuple[int, ...]) -> tuple[int, ...]:
    """A hair colour that stands out from the skin (next palette entry until the contrast is enough)."""
    start = int(rng.integers(len(_HAIR_TONES)))
    jitter = rng.uniform(-0.1, 0.1), rng.normal(0, 6, 3)
    for i in range(len(_HAIR_TONES)):
        base = np.asarray(_HAIR_TONES[(start + i) % len(_HAIR_TONES)], float)
        hair = tuple(int(v) for v in np.clip(base * (1 + jitter[0]) + jitter[1], 0, 255))
        if abs(_luma(hair) - _luma(skin)) >= HAIR_SKIN_CONTRAST:
            return hair
    return (25, 20, 18)


def speaker_name(index: int) -> str:
    """Speaker i (0-based) is M for even i, W for odd i, numbered from 1: M001, W002, M003, ..."""
    return f"{'M' if index % 2 == 0 else 'W'}{index + 1:03d}"


def make_speaker(seed: int, index: int) -> Speaker:
    """Draw the static factors of speaker `index` (independent of how many speakers are made)."""
    rng = rng_for(seed, _TAG_SPEAKER, index)
    sex = "M" if index % 2 == 0 else "W"
    male = sex == "M"
    u = rng.uniform
    skin = _jitter_colour(rng, _SKIN_TONES[rng.integers(len(_SKIN_TONES))], 0.05)
    return Speaker(
        name=speaker_name(index), sex=sex,
        f0_mean=float(u(95, 140) if male else u(175, 235)),
        # Vocal tract ~17.5 cm (men) vs ~15 cm (women): formants scale by 17.5 / L.
        vtl_scale=float(u(0.9, 1.04) if male else u(1.14, 1.26)),
        open_quotient=float(u(0.45, 0.7)),
        tilt=float(u(0.2, 0.6)),
        breathiness=float(u(0.02, 0.12) if male else u(0.05, 0.2)),
        bandwidth_scale=float(u(0.85, 1.3)),
        level_db=float(u(-2, 2)),
        head_aspect=float(u(0.68, 0.8) if male else u(0.64, 0.74)),
        chin_taper=float(u(0.05, 0.3)),
        eye_y=float(u(-0.08, -0.02)),
        eye_dx=float(u(0.145, 0.18)),
        eye_w=float(u(0.1, 0.13)),
        eye_h=float(u(0.05, 0.065)),
        brow_gap=float(u(0.065, 0.09)),
        brow_thick=float(u(0.022, 0.035) if male else u(0.014, 0.024)),
        brow_len=float(u(0.11, 0.15)),
        nose_len=float(u(0.11, 0.15)),
        nose_w=float(u(0.07, 0.1)),
        mouth_y=float(u(0.26, 0.3)),
        mouth_w=float(u(0.2, 0.26)),
        lip_thick=float(u(0.018, 0.026) if male else u(0.024, 0.034)),
        ear_size=float(u(0.1, 0.14)),
        hair_style=int(rng.choice([0, 0, 2]) if male else rng.choice([1, 1, 0])),
        skin=skin,
        hair=_pick_hair(rng, skin),
        iris=_jitter_colour(rng, _IRIS_TONES[rng.integers(len(_IRIS_TONES))], 0.1),
        lips=_jitter_colour(rng, (178, 84, 86) if male else (196, 72, 88), 0.08),
        shirt=tuple(int(v) for v in rng.integers(30, 220, 3)),
    )


# --------------------------------------------------------------------------------------- sentences


@dataclass(frozen=True)
class Sentence:
    """A sentence template shared by all speakers: a syllable sequence with stresses and a pause."""

    number: int  # 1-based, the NNN of the MEAD file name
    syllables: tuple[tuple[str, str, bool], ...]  # (consonant or "", vowel, stressed)
    pause_after: int  # index of the syllable followed by a phrase pause

    def text(self) -> str:
        words = [(c + v).upper() if s else c + v for c, v, s in self.syllables]
        return "-".join(words[: self.pause_after + 1]) + " | " + "-".join(words[self.pause_after + 1:])


def make_sentence(seed: int, number: int) -> Sentence:
    """Draw sentence template `number` (1-based): 8-11 CV syllables, about 1/3 stressed."""
    rng = rng_for(seed, _TAG_SENTENCE, number)
    n = int(rng.integers(8, 12))
    cons = list(CONSONANTS)
    vows = list(VOWELS)
    syl = []
    for i in range(n):
        c = "" if (i > 0 and rng.random() < 0.12) else cons[rng.integers(len(cons))]
        syl.append((c, vows[rng.integers(len(vows))], bool(rng.random() < 0.35)))
    return Sentence(number=number, syllables=tuple(syl), pause_after=int(rng.integers(3, n - 3)))


# ------------------------------------------------------------------------------------------ clips


@dataclass(frozen=True)
class ClipSpec:
    """Identity of one clip; its random draws depend only on these fields and the seed."""

    speaker: int  # 0-based speaker index
    emotion: str
    level: int
    sentence: int  # 1-based sentence number

    @property
    def emotion_index(self) -> int:
        return EMOTIONS.index(self.emotion)

    def arousal_valence(self) -> tuple[float, float]:
        a, v = AROUSAL_VALENCE[self.emotion]
        s = INTENSITY_SCALE[self.level]
        return a * s, v * s

    def rng(self, seed: int, stream: int, draw: int = 0) -> np.random.Generator:
        """Independent streams per clip: STREAM_TIMELINE, STREAM_SPEECH, STREAM_RENDER. draw k > 0: another
        independent realisation of that stream (the corpus uses draw 0)."""
        ids = (self.speaker, self.emotion_index, self.level, self.sentence, stream) + ((draw,) if draw else ())
        return rng_for(seed, _TAG_CLIP, *ids)


@dataclass
class Timeline:
    """Per-clip control signals.

    Control-rate arrays (1 kHz, length C = n_frames * CONTROL_RATE / FPS):
      jaw, lip (C,) articulation in [0, 1]; voice (C,) voicing amplitude (linear, 0..~1.4);
      aspiration (C,) noise into the vocal tract; noise: dict consonant -> (C,) frication / burst
      amplitude; f0 (C,) Hz, defined everywhere (the voice only sounds where voice > 0).
    Frame-rate arrays (n_frames,): blink in [0, 1]; head_yaw, head_pitch, head_roll (rad);
      head_x, head_y (head centre, fraction of the image width / height); head_scale (head height /
      image height).
    """

    n_frames: int
    jaw: np.ndarray
    lip: np.ndarray
    voice: np.ndarray
    aspiration: np.ndarray
    noise: dict[str, np.ndarray]
    f0: np.ndarray
    gain_db: float
    blink: np.ndarray
    head_yaw: np.ndarray
    head_pitch: np.ndarray
    head_roll: np.ndarray
    head_x: np.ndarray
    head_y: np.ndarray
    head_scale: np.ndarray
    arousal: float
    valence: float
    # f0 = f0_from_intonation(intonation, speaker.f0_mean, arousal, pitch_offset_st) on the control grid
    intonation: np.ndarray | None = None  # (C,) semitones: the intonation contour alone (z(a))
    pitch_offset_st: float = 0.0  # per-clip pitch offset in semitones (static)

    @property
    def n_samples(self) -> int:
        return int(round(self.n_frames * SAMPLE_RATE / FPS))

    def at_frames(self, x: np.ndarray) -> np.ndarray:
        """Sample a control-rate array at the frame times k / FPS: (C,) -> (n_frames,)."""
        idx = np.minimum(np.round(np.arange(self.n_frames) * CONTROL_RATE / FPS).astype(int), len(x) - 1)
        return x[idx]


def _hann_smooth(x: np.ndarray, width_s: float) -> np.ndarray:
    n = max(3, int(round(width_s * CONTROL_RATE)) | 1)
    k = np.hanning(n + 2)[1:-1]
    k /= k.sum()
    pad = n // 2
    return np.convolve(np.pad(x, pad, mode="edge"), k, mode="valid")


def _fill_nan(x: np.ndarray) -> np.ndarray:
    """Linear interpolation over nan runs (coarticulated lip targets)."""
    ok = ~np.isnan(x)
    if ok.all():
        return x
    idx = np.arange(len(x))
    return np.interp(idx, idx[ok], x[ok])


def _smooth_random(rng: np.random.Generator, t: np.ndarray, amp: float, f_lo: float, f_hi: float,
                   n: int = 3) -> np.ndarray:
    """Sum of n sinusoids with random frequencies in [f_lo, f_hi] Hz and phases, peak about amp."""
    out = np.zeros_like(t)
    for _ in range(n):
        f, phase = rng.uniform(f_lo, f_hi), rng.uniform(0, 2 * np.pi)
        out += rng.uniform(0.4, 1.0) * np.sin(2 * np.pi * f * t + phase)
    return out * (amp / n * 1.6)


def make_timeline(seed: int, spec: ClipSpec, speaker: Speaker, sentence: Sentence) -> Timeline:
    """Draw all per-clip timelines of `spec` (deterministic in seed and spec)."""
    rng = spec.rng(seed, STREAM_TIMELINE)
    arousal, valence = spec.arousal_valence()
    rate = 1.0 + AROUSAL_RATE * arousal

    # ---- segment list (start/end in seconds), with +-10% timing jitter per segment
    segs: list[tuple[float, float, str, str, bool]] = []  # (t0, t1, kind, phone, stressed)
    t = float(rng.uniform(0.2, 0.4))
    for i, (c, v, stressed) in enumerate(sentence.syllables):
        if c:
            kind, _, _, dur = CONSONANTS[c]
            d = dur * rng.uniform(0.9, 1.1) / rate
            segs.append((t, t + d, kind, c, stressed))
            t += d
        d = VOWEL_DUR * (STRESS_DUR if stressed else 1.0) * rng.uniform(0.9, 1.1) / rate
        segs.append((t, t + d, "vowel", v, stressed))
        t += d
        if i == sentence.pause_after:
            d = rng.uniform(0.1, 0.18) / rate
            segs.append((t, t + d, "pause", "", False))
            t += d
    t_end_speech = t
    total = t + rng.uniform(0.25, 0.4)
    n_frames = int(np.ceil(total * FPS / 3.0)) * 3  # a multiple of 3: audio length = n_frames * 1600 / 3
    n_ctrl = int(round(n_frames * CONTROL_RATE / FPS))

    # ---- articulation / source targets on the control grid
    jaw = np.full(n_ctrl, SILENCE_JAW)
    lip = np.full(n_ctrl, np.nan)
    lip[: int(segs[0][0] * CONTROL_RATE)] = SILENCE_LIP
    lip[int(t_end_speech * CONTROL_RATE):] = SILENCE_LIP
    voice = np.zeros(n_ctrl)
    asp = np.zeros(n_ctrl)
    noise = {c: np.zeros(n_ctrl) for c in CONSONANTS if CONSONANTS[c][0] in ("stop", "fricative")}
    for t0, t1, kind, ph, stressed in segs:
        a, b = int(round(t0 * CONTROL_RATE)), int(round(t1 * CONTROL_RATE))
        g = 10 ** ((STRESS_GAIN_DB if stressed else 0.0) / 20)
        if kind == "vowel":
            jaw[a:b], lip[a:b] = VOWELS[ph]
            voice[a:b] = g
            asp[a:b] = speaker.breathiness * g
        elif kind == "pause":
            jaw[a:b] = 0.05
        else:
            _, j, lp, _ = CONSONANTS[ph]
            jaw[a:b], lip[a:b] = j, lp
            if kind == "stop":  # closure (silent), burst (15 ms), aspiration (rest, >= 20 ms)
                rel = a + int(0.55 * (b - a))
                noise[ph][rel:rel + 15] = 0.6 * g
                asp[rel + 10:b + 10] = 0.35 * g
            elif kind == "fricative":
                noise[ph][a:b] = 0.5 * g
            elif kind == "nasal":
                voice[a:b] = 0.55 * g
            else:  # lateral
                voice[a:b] = 0.75 * g
    lip = _fill_nan(lip)
    jaw = np.clip(_hann_smooth(jaw, ARTIC_SMOOTH_S), 0, 1)
    lip = np.clip(_hann_smooth(lip, ARTIC_SMOOTH_S), 0, 1)
    voice = _hann_smooth(voice, VOICE_SMOOTH_S)
    asp = _hann_smooth(asp, VOICE_SMOOTH_S)
    noise = {c: _hann_smooth(x, 0.006) for c, x in noise.items() if x.any()}

    # ---- intonation (audio only): declination + random accents + final movement, in semitones,
    # drawn independently of the syllables; range and level set by the speaker and the arousal.
    tc = np.arange(n_ctrl) / CONTROL_RATE
    s0, s1 = segs[0][0], t_end_speech
    pos = np.clip((tc - s0) / (s1 - s0), 0, 1)
    st = rng.uniform(1.5, 3.0) * (1 - 2 * pos)  # declination
    for _ in range(int(rng.integers(2, 5))):
        c = rng.uniform(s0, s1)
        w = rng.uniform(0.08, 0.2)
        height = rng.choice([-1.0, 1.0], p=[0.25, 0.75]) * rng.uniform(1.5, 4.0)
        st += height * np.exp(-0.5 * ((tc - c) / w) ** 2)
    if rng.random() < 0.25:  # final rise
        st += 5.0 * np.clip((tc - (s1 - 0.35)) / 0.35, 0, 1) ** 2
    st += _smooth_random(rng, tc, 0.7, 1.0, 3.0)
    intonation = st  # the dynamical part (z(a)); level, range and offset below are static (w)
    offset_st = float(rng.uniform(-1.0, 1.0))
    f0 = f0_from_intonation(intonation, speaker.f0_mean, arousal, offset_st)

    gain_db = speaker.level_db + AROUSAL_GAIN_DB * arousal + rng.uniform(-1.0, 1.0)

    # ---- visual only: blinks and head motion at frame rate
    tf = np.arange(n_frames) / FPS
    blink = np.zeros(n_frames)
    profile = np.array([0.45, 0.9, 1.0, 1.0, 0.7, 0.4, 0.15])  # close fast, reopen slower (233 ms)
    tb = rng.uniform(0.1, 1.4)
    while tb < n_frames / FPS - 0.25:
        k = int(round(tb * FPS))
        m = min(len(profile), n_frames - k)
        blink[k:k + m] = np.maximum(blink[k:k + m], profile[:m])
        tb += rng.uniform(1.3, 3.5)
    x0, y0 = rng.uniform(0.36, 0.64), rng.uniform(0.4, 0.56)
    s0_ = rng.uniform(0.5, 0.66)
    return Timeline(
        n_frames=n_frames, jaw=jaw, lip=lip, voice=voice, aspiration=asp, noise=noise, f0=f0,
        gain_db=float(gain_db), blink=blink,
        head_yaw=_smooth_random(rng, tf, rng.uniform(0.1, 0.3), 0.1, 0.7),
        head_pitch=_smooth_random(rng, tf, rng.uniform(0.05, 0.14), 0.1, 0.8),
        head_roll=_smooth_random(rng, tf, rng.uniform(0.03, 0.12), 0.1, 0.6),
        head_x=x0 + _smooth_random(rng, tf, 0.025, 0.1, 0.6),
        head_y=y0 + _smooth_random(rng, tf, 0.02, 0.1, 0.6),
        head_scale=s0_ * (1 + _smooth_random(rng, tf, 0.04, 0.1, 0.5)),
        arousal=float(arousal), valence=float(valence), intonation=intonation, pitch_offset_st=offset_st,
    )


def f0_from_intonation(intonation: np.ndarray, f0_mean: float, arousal: float, offset_st: float) -> np.ndarray:
    """f0 (Hz) from an intonation contour (semitones, before the emotion's range scaling) and the
    static pitch factors: the speaker's mean f0, the scaled arousal (level and range) and the clip offset."""
    st = intonation * (1 + AROUSAL_RANGE * arousal) + AROUSAL_PITCH_ST * arousal + offset_st
    return np.clip(f0_mean * 2 ** (st / 12), 60.0, 450.0)


def formants(jaw: np.ndarray, lip: np.ndarray, vtl_scale: float) -> np.ndarray:
    """Formant frequencies (..., 4) in Hz from the articulation (shared audiovisual factor)."""
    f1 = F1_RANGE[0] + jaw * (F1_RANGE[1] - F1_RANGE[0])
    f2 = F2_RANGE[0] + lip * (F2_RANGE[1] - F2_RANGE[0])
    f3 = F3_RANGE[0] + lip * (F3_RANGE[1] - F3_RANGE[0])
    f4 = np.full_like(f1, F4_REF)
    return np.stack([f1, f2, f3, f4], axis=-1) * vtl_scale
