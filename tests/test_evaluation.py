"""Evaluation: metrics against known values, probes on planted latents, the swap score on hand-built
estimator outputs, and a tiny end-to-end `avmdvae eval` on a synthetic corpus with ground truth
(tiny models trained here through the training API)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d
from typer.testing import CliRunner

from avmdvae import media
from avmdvae.cli import app
from avmdvae.constants import SAMPLE_RATE
from avmdvae.corpus import ClipRecord, CorpusWriter, PreprocessParams
from avmdvae.errors import ConfigError
from avmdvae.evaluation import disentangle as dis
from avmdvae.evaluation import metrics as M
from avmdvae.evaluation import probes

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "tiny"


def speechlike(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """Amplitude-modulated harmonic complex with a gliding f0 (syllable-rate envelope), 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    ph = 2 * np.pi * np.cumsum(f0) / 16000
    x = sum(np.sin(h * ph) / h for h in range(1, 12))
    env = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5
    return (0.2 * x * env + 1e-3 * rng.standard_normal(len(t))).astype(np.float32)


# ------------------------------------------------------------------------------------------ metrics
def test_stoi_and_pesq_of_identical_signals_are_maximal_and_drop_with_noise():
    x = speechlike()
    assert M.stoi(x, x) == pytest.approx(1.0, abs=1e-6)
    assert M.pesq_wb(x, x) == pytest.approx(M.PESQ_MAX, abs=0.01)
    noisy = x + 0.1 * np.random.default_rng(1).standard_normal(len(x)).astype(np.float32)
    assert M.stoi(x, noisy) < 0.9
    assert M.pesq_wb(x, noisy) < 2.5
    # torch input, and a length mismatch is cut to the shorter signal
    assert M.stoi(torch.from_numpy(x), torch.from_numpy(x[:-100])) == pytest.approx(1.0, abs=1e-6)
    assert np.isnan(M.pesq_wb(np.zeros(16000), np.zeros(16000)))  # silence: not scorable


def test_si_sdr_and_lsd_known_values():
    x = speechlike()
    n = np.random.default_rng(2).standard_normal(len(x))
    n *= np.sqrt(np.mean((x - x.mean()) ** 2) / np.mean(n**2)) / 10 ** (10 / 20)  # 10 dB below
    assert M.si_sdr(x, 3 * x) > 100  # scale-invariant
    assert M.si_sdr(x, x + n) == pytest.approx(10.0, abs=0.2)
    p = np.random.default_rng(3).random((5, 513)) + 0.1
    assert M.log_spectral_distance(p, p) == pytest.approx(0.0)
    assert M.log_spectral_distance(p, 10 * p) == pytest.approx(10.0)  # x10 power = 10 dB everywhere


def test_psnr_of_a_known_noise_level():
    rng = np.random.default_rng(0)
    a = rng.random((4, 64, 64, 3))
    b = a + rng.choice([-0.01, 0.01], a.shape)  # |error| = 0.01 exactly -> MSE 1e-4 -> 40 dB
    assert M.psnr(a, b) == pytest.approx(40.0, abs=1e-9)
    assert M.psnr_frames(a, b) == pytest.approx(np.full(4, 40.0))
    u = (a * 255).astype(np.uint8)
    assert M.psnr(u, u) == float("inf")
    v = u.astype(np.int16)
    v[..., 0] += np.where(v[..., 0] < 128, 5, -5)  # error 5 on one channel in three
    assert M.psnr(u, v.astype(np.uint8)) == pytest.approx(10 * np.log10(255**2 / (25 / 3)), abs=1e-9)


