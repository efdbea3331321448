"""Counterfactual clips: "A with B's factors", rendered by the generator itself.

The latents of the MDVAE map onto the generator's factors (docs/synthetic-corpus.md):

    latent  factors taken from B
    w       everything static in B's clip: the speaker (face geometry, colours, voice), the emotion
            (arousal: pitch level and range, loudness; valence: mouth corners and brows), the clip's
            loudness and pitch offsets, the background and lighting, and B's noise realisations
    zav     the articulation timeline: jaw and lip width (mouth, formants), voicing, aspiration and the
            consonant noises (the phone sequence, with its timing and speaking rate)
    za      the intonation contour (f0 in semitones before the emotion's range scaling; A's speaker,
            emotion and offset set its level and range unless w is taken from B too)
    zv      blinks and the head trajectories (yaw, pitch, roll, x, y, scale)

B's dynamical trajectories are brought to A's length the way `avmdvae swap --length` does
(`avmdvae.manipulation.swap.stretch`): "stretch" maps A's frame k onto B's frame position
k (T_B - 1) / (N_A - 1) and interpolates linearly (control-rate arrays at the same time warp),
"loop" plays B at its own speed, back and forth. Swapping nothing gives A bit for bit; swapping
everything gives B (bit for bit when the clips have the same length).

Known impurity: the aspiration level of vowels scales with the speaker's breathiness and is part of
the articulation timeline, so a z(av) swap carries a trace of B's breathiness.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import numpy as np

from avmdvae.errors import ConfigError
from avmdvae.synth.factors import (
    CONTROL_RATE,
    FPS,
    STREAM_RENDER,
    STREAM_SPEECH,
    ClipSpec,
    Sentence,
    Speaker,
    Timeline,
    f0_from_intonation,
    make_sentence,
    make_speaker,
    make_timeline,
)
from avmdvae.synth.generate import SynthClip, truth_arrays
from avmdvae.synth.render import render_clip
from avmdvae.synth.speech import synthesize

LATENTS = ("w", "zav", "za", "zv")
LENGTH_MODES = ("stretch", "loop")
ARTICULATION_FIELDS = ("jaw", "lip", "voice", "aspiration")  # control rate, plus the noise dict
VISUAL_FIELDS = ("blink", "head_yaw", "head_pitch", "head_roll", "head_x", "head_y", "head_scale")
# What a swap of each latent changes, by modality (the counterfactual of the other modality is A's).
AFFECTS: dict[str, tuple[str, ...]] = {"w": ("audio", "visual"), "zav": ("audio", "visual"),
                                       "za": ("audio",), "zv": ("visual",)}


def check_latents(latents: Iterable[str]) -> frozenset[str]:
    names = frozenset(latents)
    if "all" in names:
        names = (names - {"all"}) | frozenset(LATENTS)
    bad = names - set(LATENTS)
    if bad:
        raise ConfigError(f"unknown latent(s) {', '.join(sorted(bad))}: choose from {', '.join(LATENTS)}, all")
    return names


def affected_modalities(latents: Iterable[str]) -> tuple[str, ...]:
    """Modalities whose counterfactual differs from A's media when these latents come from B."""
    names = check_latents(latents)
    return tuple(m for m in ("audio", "visual") if any(m in AFFECTS[n] for n in names))


def frame_positions(n_src: int, n_dst: int, mode: str = "stretch") -> np.ndarray:
    """Positions (n_dst,) in a source sequence of n_src frames for each output frame (float64)."""
    return _warp(np.arange(n_dst, dtype=np.float64), n_src, n_dst, mode)


def _warp(k: np.ndarray, n_src: int, n_dst: int, mode: str) -> np.ndarray:
    """Map output frame positions k (fractional allowed) to source frame positions."""
    if mode not in LENGTH_MODES:
        raise ConfigError(f"unknown length mode {mode!r}: use stretch or loop")
    if n_src <= 1:
        return np.zeros_like(k)
    if mode == "stretch":
        if n_dst <= 1:
            return np.zeros_like(k)
        return k * ((n_src - 1) / (n_dst - 1))
    period = 2.0 * (n_src - 1)
    q = np.mod(k, period)
    return np.where(q <= n_src - 1, q, period - q)


def _interp(x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """x sampled at fractional positions, linear between neighbours (as manipulation.swap.stretch)."""
    n = len(x)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, n - 1)
    hi = np.minimum(lo + 1, n - 1)
    frac = np.clip(pos - lo, 0.0, 1.0)
    return x[lo] * (1 - frac) + x[hi] * frac


def fit_frames(x: np.ndarray, n_dst: int, mode: str = "stretch") -> np.ndarray:
    """A frame-rate trajectory (T,) brought to n_dst frames (unchanged when T == n_dst)."""
    if len(x) == n_dst:
        return x
    return _interp(x, frame_positions(len(x), n_dst, mode))


def fit_control(x: np.ndarray, n_src_frames: int, n_dst_frames: int, mode: str = "stretch") -> np.ndarray:
    """A control-rate array of a clip of n_src_frames brought to a clip of n_dst_frames, with the
    same time warp as the frames (unchanged when the frame counts are equal)."""
    n_ctrl = int(round(n_dst_frames * CONTROL_RATE / FPS))
    if n_src_frames == n_dst_frames and len(x) == n_ctrl:
        return x
    per_frame = CONTROL_RATE / FPS
    k = np.arange(n_ctrl, dtype=np.float64) / per_frame  # output frame positions
    pos = _warp(k, n_src_frames, n_dst_frames, mode) * per_frame
    return _interp(x, np.minimum(pos, len(x) - 1))


