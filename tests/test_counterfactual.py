"""Counterfactual rendering: "A with B's factors" from the generator itself (avmdvae.synth.counterfactual)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avmdvae.errors import ConfigError
from avmdvae.evaluation.disentangle import f0_contour
from avmdvae.manipulation.swap import stretch
from avmdvae.synth import ClipSpec, make_clip
from avmdvae.synth.counterfactual import (
    affected_modalities,
    counterfactual_audio,
    counterfactual_clip,
    fit_control,
    fit_frames,
)
from avmdvae.synth.factors import make_sentence, make_speaker, make_timeline

SEED, SIZE = 0, 96
# two clips of different speakers with the same length (87 frames), and a longer one (108)
A = ClipSpec(0, "neutral", 1, 2)
B_SAME = ClipSpec(1, "happy", 2, 3)
B_LONG = ClipSpec(1, "sad", 3, 2)


def _n_frames(spec: ClipSpec) -> int:
    return make_timeline(SEED, spec, make_speaker(SEED, spec.speaker), make_sentence(SEED, spec.sentence)).n_frames


@pytest.fixture(scope="module")
def clips() -> dict[str, object]:
    return {"a": make_clip(SEED, A, SIZE), "b_same": make_clip(SEED, B_SAME, SIZE),
            "b_long": make_clip(SEED, B_LONG, SIZE)}


def test_chosen_lengths() -> None:
    assert _n_frames(A) == _n_frames(B_SAME)
    assert _n_frames(B_LONG) != _n_frames(A)


def test_swapping_nothing_reproduces_a_bit_for_bit(clips) -> None:
    a = clips["a"]
    c = counterfactual_clip(SEED, A, B_LONG, [], SIZE)
    assert np.array_equal(c.frames, a.frames) and np.array_equal(c.audio, a.audio)
    assert c.truth.keys() == a.truth.keys()
    for k in a.truth:
        assert np.array_equal(c.truth[k], a.truth[k]), k


def test_swapping_everything_gives_b(clips) -> None:
    b = clips["b_same"]
    c = counterfactual_clip(SEED, A, B_SAME, ["w", "zav", "za", "zv"], SIZE)
    assert np.array_equal(c.frames, b.frames) and np.array_equal(c.audio, b.audio)
    for k in b.truth:
        assert np.array_equal(c.truth[k], b.truth[k]), k
    assert np.array_equal(counterfactual_clip(SEED, A, B_SAME, ["all"], SIZE).audio, b.audio)


def test_swapping_everything_gives_b_at_a_length(clips) -> None:
    a, b = clips["a"], clips["b_long"]
    c = counterfactual_clip(SEED, A, B_LONG, ["all"], SIZE)
    n = len(a.frames)
    assert c.frames.shape == a.frames.shape and c.audio.shape == a.audio.shape
    assert str(c.truth["speaker"]) == str(b.truth["speaker"]) and str(c.truth["emotion"]) == "sad"
    for k in ("blink", "head_yaw", "head_x", "head_scale"):  # frame-rate trajectories
        assert np.allclose(c.truth[k], fit_frames(b.truth[k].astype(np.float64), n), atol=1e-6), k
    tb = b.timeline  # control-rate ones: the same time warp at 1 kHz
    for k in ("jaw", "lip", "voice"):
        assert np.array_equal(getattr(c.timeline, k), fit_control(getattr(tb, k), tb.n_frames, n)), k
    assert sorted(c.timeline.noise) == sorted(tb.noise)
    # the voiced f0 is B's (stretched) where both are voiced
    both = (c.truth["f0"] > 0) & (fit_frames(b.truth["f0"].astype(np.float64), n) > 0)
    assert both.sum() > 10
    ratio = c.truth["f0"][both] / fit_frames(b.truth["f0"].astype(np.float64), n)[both]
    assert np.median(np.abs(np.log2(ratio))) < 0.02


def test_each_latent_changes_only_its_modalities(clips) -> None:
    a = clips["a"]
    for latent, want in (("za", ("audio",)), ("zv", ("visual",)), ("zav", ("audio", "visual")),
                         ("w", ("audio", "visual"))):
        c = counterfactual_clip(SEED, A, B_LONG, [latent], SIZE)
        moved = tuple(m for m, x, y in (("audio", c.audio, a.audio), ("visual", c.frames, a.frames))
                      if not np.array_equal(x, y))
        assert moved == want == affected_modalities([latent]), latent


def test_intonation_swap_keeps_a_level_and_takes_b_contour(clips) -> None:
    a, b = clips["a"], clips["b_long"]
    c = counterfactual_clip(SEED, A, B_LONG, ["za"], SIZE)
    # A's articulation and voicing: the voiced frames are A's; the speaker is A's
    assert np.array_equal(c.truth["jaw"], a.truth["jaw"]) and str(c.truth["speaker"]) == str(a.truth["speaker"])
    voiced = a.truth["f0"] > 0
    assert np.array_equal(c.truth["f0"] > 0, voiced)
    # level: A's speaker (median f0 within a few semitones of A's), contour: B's (stretched)
    st = 12 * np.log2(np.median(c.truth["f0"][voiced]) / np.median(a.truth["f0"][voiced]))
    assert abs(st) < 4
    tl_b = b.timeline
    ref = fit_control(tl_b.intonation, tl_b.n_frames, c.timeline.n_frames)
    assert np.allclose(c.timeline.intonation, ref)
    # the per-frame contour correlates with B's stretched contour more than with A's
    fb = c.timeline.at_frames(fit_control(tl_b.f0, tl_b.n_frames, c.timeline.n_frames))
    cb = f0_contour(np.where(voiced, fb, 0.0))
    cc, ca = f0_contour(c.truth["f0"]), f0_contour(a.truth["f0"])
    m = np.isfinite(cc) & np.isfinite(cb)
    assert np.corrcoef(cc[m], cb[m])[0, 1] > 0.9
    assert np.corrcoef(cc[m], cb[m])[0, 1] > np.corrcoef(cc[m], ca[m])[0, 1]


def test_fit_frames_matches_the_latent_stretch() -> None:
    x = np.random.default_rng(0).normal(size=(37, 3))
    for n in (20, 37, 80):
        want = stretch(torch.from_numpy(x)[None], n)[0].numpy()
        got = np.stack([fit_frames(x[:, j], n) for j in range(3)], 1)
        assert np.allclose(got, want, atol=1e-12), n
        loop = stretch(torch.from_numpy(x)[None], n, "loop")[0].numpy()
        assert np.allclose(np.stack([fit_frames(x[:, j], n, "loop") for j in range(3)], 1), loop), n


def test_fit_control_is_the_frame_warp_at_control_rate() -> None:
    x = np.linspace(0.0, 1.0, 3000)  # 90 frames at 1 kHz control rate
    y = fit_control(x, 90, 45)
    assert len(y) == 1500 and y[0] == 0.0
    assert np.allclose(y[::100], np.interp(np.arange(0, 1500, 100) * 89 / 44, np.arange(3000), x))
    assert fit_control(x, 90, 90) is x


def test_unknown_latent_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown latent"):
        counterfactual_clip(SEED, A, B_SAME, ["zq"], SIZE)
    with pytest.raises(ConfigError, match="length mode"):
        counterfactual_clip(SEED, A, B_SAME, ["zv"], SIZE, length="warp")


def test_noise_draws_keep_the_factors_and_redraw_the_noise() -> None:
    from avmdvae import audio as audio_mod
    from avmdvae.evaluation.metrics import log_spectral_distance

    for latents in ([], ["za"], ["w"]):  # draw 0 is the counterfactual clip's own audio (w's clip's noise)
        clip = counterfactual_clip(SEED, A, B_LONG, latents, SIZE)
        assert np.array_equal(counterfactual_audio(SEED, A, B_LONG, latents, 0), clip.audio), latents
    draws = [counterfactual_audio(SEED, A, B_LONG, ["za"], k) for k in range(3)]
    assert len({len(d) for d in draws}) == 1
    assert not np.allclose(draws[1], draws[0]) and not np.allclose(draws[1], draws[2])
    assert np.array_equal(draws[1], counterfactual_audio(SEED, A, B_LONG, ["za"], 1))  # reproducible
    power = [audio_mod.power_spectrogram(torch.from_numpy(d)).numpy() for d in draws]
    # frame by frame the noise bins differ as independent periodograms do (~7 dB) ...
    assert log_spectral_distance(power[0], power[1]) > 5.0
    # ... while the clip's average spectrum (its factors) stays put
    ltas = [10 * np.log10(p.mean(0) + 1e-10) for p in power]
    assert np.median(np.abs(ltas[0] - ltas[1])) < 2.0
