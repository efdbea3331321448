"""`avmdvae synth`: layout, determinism, resume, and the generative factors measured in the media."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.linalg import solve_toeplitz
from typer.testing import CliRunner

from avmdvae.cli import app
from avmdvae.errors import ConfigError, CorpusError
from avmdvae.media import probe, read_audio, read_frames
from avmdvae.synth import ClipSpec, generate_corpus, make_clip
from avmdvae.synth.factors import (
    AROUSAL_VALENCE,
    EMOTIONS,
    SAMPLE_RATE,
    STREAM_RENDER,
    STREAM_SPEECH,
    make_sentence,
    make_speaker,
    make_timeline,
)
from avmdvae.synth.render import SCLERA, pose_at, project, render_clip
from avmdvae.synth.speech import synthesize

SEED = 7
SIZE = 160
FPS = 30.0
TRUTH_KEYS = {"speaker", "emotion", "intensity", "sentence", "jaw", "lip_width", "f0", "loudness", "blink",
              "head_yaw", "head_pitch", "head_roll", "head_x", "head_y", "head_scale"}
SCALARS = {"speaker", "emotion", "intensity", "sentence", "arousal", "valence"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """2 speakers (M001, W002) x (neutral level 1, happy level 3) x 2 sentences = 8 clips."""
    out = tmp_path_factory.mktemp("synth") / "corpus"
    generate_corpus(out, n_speakers=2, n_sentences=2, emotions=["neutral", "happy"], levels=[3], seed=SEED,
                    size=SIZE)
    return out


def _videos(root: Path) -> list[Path]:
    return sorted(root.glob("*/video/front/*/level_*/*.mp4"))


def _truth(video: Path) -> dict[str, np.ndarray]:
    with np.load(video.with_name(video.stem + ".truth.npz"), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _spec(t: dict[str, np.ndarray]) -> ClipSpec:
    spk = {"M001": 0, "W002": 1}[str(t["speaker"])]
    return ClipSpec(spk, str(t["emotion"]), int(t["intensity"]), int(t["sentence"]))


def _lum(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def _box(frame: np.ndarray, centre: np.ndarray, half_w: float, half_h: float) -> np.ndarray:
    x, y = centre
    return frame[max(0, int(round(y - half_h))):int(round(y + half_h)) + 1,
                 max(0, int(round(x - half_w))):int(round(x + half_w)) + 1]


# ------------------------------------------------------------------------------------------- layout


def test_layout_truth_and_manifest(corpus: Path) -> None:
    videos = _videos(corpus)
    rel = sorted(str(v.relative_to(corpus)) for v in videos)
    expected = sorted(f"{spk}/video/front/{emo}/level_{lv}/{n:03d}.mp4" for spk in ("M001", "W002")
                      for emo, lv in (("neutral", 1), ("happy", 3)) for n in (1, 2))
    assert rel == expected
    desc = json.loads((corpus / "synth.json").read_text())
    assert desc["options"]["seed"] == SEED and desc["options"]["size"] == SIZE
    assert [s["name"] for s in desc["speakers"]] == ["M001", "W002"]
    assert len(desc["sentences"]) == 2
    for v in videos:
        info = probe(v)
        assert info.has_video and info.has_audio and info.video_codec == "h264" and info.audio_codec == "aac"
        assert (info.width, info.height) == (SIZE, SIZE) and abs(info.fps - FPS) < 1e-6
        t = _truth(v)
        assert TRUTH_KEYS <= set(t)
        for k, a in t.items():
            if k in SCALARS:
                assert a.ndim == 0, k
            else:
                assert a.shape == (info.n_frames,), k
        spk, _, _, emo, level, name = v.relative_to(corpus).parts
        assert str(t["speaker"]) == spk and str(t["emotion"]) == emo
        assert int(t["intensity"]) == int(level.split("_")[1]) and int(t["sentence"]) == int(name[:3])
        assert 2.4 <= info.n_frames / FPS <= 4.6  # 3-4 s sentences (+- speaking rate)
        assert len(read_audio(v)) == pytest.approx(info.n_frames * SAMPLE_RATE / FPS, abs=2)


def test_mead_discovery_finds_every_clip(corpus: Path) -> None:
    from avmdvae.layouts import discover

    d = discover(corpus, "mead")
    assert not d.skipped
    assert sorted(c.video for c in d.clips) == _videos(corpus)
    for c in d.clips:
        t = _truth(c.video)
        assert c.truth == c.video.with_name(c.video.stem + ".truth.npz")
        assert (c.speaker, c.emotion) == (str(t["speaker"]), str(t["emotion"]))
        assert c.intensity == int(t["intensity"])


# ---------------------------------------------------------------------------- determinism and resume


def test_same_seed_same_bytes_and_media(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    # A different subset (one speaker, one emotion) with the same seed: clips do not depend on the others.
    generate_corpus(out, n_speakers=1, n_sentences=2, emotions=["happy"], levels=[3], seed=SEED, size=SIZE,
                    workers=2)
    for name in ("001", "002"):
        a = corpus / "M001/video/front/happy/level_3" / f"{name}.mp4"
        b = out / "M001/video/front/happy/level_3" / f"{name}.mp4"
        assert a.with_name(f"{name}.truth.npz").read_bytes() == b.with_name(f"{name}.truth.npz").read_bytes()
        assert np.array_equal(read_frames(a), read_frames(b))
        assert np.array_equal(read_audio(a), read_audio(b))
    # Another seed changes the clip.
    c1 = make_clip(SEED + 1, ClipSpec(0, "happy", 3, 1), SIZE)
    t = _truth(corpus / "M001/video/front/happy/level_3/001.mp4")
    assert len(c1.truth["jaw"]) != len(t["jaw"]) or not np.array_equal(c1.truth["f0"], t["f0"])


def test_resume_skips_complete_clips_and_refuses_other_options(tmp_path: Path) -> None:
    out = tmp_path / "c"
    kw = dict(n_speakers=1, n_sentences=1, emotions=["neutral", "sad"], levels=[1], seed=1, size=96)
    r = generate_corpus(out, **kw)
    assert (r.written, r.skipped) == (2, 0)
    truth = r.videos[1].with_name(r.videos[1].stem + ".truth.npz")
    before = truth.read_bytes()
    truth.unlink()  # an interrupted clip: video written, sidecar missing
    r = generate_corpus(out, **kw)
    assert (r.written, r.skipped) == (1, 1) and truth.read_bytes() == before
    assert not list(out.rglob(".*tmp*"))  # no temporary files left behind
    with pytest.raises(CorpusError, match="other options"):
        generate_corpus(out, **{**kw, "seed": 2})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(CorpusError, match="not a synthetic corpus"):
        generate_corpus(tmp_path / "other", **kw)
    with pytest.raises(ConfigError, match="unknown emotion"):
        generate_corpus(tmp_path / "bad", emotions=["joy"])


def test_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["synth", str(out), "--speakers", "1", "--sentences", "1", "--emotions", "neutral", "--size", "96",
            "--workers", "1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (out / "M001/video/front/neutral/level_1/001.mp4").is_file()
    assert (out / "M001/video/front/neutral/level_1/001.truth.npz").is_file()
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "1 already complete" in " ".join(res.output.split())
    res = runner.invoke(app, ["synth", str(out), "--emotions", "neutral,joy"])
    assert res.exit_code == 2 and "unknown emotion" in res.output
    res = runner.invoke(app, ["synth", str(out), "--levels", "4"])
    assert res.exit_code == 2


# ------------------------------------------------------------------------ factors are in the media


def _estimate_f0(audio: np.ndarray, k: int, lo: float = 60.0, hi: float = 450.0) -> float:
    """Normalised autocorrelation pitch of a 50 ms window centred on frame k (first strong peak)."""
    n = 800
    c = int(round(k * SAMPLE_RATE / FPS))
    x = audio[c - n // 2:c + n // 2].astype(np.float64)
    x = x - x.mean()
    r = np.correlate(x, x, "full")[n - 1:]
    energy = np.cumsum(x[::-1] ** 2)[::-1]
    nr = r / np.sqrt(energy[0] * np.maximum(energy, 1e-12))
    lmin, lmax = int(SAMPLE_RATE / hi), int(SAMPLE_RATE / lo)
    seg = nr[lmin:lmax]
    lag = int(np.nonzero(seg >= 0.9 * seg.max())[0][0]) + lmin  # shortest lag near the best: no octave drop
    while nr[lag + 1] > nr[lag]:
        lag += 1
    a, b, d = nr[lag - 1], nr[lag], nr[lag + 1]
    return SAMPLE_RATE / (lag + 0.5 * (a - d) / (a - 2 * b + d))


def test_f0_of_decoded_audio_matches_truth(corpus: Path) -> None:
    errors = []
    for v in _videos(corpus):
        t, audio = _truth(v), read_audio(v)
        f0 = t["f0"]
        voiced = (f0 > 0) & (np.roll(f0, 1) > 0) & (np.roll(f0, -1) > 0)  # and both neighbours voiced
        voiced[[0, -1]] = False
        ks = np.nonzero(voiced)[0]
        assert len(ks) > 20
        errors.append(np.abs(np.array([_estimate_f0(audio, k) for k in ks]) / f0[ks] - 1))
    err = np.concatenate(errors)
    # The truth is f0 at the frame instant, the estimate an average over 50 ms of a moving contour.
    assert np.median(err) < 0.01
    assert np.mean(err < 0.05) > 0.97
    assert err.max() < 0.1  # no octave errors


def _mouth_darkness(frames: np.ndarray, t: dict[str, np.ndarray], speaker) -> np.ndarray:
    """Dark (mouth-inside) pixels in a box around the mouth located from the ground-truth pose."""
    out = []
    for k in range(len(frames)):
        pose = pose_at(t, k, frames.shape[1])
        centre = project(speaker, pose, np.array([[0.0, speaker.mouth_y + 0.03]]))[0]
        out.append((_lum(_box(frames[k], centre, 0.18 * pose.scale, 0.09 * pose.scale)) < 60).sum())
    return np.array(out, float)


def test_mouth_opening_follows_jaw(corpus: Path) -> None:
    for v in _videos(corpus):
        t = _truth(v)
        speaker = make_speaker(SEED, _spec(t).speaker)
        clip = make_clip(SEED, _spec(t), SIZE)
        assert np.array_equal(clip.truth["jaw"], t["jaw"])
        for frames in (clip.frames, read_frames(v)):  # rendered, and after H.264
            m = _mouth_darkness(frames, t, speaker)
            assert np.corrcoef(m, t["jaw"])[0, 1] > 0.9, v


def test_blink_closes_the_eyes(corpus: Path) -> None:
    for v in _videos(corpus):
        t = _truth(v)
        speaker = make_speaker(SEED, _spec(t).speaker)
        clip = make_clip(SEED, _spec(t), SIZE)
        closed, opened = t["blink"] >= 0.99, t["blink"] == 0
        assert closed.any() and opened.sum() > 30

        def eyes(frames: np.ndarray, k: int, t=t, speaker=speaker) -> list[np.ndarray]:
            pose = pose_at(t, k, frames.shape[1])
            pts = np.array([[-speaker.eye_dx, speaker.eye_y], [speaker.eye_dx, speaker.eye_y]])
            hw, hh = 0.6 * speaker.eye_w * pose.scale, 0.6 * speaker.eye_h * pose.scale
            return [_box(frames[k], c, hw, hh) for c in project(speaker, pose, pts)]

        # Rendered frames: the white of the eye vanishes when the lids are closed.
        visible = np.array([sum(int((np.abs(b.astype(int) - SCLERA).max(-1) < 12).sum())
                                for b in eyes(clip.frames, k)) for k in range(len(clip.frames))])
        assert visible[closed].max() == 0 and visible[opened].min() > 0
        # Decoded video: at the closed frames the eyes look like the rendered closed eyes, not like the
        # same frames rendered with open eyes (a counterfactual with blink = 0).
        spec = _spec(t)
        tl = make_timeline(SEED, spec, speaker, make_sentence(SEED, spec.sentence))
        tl.blink = np.zeros_like(tl.blink)
        open_frames = render_clip(speaker, tl, SIZE, spec.rng(SEED, STREAM_RENDER))
        decoded = read_frames(v)
        for k in np.nonzero(closed)[0]:
            dec = np.concatenate([b.ravel() for b in eyes(decoded, k)]).astype(float)
            actual = np.concatenate([b.ravel() for b in eyes(clip.frames, k)]).astype(float)
            counterfactual = np.concatenate([b.ravel() for b in eyes(open_frames, k)]).astype(float)
            assert np.abs(dec - actual).mean() < 0.4 * np.abs(dec - counterfactual).mean()


def _lpc_formants(x: np.ndarray, order: int = 16) -> np.ndarray:
    x = np.append(x[0], x[1:] - 0.9 * x[:-1]) * np.hamming(len(x))
    r = np.correlate(x, x, "full")[len(x) - 1:len(x) + order]
    a = solve_toeplitz(r[:-1], r[1:])
    roots = np.roots(np.r_[1.0, -a])
    roots = roots[roots.imag > 0]
    f = np.angle(roots) * SAMPLE_RATE / (2 * np.pi)
    bw = -np.log(np.abs(roots)) * SAMPLE_RATE / np.pi
    return np.sort(f[(f > 200) & (bw < 500)])


def test_speakers_differ_in_formants(corpus: Path) -> None:
    """F1/F2 of the open vowel /a/ measured by LPC on the decoded audio: they follow each speaker's
    vocal-tract length, and the two speakers differ."""
    est = {}
    for spk in ("M001", "W002"):
        f12, truth12 = [], []
        for v in sorted(corpus.glob(f"{spk}/video/front/*/*/*.mp4")):
            t, audio = _truth(v), read_audio(v).astype(np.float64)
            for k in np.nonzero((t["jaw"] > 0.8) & (t["f0"] > 0))[0]:
                c = int(round(k * SAMPLE_RATE / FPS))
                f = _lpc_formants(audio[c - 320:c + 320])
                if len(f) >= 2:
                    f12.append(f[:2])
                    truth12.append((t["f1"][k], t["f2"][k]))
        assert len(f12) > 10
        est[spk] = np.median(f12, axis=0)
        np.testing.assert_allclose(est[spk], np.median(truth12, axis=0), rtol=0.08)
    ratio = est["W002"] / est["M001"]
    vtl = make_speaker(SEED, 1).vtl_scale / make_speaker(SEED, 0).vtl_scale
    assert vtl > 1.09  # by construction: men 0.90-1.04, women 1.14-1.26
    assert np.all(ratio > 1.05)
    np.testing.assert_allclose(ratio, vtl, rtol=0.05)


def test_arousal_only_in_voice_valence_only_in_face() -> None:
    spk, sen = make_speaker(SEED, 0), make_sentence(SEED, 1)
    spec = ClipSpec(0, "angry", 3, 1)
    tl = make_timeline(SEED, spec, spk, sen)
    audio = synthesize(tl, spk, spec.rng(SEED, STREAM_SPEECH))
    frames = render_clip(spk, tl, 96, spec.rng(SEED, STREAM_RENDER))
    # Valence changes the face, not the voice.
    tl.valence = -tl.valence
    assert np.array_equal(synthesize(tl, spk, spec.rng(SEED, STREAM_SPEECH)), audio)
    assert not np.array_equal(render_clip(spk, tl, 96, spec.rng(SEED, STREAM_RENDER)), frames)
    # Pitch contour and loudness (arousal, intonation) change the voice, not the face.
    tl.valence = -tl.valence
    tl.f0, tl.gain_db = tl.f0 * 0.8, tl.gain_db - 6
    assert np.array_equal(render_clip(spk, tl, 96, spec.rng(SEED, STREAM_RENDER)), frames)
    assert not np.array_equal(synthesize(tl, spk, spec.rng(SEED, STREAM_SPEECH)), audio)
    # Categories: unique (arousal, valence) pairs, yet each value alone is shared by several categories.
    pairs = [AROUSAL_VALENCE[e] for e in EMOTIONS]
    assert len(set(pairs)) == len(EMOTIONS)
    for i in range(2):
        values = [p[i] for p in pairs]
        assert all(values.count(x) >= 2 for x in values)
    # Arousal raises the voice: same speaker and sentence, angry vs sad.
    sad = make_clip(SEED, ClipSpec(0, "sad", 3, 1), 96)
    angry = make_clip(SEED, ClipSpec(0, "angry", 3, 1), 96)
    f0_sad, f0_angry = sad.truth["f0"], angry.truth["f0"]
    assert np.median(f0_angry[f0_angry > 0]) > 1.3 * np.median(f0_sad[f0_sad > 0])
    assert np.median(angry.truth["loudness"]) > np.median(sad.truth["loudness"]) + 6


def test_face_front_end_tracks_the_rendered_head(corpus: Path) -> None:
    if importlib.util.find_spec("facenet_pytorch") is None:
        pytest.skip("facenet-pytorch is not installed")
    from avmdvae.face import FaceCropper

    fc = FaceCropper()
    for v in _videos(corpus)[::3]:
        t = _truth(v)
        crops, boxes = fc.crop_clip_with_boxes(read_frames(v))
        assert crops.shape == (len(t["jaw"]), 64, 64, 3)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        dist = np.hypot(cx - t["head_x"] * SIZE, cy - t["head_y"] * SIZE) / (t["head_scale"] * SIZE)
        assert np.median(dist) < 0.2 and dist.max() < 0.35