def counterfactual_timeline(tl_a: Timeline, sp_a: Speaker, tl_b: Timeline, sp_b: Speaker,
                            latents: Iterable[str], length: str = "stretch") -> tuple[Timeline, Speaker]:
    """A's timeline with the factors of `latents` from B (B's trajectories fitted to A's length).

    Returns (timeline, speaker). Every array not taken from B is A's own object (no copy).
    """
    names = check_latents(latents)
    if length not in LENGTH_MODES:
        raise ConfigError(f"unknown length mode {length!r}: use stretch or loop")
    n, nb = tl_a.n_frames, tl_b.n_frames
    changes: dict[str, object] = {}
    if "zav" in names:
        for f in ARTICULATION_FIELDS:
            changes[f] = fit_control(getattr(tl_b, f), nb, n, length)
        changes["noise"] = {c: fit_control(x, nb, n, length) for c, x in tl_b.noise.items()}
    if "zv" in names:
        for f in VISUAL_FIELDS:
            changes[f] = fit_frames(getattr(tl_b, f), n, length)
    w_src, w_sp = (tl_b, sp_b) if "w" in names else (tl_a, sp_a)
    if "w" in names:
        changes.update(gain_db=tl_b.gain_db, arousal=tl_b.arousal, valence=tl_b.valence,
                       pitch_offset_st=tl_b.pitch_offset_st)
    if "za" in names or "w" in names:
        if "za" in names and "w" in names:  # all pitch factors from B
            changes["f0"] = fit_control(tl_b.f0, nb, n, length)
            changes["intonation"] = (fit_control(tl_b.intonation, nb, n, length)
                                     if tl_b.intonation is not None else None)
        else:
            into = fit_control(tl_b.intonation, nb, n, length) if "za" in names else tl_a.intonation
            if into is None:
                raise ConfigError("the timelines carry no intonation contour (made by an older avmdvae)")
            changes["intonation"] = into
            changes["f0"] = f0_from_intonation(into, w_sp.f0_mean, w_src.arousal, w_src.pitch_offset_st)
    return replace(tl_a, **changes), w_sp  # type: ignore[arg-type]


def _parts(seed: int, spec_a: ClipSpec, spec_b: ClipSpec, latents: Iterable[str], length: str,
           speakers: dict[int, Speaker] | None, sentences: dict[int, Sentence] | None,
           ) -> tuple[Timeline, Speaker, ClipSpec, frozenset[str]]:
    """(timeline, speaker, w's source clip, latent names) of "A with the factors of `latents` from B"."""
    names = check_latents(latents)
    speakers = speakers if speakers is not None else {}
    sentences = sentences if sentences is not None else {}

    def spk(i: int) -> Speaker:
        if i not in speakers:
            speakers[i] = make_speaker(seed, i)
        return speakers[i]

    def sen(i: int) -> Sentence:
        if i not in sentences:
            sentences[i] = make_sentence(seed, i)
        return sentences[i]

    tl_a = make_timeline(seed, spec_a, spk(spec_a.speaker), sen(spec_a.sentence))
    if names:
        tl_b = make_timeline(seed, spec_b, spk(spec_b.speaker), sen(spec_b.sentence))
        tl, sp = counterfactual_timeline(tl_a, spk(spec_a.speaker), tl_b, spk(spec_b.speaker), names, length)
    else:
        tl, sp = tl_a, spk(spec_a.speaker)
    return tl, sp, (spec_b if "w" in names else spec_a), names


def counterfactual_clip(seed: int, spec_a: ClipSpec, spec_b: ClipSpec, latents: Iterable[str], size: int,
                        length: str = "stretch", speakers: dict[int, Speaker] | None = None,
                        sentences: dict[int, Sentence] | None = None) -> SynthClip:
    """Render "A with the factors of `latents` from B" (see the module docstring) as a SynthClip.

    The noise realisations and the background / lighting (render stream) follow w's source clip;
    the truth's labels: speaker, emotion and intensity from w's clip, sentence from z(av)'s.
    speakers / sentences: optional caches (index -> object) reused across calls.
    """
    tl, sp, w_spec, names = _parts(seed, spec_a, spec_b, latents, length, speakers, sentences)
    audio = synthesize(tl, sp, w_spec.rng(seed, STREAM_SPEECH))
    frames = render_clip(sp, tl, size, w_spec.rng(seed, STREAM_RENDER))
    label = ClipSpec(w_spec.speaker, w_spec.emotion, w_spec.level,
                     (spec_b if "zav" in names else spec_a).sentence)
    return SynthClip(label, frames, audio, truth_arrays(label, sp, tl, audio), tl)


def counterfactual_audio(seed: int, spec_a: ClipSpec, spec_b: ClipSpec, latents: Iterable[str], draw: int,
                         length: str = "stretch", speakers: dict[int, Speaker] | None = None,
                         sentences: dict[int, Sentence] | None = None) -> np.ndarray:
    """The counterfactual's waveform (S,) with the noise realisation `draw`: draw 0 is
    `counterfactual_clip`'s; draw k > 0 the same factors with other aspiration, frication and floor noise.
    Nothing in a clip's factors fixes its noise realisation, so what a model can be asked to produce is
    the counterfactual's spectrum averaged over draws (`avmdvae.evaluation.swap`)."""
    tl, sp, w_spec, _ = _parts(seed, spec_a, spec_b, latents, length, speakers, sentences)
    return synthesize(tl, sp, w_spec.rng(seed, STREAM_SPEECH, draw))


__all__ = ["AFFECTS", "LATENTS", "LENGTH_MODES", "affected_modalities", "check_latents", "counterfactual_audio",
           "counterfactual_clip", "counterfactual_timeline", "fit_control", "fit_frames", "frame_positions"]