def _ssim_reference(x: np.ndarray, y: np.ndarray, rng: float) -> float:
    """Straightforward SSIM of one (H, W, C) pair with scipy 'valid' 2-D convolutions."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    vals = []
    for c in range(x.shape[-1]):
        a, b = x[..., c].astype(np.float64), y[..., c].astype(np.float64)
        f = lambda z: convolve2d(z, w, mode="valid")  # noqa: E731
        ma, mb = f(a), f(b)
        va, vb, cab = f(a * a) - ma**2, f(b * b) - mb**2, f(a * b) - ma * mb
        vals.append((((2 * ma * mb + c1) * (2 * cab + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))).mean())
    return float(np.mean(vals))


def test_ssim_identical_is_one_noisy_is_lower_and_matches_a_direct_implementation():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] / 63
    img = np.stack([0.5 + 0.4 * np.sin(6 * xx + c) * np.cos(4 * yy) for c in range(3)], -1)
    u = (img * 255).round().astype(np.uint8)[None].repeat(3, 0)
    assert M.ssim(u, u) == pytest.approx(1.0)
    noisy = np.clip(u + rng.normal(0, 20, u.shape), 0, 255).astype(np.uint8)
    worse = np.clip(u + rng.normal(0, 60, u.shape), 0, 255).astype(np.uint8)
    s1, s2 = M.ssim(u, noisy), M.ssim(u, worse)
    assert s2 < s1 < 0.95
    per = M.ssim_frames(u, noisy)
    assert per.shape == (3,)
    assert per[0] == pytest.approx(_ssim_reference(u[0], noisy[0], 255), abs=1e-5)
    # float channels-first tensors give the same as uint8 channels-last with the matching range
    t = torch.from_numpy(u).permute(0, 3, 1, 2).double() / 255
    tn = torch.from_numpy(noisy).permute(0, 3, 1, 2).double() / 255
    assert M.ssim(t, tn) == pytest.approx(s1, abs=1e-6)
    assert M.face_metrics(u, u)["ssim"] == pytest.approx(1.0)


def test_face_movement_is_the_share_of_the_clips_movement_rendered_per_band():
    rng = np.random.default_rng(1)
    still = rng.uniform(0.2, 0.8, (64, 64, 3))
    move = np.zeros((12, 64, 64, 3))
    move[:, 44:52, 24:40] = 0.15 * np.sin(np.arange(12))[:, None, None, None]  # a mouth opening and closing
    move[:, 24:28, 16:48] = -0.1 * np.cos(np.arange(12))[:, None, None, None]  # eyelids
    clip = still + move
    m = M.face_movement(clip, clip)
    assert m["move_along_face"] == pytest.approx(1) and m["move_off_face"] == pytest.approx(0, abs=1e-12)
    frozen = M.face_movement(clip, np.repeat(clip.mean(0, keepdims=True), 12, 0))  # the clip's mean face
    assert frozen["move_along_mouth"] == pytest.approx(0, abs=1e-9)
    assert frozen["move_off_mouth"] == pytest.approx(0, abs=1e-9)
    half = M.face_movement(clip, clip.mean(0) + 0.5 * (clip - clip.mean(0)))
    assert half["move_along_eyes"] == pytest.approx(0.5) and half["move_along_mouth"] == pytest.approx(0.5)
    # the mouth moved in the eyes' place: nothing along, all of it off, and the mouth band still
    swapped = still + np.roll(move, -20, axis=1)
    s = M.face_movement(clip, swapped)
    assert s["move_along_mouth"] == pytest.approx(-0.0, abs=1e-9) and s["move_off_mouth"] == pytest.approx(0, abs=1e-9)
    assert s["move_along_eyes"] < 0.2 and s["move_off_eyes"] > 1
    # a static reference has nothing to render; a level change (the same for every frame) is not movement
    assert np.isnan(M.face_movement(np.repeat(still[None], 4, 0), clip[:4])["move_along_face"])
    assert M.face_movement(clip, np.clip(clip + 0.05, 0, 1))["move_along_face"] == pytest.approx(1)
    u8 = (clip * 255).round().astype(np.uint8)  # uint8 against float in [0, 1]: one scale
    assert M.face_movement(u8, clip)["move_along_face"] == pytest.approx(1, abs=0.01)
    assert M.project(np.array([1.0, 1.0]), np.array([2.0, 0.0])) == pytest.approx((0.5, 0.25))


def test_face_movement_over_a_corrupted_region():
    """The denoise task scores movement where the corruption hit: an occluded mouth brings none of it back,
    a face whose mouth is restored brings all of it, however much the rest of the crop moves."""
    from avmdvae.manipulation import noise as N

    rng = np.random.default_rng(2)
    clip = (rng.uniform(0.2, 0.8, (64, 64, 3)) * 255).round()
    clip = np.repeat(clip[None], 10, 0)
    clip[:, 44:52, 24:40] += (40 * np.sin(np.arange(10)))[:, None, None, None]  # the mouth moves ...
    clip[:, :, :6] += (30 * np.cos(np.arange(10)))[:, None, None, None]  # ... and so does the crop's left edge
    clip = clip.clip(0, 255).astype(np.uint8)
    spec = N.parse_noise("visual:occlude:mouth")
    hit = {"region": N.corrupted_region(spec)}
    occluded = N.corrupt_faces(clip, spec, rng)
    m = M.face_movement(clip, occluded, hit)
    assert m["move_along_region"] == 0 and m["move_off_region"] == 0
    assert M.face_movement(clip, occluded)["move_along_mouth"] > 0.2  # the full-width band still sees the edge
    restored = occluded.copy()
    y0, y1, x0, x1 = N.region_box("mouth", 64)
    restored[:, y0:y1, x0:x1] = clip[:, y0:y1, x0:x1]
    assert M.face_movement(clip, restored, hit)["move_along_region"] == pytest.approx(1)
    assert N.corrupted_region(N.parse_noise("visual:gaussian:0.1")) == (0.0, 1.0, 0.0, 1.0)


# ------------------------------------------------------------------------------------------- probes
def _planted(n_spk: int = 6, per: int = 12, classes: int = 4, dim: int = 10, signal: float = 3.0,
             seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.tile(np.arange(classes), n_spk * per // classes + 1)[: n_spk * per]
    groups = np.repeat(np.arange(n_spk), per)
    centres = rng.normal(0, 1, (classes, dim))
    x = rng.normal(0, 1, (len(y), dim)) + signal * centres[y]
    x += rng.normal(0, 1, (n_spk, dim))[groups]  # a speaker offset the probe must see through
    return x, y, groups, rng


def test_learning_curve_recovers_a_planted_label_and_fails_on_noise():
    x, y, g, rng = _planted()
    curve = probes.learning_curve(x, y, g, ks=(1, 2, 5, 50), draws=4, seed=0)
    by_k = {p["k"]: p for p in curve["points"]}
    assert set(by_k) == {1, 2, 5, curve["k_max"], "all"} and curve["k_max"] < 50  # 50 is more than the data has
    assert by_k["all"]["accuracy"]["mean"] > 0.9
    assert by_k[5]["macro_f1"]["mean"] > 0.8
    assert by_k["all"]["accuracy"]["n"] == 4 and by_k[1]["accuracy"]["std"] >= 0
    noise = probes.learning_curve(rng.normal(size=x.shape), y, g, ks=(5,), draws=4, seed=0)
    assert noise["points"][-1]["accuracy"]["mean"] < 0.5  # chance is 0.25
    with pytest.raises(ConfigError):
        probes.learning_curve(x, y, np.zeros(len(y)), draws=1)  # one speaker: cannot be speaker-disjoint


def test_probe_classification_and_regression():
    x, y, g, rng = _planted()
    good = probes.probe_classification(x, y, g)
    bad = probes.probe_classification(rng.normal(size=x.shape), y, g)
    assert good.informativeness > 0.8 and bad.informativeness < 0.25
    z = rng.normal(size=(300, 5))
    target = np.stack([z[:, 0] - 2 * z[:, 3], rng.normal(size=300)], 1)
    target[::7, 0] = np.nan  # missing values are ignored
    r = probes.probe_regression(z, target, np.repeat(np.arange(6), 50))
    assert r["r2"][0] > 0.95 and r["r2"][1] < 0.1
    # one target of two predicted: half the credit, whatever the other's negative R^2
    assert r["informativeness"] == pytest.approx(np.mean(np.clip(r["r2"], 0, 1))) and r["informativeness"] > 0.45
    assert probes.probe_regression(rng.normal(size=(300, 5)), target[:, 0])["informativeness"] < 0.05


# ----------------------------------------------------------------------------------------- swap score
def test_transfer_fractions():
    assert dis.transfer_class({"a": 0.1, "b": 0.9}, "a", "b") == pytest.approx(0.9)
    assert np.isnan(dis.transfer_class({"a": 1.0}, "a", "a"))
    ya, yb = np.zeros((10, 2)), np.ones((10, 2))
    assert dis.transfer_regression(yb, ya, yb) == pytest.approx(1.0)
    assert dis.transfer_regression(ya, ya, yb) == pytest.approx(0.0)
    assert dis.transfer_regression(0.5 * yb, ya, yb) == pytest.approx(0.5)
    assert np.isnan(dis.transfer_regression(ya, ya, ya))


def _hand_built_trials(swapped: str | None, rng: np.random.Generator, n: int = 5) -> list[dict[str, float]]:
    """Estimator outputs for `n` pairs of 'A with `swapped` from B' under an ideal model (None: no-op)."""
    out = []
    for _ in range(n):
        ya, yb = rng.normal(size=(20, 2)), rng.normal(size=(20, 2))
        t = {}
        for f in dis.FACTORS:
            moved = swapped is not None and f.owner == swapped
            if f.kind == "class":
                proba = {"A": 0.01, "B": 0.98, "C": 0.01} if moved else {"A": 0.98, "B": 0.01, "C": 0.01}
                t[f.name] = dis.transfer_class(proba, "A", "B")
            else:
                est = (yb if moved else ya) + 0.01 * rng.normal(size=ya.shape)
                t[f.name] = dis.transfer_regression(est, ya, yb)
        out.append(t)
    return out


@pytest.mark.parametrize("latent", dis.LATENTS)
def test_swap_score_perfect_swap_is_one_and_no_op_fails(latent):
    rng = np.random.default_rng(0)
    perfect = dis.swap_score(_hand_built_trials(latent, rng), latent)
    assert perfect["score"] > 0.95 and perfect["transfer"] > 0.95 and perfect["leakage"] < 0.05
    noop = dis.swap_score(_hand_built_trials(None, rng), latent)
    assert abs(noop["score"]) < 0.05 and noop["transfer"] < 0.05
    wrong = next(k for k in dis.LATENTS if k != latent)  # the model moved another latent's factors
    assert dis.swap_score(_hand_built_trials(wrong, rng), latent)["score"] < 0
    everything = [{k: 1.0 for k in dis.FACTOR_NAMES}] * 3  # output = B: everything moved
    assert dis.swap_score(everything, latent)["score"] == pytest.approx(0.0)


def test_f0_contour_and_selectivity():
    c = dis.f0_contour(np.array([0.0, 100.0, 200.0, 0.0, 100.0]))
    assert np.isnan(c[0]) and np.isnan(c[3])
    assert c[2] - c[1] == pytest.approx(12.0) and c[1] == pytest.approx(0.0)
    m = {"w": {"speaker": 1.0, "emotion": 0.8, "articulation": 0.1}}
    assert dis.selectivity(m, "w") == pytest.approx(0.8)


def test_ridge_probe_picks_its_penalty_on_other_speakers_not_on_near_duplicate_frames(monkeypatch):
    """Frames of a clip share an offset over 150 features; one feature carries the target. A penalty
    chosen leaving one frame out (GCV) memorises the offsets and fails on held-out speakers; chosen on
    held-out training speakers it generalises."""
    rng = np.random.default_rng(0)
    xs, ys, gs = [], [], []
    for s in range(6):
        for _ in range(6):
            t = rng.normal(size=30)
            x = 2 * rng.normal(size=150) + 0.3 * rng.normal(size=(30, 150))
            x[:, 0] += t
            xs.append(x)
            ys.append(t + 0.5 * rng.normal() + 0.3 * rng.normal(size=30))
            gs += [f"s{s}"] * 30
    x, y, g = np.concatenate(xs), np.concatenate(ys), np.array(gs)
    grouped = probes.probe_regression(x, y, g)["r2_mean"]
    fit = probes.fit_regressor
    monkeypatch.setattr(probes, "fit_regressor", lambda x, y, *a, **k: fit(x, y))  # GCV, as before
    gcv = probes.probe_regression(x, y, g)["r2_mean"]
    assert grouped > 0.0 > gcv + 1.0


def test_within_clip_removes_the_clip_mean_and_keeps_missing_values_missing():
    x = np.array([[1.0, np.nan, np.nan], [3.0, 2.0, np.nan], [5.0, 4.0, np.nan]])
    d = dis.within_clip(x)
    assert d[:, 0] == pytest.approx([-2.0, 0.0, 2.0])
    assert np.isnan(d[0, 1]) and d[1:, 1] == pytest.approx([-1.0, 1.0])
    assert np.isnan(d[:, 2]).all()


def test_factor_matrix_credits_the_latent_that_tracks_a_frame_factor_not_one_that_holds_its_level():
    """jaw = the speaker's level + a per-frame movement. z(av) follows the movement, z(v) holds only
    the level (a static code): the matrix must give articulation to z(av); head pose (three rotations,
    followed by z(v)) to z(v); w, constant in a clip, carries no per-frame factor."""
    from avmdvae.evaluation.tasks import ClipCode, EvalOptions, Evaluator

    rng = np.random.default_rng(0)
    n, codes = 30, []
    for s in range(6):
        level = 3.0 * rng.normal()
        for j in range(4):
            move = rng.normal(size=n)
            pose = rng.normal(size=(n, 3))
            truth = {"jaw": level + move, "lip_width": level - move, "head_yaw": pose[:, 0], "head_pitch": pose[:, 1],
                     "head_roll": pose[:, 2]}
            lat = {"w": np.r_[level, rng.normal(size=3)], "zav": np.c_[move, rng.normal(size=(n, 3))],
                   "za": rng.normal(size=(n, 4)), "zv": np.c_[np.full(n, level), pose]}
            lat["zv"][:, 0] += 0.01 * rng.normal(size=n)
            rec = ClipRecord(f"s{s}_{j}", "", f"s{s}", "neutral", 1, str(j), n, "test")
            codes.append(ClipCode(rec, {"audio": np.zeros(2), "visual": np.zeros(2)}, lat, frames=np.arange(n),
                                  fa=rng.normal(size=(n, 2)), fv=np.c_[move, pose[:, 0]], truth=truth))
    ev = Evaluator.__new__(Evaluator)
    ev.opt, ev.progress = EvalOptions(), lambda *a: None
    m = ev.factor_matrix(codes, [dis.factor("articulation"), dis.factor("head_pose")])["matrix"]
    assert m["zav"]["articulation"] > 0.9 and m["zv"]["articulation"] < 0.1 and m["w"]["articulation"] == 0.0
    assert m["zv"]["head_pose"] > 0.9 and max(m[k]["head_pose"] for k in ("w", "zav", "za")) < 0.1
    assert dis.factor("head_pose").keys == ("head_yaw", "head_pitch", "head_roll")


# ------------------------------------------------------------------------------------------ end to end
SYNTH_SEED = 5
# (speaker, emotion, level, sentence); speaker 3 is the test split, speaker 2 validation
CLIPS = [(s, e, lv, j) for s in range(4) for (e, lv, j) in
         (("neutral", 1, 1), ("happy", 3, 2), ("angry", 3, 1), ("sad", 2, 2))]
SPLIT = {0: "train", 1: "train", 2: "validation", 3: "test"}


def _truth(tl) -> dict[str, np.ndarray]:
    from avmdvae.synth.factors import VOICED_THRESHOLD

    voiced = tl.at_frames(tl.voice) >= VOICED_THRESHOLD
    return {"jaw": tl.at_frames(tl.jaw), "lip_width": tl.at_frames(tl.lip),
            "f0": np.where(voiced, tl.at_frames(tl.f0), 0.0), "blink": tl.blink, "head_yaw": tl.head_yaw,
            "head_pitch": tl.head_pitch, "head_roll": tl.head_roll, "head_x": tl.head_x, "head_y": tl.head_y,
            "head_scale": tl.head_scale}


@pytest.fixture(scope="module")
def synth_env(tmp_path_factory):
    """A 16-clip synthetic corpus with ground truth and source audio, tiny VQ-VAEs, MDVAE and DSAEs."""
    from avmdvae import audio as audio_mod
    from avmdvae.synth.factors import (
        STREAM_RENDER,
        STREAM_SPEECH,
        ClipSpec,
        make_sentence,
        make_speaker,
        make_timeline,
    )
    from avmdvae.synth.render import render_clip
    from avmdvae.synth.speech import synthesize
    from avmdvae.training.config import resolve
    from avmdvae.training.loop import RunOptions, train
    from avmdvae.training.tasks import DSAETask, MDVAETask, VQVAETask

    root = tmp_path_factory.mktemp("eval")
    params = PreprocessParams(detector="none")
    w = CorpusWriter(root / "corpus", params)
    for s, emo, lv, j in CLIPS:
        spk = make_speaker(SYNTH_SEED, s)
        spec = ClipSpec(s, emo, lv, j)
        tl = make_timeline(SYNTH_SEED, spec, spk, make_sentence(SYNTH_SEED, j))
        faces = render_clip(spk, tl, 64, spec.rng(SYNTH_SEED, STREAM_RENDER))
        wave = synthesize(tl, spk, spec.rng(SYNTH_SEED, STREAM_SPEECH))
        src = root / "src" / f"s{s}_{emo}_{j}.wav"
        media.write_audio(src, wave, SAMPLE_RATE)
        power = audio_mod.power_spectrogram(torch.from_numpy(wave), n_frames=len(faces)).numpy()
        truth = {"speaker": np.array(f"s{s}"), "emotion": np.array(emo), "intensity": np.array(lv),
                 "sentence": np.array(j), **_truth(tl)}
        cid = src.stem
        w.write_clip(ClipRecord(cid, str(src), f"s{s}", emo, lv, str(j), len(faces), SPLIT[s]),
                     faces, power, truth)
    w.rebuild_index()
    corpus = root / "corpus"
    quiet = RunOptions(device="cpu", progress=False, tensorboard=False)
    vq = {}
    for m in ("audio", "visual"):
        vq[m] = root / f"vq-{m}"
        cfg = resolve("vqvae", m, TINY / f"vqvae-{m}.yaml", ["train.epochs=2"])
        train(VQVAETask(corpus, m, cfg), vq[m], quiet)
    run = root / "mdvae"
    cfg = resolve("mdvae", None, TINY / "mdvae.yaml", [])
    train(MDVAETask(corpus, vq["audio"], vq["visual"], cfg), run, quiet)
    dsae = {}
    for m in ("audio", "visual"):
        dsae[m] = root / f"dsae-{m}"
        train(DSAETask(corpus, m, vq[m], resolve("dsae", m, TINY / f"dsae-{m}.yaml", [])), dsae[m], quiet)
    return {"root": root, "corpus": corpus, "run": run, "dsae": dsae}


@pytest.mark.slow  # ~1-3 min on a 2-core machine (fixture training + PESQ on 4 test clips)
def test_eval_cli_writes_a_complete_report(synth_env, tmp_path):
    out = tmp_path / "report"
    e = synth_env
    r = CliRunner().invoke(app, [
        "eval", str(e["run"]), str(e["corpus"]), "-o", str(out), "--quiet",
        "--dsae-audio", str(e["dsae"]["audio"]), "--dsae-visual", str(e["dsae"]["visual"]),
        "--draws", "2", "--ks", "1,2", "--swap-pairs", "3", "--gl-iters", "4", "--max-test-clips", "2",
        "--noise", "audio:white:5", "--noise", "visual:gaussian:0.1", "--noise", "visual:occlude:mouth",
    ])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["skipped"] == {}
    for f in ("report.md", "resynth.png", "emotion_learning_curve.png", "factor_matrix.png",
              "swap_scores.png", "denoise_audio.png", "denoise_visual.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    rs = rep["resynth"]
    assert rs["clips"] == 2 and rs["reference_audio"] == ["source media"] and rs["split"] == "test"
    assert set(rs["systems"]) == {"spectrogram (no model)", "VQ-VAE", "VQ-MDVAE", "VQ-DSAE-audio",
                                  "VQ-DSAE-visual"}
    assert 0 < rs["systems"]["VQ-MDVAE"]["ssim"]["mean"] <= 1
    assert rs["systems"]["spectrogram (no model)"]["stoi_source_phase"]["mean"] > 0.99  # source phase = exact
    assert {"mean", "std", "median", "n"} <= set(rs["systems"]["VQ-VAE"]["pesq_griffin_lim"])
    for system in ("VQ-VAE", "VQ-MDVAE", "VQ-DSAE-visual"):  # every face system: how much of the movement it renders
        assert {f"move_{k}_{b}" for k in ("along", "off") for b in M.FACE_BANDS} <= set(rs["systems"][system])
    assert np.isfinite(rs["systems"]["VQ-MDVAE"]["move_along_mouth"]["mean"])
    em = rep["emotion"]["targets"]
    assert set(em["emotion"]["representations"]) == {"VQ-MDVAE w", "VQ-DSAE-audio w", "VQ-DSAE-visual w",
                                                     "stage-1 features (time-pooled)"}
    curve = em["emotion"]["representations"]["VQ-MDVAE w"]
    assert [p["k"] for p in curve["points"]] == sorted({1, 2, curve["k_max"]}) + ["all"]  # up to what the data allows
    assert "majority_baseline" in curve and "balanced_accuracy" in curve["points"][0]
    d = rep["disentangle"]
    assert set(d["matrix"]) == {"w", "zav", "za", "zv", "stage-1"}
    assert set(d["factors"]) == set(dis.FACTOR_NAMES)
    assert set(d["swap"]["latents"]) == set(dis.LATENTS) and d["swap"]["pairs"] == 3
    assert set(d["summary"]) == set(dis.LATENTS)
    assert {"swap_score", "selectivity"} == set(d["summary"]["w"])
    dn = rep["denoise"]["conditions"]
    assert [c["noise"] for c in dn] == ["audio:white:5.0", "visual:gaussian:0.1", "visual:occlude:mouth"]
    expect = {"corrupted input", "VQ-MDVAE", "VQ-MDVAE (drop)", "VQ-VAE", "VQ-DSAE-audio"}
    assert set(dn[0]["systems"]) == expect
    assert dn[1]["systems"]["corrupted input"]["psnr"]["mean"] < 25  # sigma 0.1 -> ~20 dB
    # the grey box does not move: the occluded input renders none of the hidden mouth's movement
    assert dn[2]["systems"]["corrupted input"]["move_along_region"]["mean"] == 0
    assert np.isfinite(dn[2]["systems"]["VQ-MDVAE (drop)"]["move_along_region"]["mean"])
    assert dn[1]["systems"]["corrupted input"]["move_off_region"]["mean"] > 0.5  # pixel noise moves every frame
    md = (out / "report.md").read_text()
    assert "## Resynthesis" in md and "mouth: along / off" in md
    assert "## Disentanglement" in md and "![factor_matrix.png]" in md


@pytest.mark.slow  # shares the trained fixture
def test_eval_errors_are_one_line(synth_env, tmp_path):
    e = synth_env
    out = str(tmp_path)
    r = CliRunner().invoke(app, ["eval", str(e["run"]), str(e["corpus"]), "-o", out, "--tasks", "bogus"])
    assert r.exit_code == 2 and "choose from" in r.output
    r = CliRunner().invoke(app, ["eval", str(e["dsae"]["audio"]), str(e["corpus"]), "-o", out, "-q"])
    assert r.exit_code == 2 and "MDVAE run" in r.output
    r = CliRunner().invoke(app, ["eval", str(e["run"]), str(e["corpus"]), "-o", str(tmp_path), "-q",
                                 "--noise", "audio:pink:3"])
    assert r.exit_code == 2 and "unknown noise" in r.output
