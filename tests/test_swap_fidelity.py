"""Swap fidelity against the counterfactual (avmdvae.evaluation.swap) and the media factor estimators."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from avmdvae import audio as audio_mod
from avmdvae.evaluation import estimators as E
from avmdvae.evaluation import swap as S
from avmdvae.face import FaceCropper
from avmdvae.synth import ClipSpec
from avmdvae.synth.counterfactual import counterfactual_audio, counterfactual_clip

SEED, SIZE = 0, 96
A, B = ClipSpec(0, "neutral", 1, 2), ClipSpec(1, "sad", 3, 2)  # different speakers and lengths


def _media(clip) -> S.Media:
    """Identity 'stage 1': the rendered frames and the power spectrogram of the audio."""
    power = audio_mod.power_spectrogram(torch.from_numpy(clip.audio), n_frames=len(clip.frames)).numpy()
    return S.Media(clip.frames, power)


@pytest.fixture(scope="module")
def media() -> dict[str, S.Media]:
    out = {"none": _media(counterfactual_clip(SEED, A, B, [], SIZE))}
    for latent in S.SWAP_LATENTS:
        out[latent] = _media(counterfactual_clip(SEED, A, B, [latent], SIZE))
    return out


def test_fidelity_formula() -> None:
    assert S.fidelity(0.0, 2.0) == 1.0
    assert S.fidelity(2.0, 2.0) == 0.0
    assert S.fidelity(1.0, 2.0) == 0.5
    assert S.fidelity(10.0, 2.0) == -1.0  # clipped
    assert np.isnan(S.fidelity(1.0, 0.0))


def test_perfect_swap_scores_one_no_op_zero_and_copying_b_below_one(media) -> None:
    r = media["none"]  # a perfect resynthesis of A
    for latent in S.SWAP_LATENTS:
        c = media[latent]
        perfect = S.pair_scores(c, r, c, latent, media["all"])
        no_op = S.pair_scores(r, r, c, latent, media["all"])
        copy_b = S.pair_scores(media["all"], r, c, latent, media["all"])
        assert set(perfect["fidelity"]) == set(S.affected(latent)), latent
        for m in S.affected(latent):
            assert perfect["fidelity"][m] == 1.0, (latent, m)
            assert no_op["fidelity"][m] == 0.0, (latent, m)
            if latent == "all":
                assert copy_b["fidelity"][m] == 1.0
            else:
                assert copy_b["fidelity"][m] < 1.0, (latent, m)
        # the modality the latent should leave alone: untouched by the perfect swap, moved by copying B
        for m, v in perfect["leakage"].items():
            assert v == 0.0 and copy_b["leakage"][m] == 1.0, (latent, m)


def test_decomposition_splits_a_swap_into_progress_and_other_change(media) -> None:
    r, c = media["none"], media["zv"]  # z(v): B's blinks and head motion on A's face
    assert S.decompose("visual", c, r, c) == (1.0, 0.0)
    assert S.decompose("visual", r, r, c) == (0.0, 0.0)
    assert all(np.isnan(S.decompose("visual", c, r, r)))  # nothing to measure when c is r
    # half way to c: progress 1/2, nothing else
    half = S.Media(((r.faces.astype(np.float64) + c.faces) / 2).round().astype(np.uint8), r.power)
    along, off = S.decompose("visual", half, r, c)
    assert abs(along - 0.5) < 0.02 and off < 0.01
    wrong = media["all"]  # copying B: B's head motion, and B's face besides
    along, off = S.decompose("visual", wrong, r, c)
    assert off > 1.0
    # for faces, fidelity = 1 - (1 - along)^2 - off exactly (d is the face MSE)
    n = min(len(wrong.faces), len(c.faces))
    fid = S.fidelity(S.face_distance(wrong.faces[:n], c.faces[:n]), S.face_distance(r.faces[:n], c.faces[:n]))
    assert fid == pytest.approx(max(-1.0, 1 - (1 - along) ** 2 - off), abs=1e-9)
    # audio: dB of power; a swap that leaves the audio alone makes no progress there
    assert S.decompose("audio", r, r, media["za"]) == (0.0, 0.0)
    assert S.decompose("audio", media["za"], r, media["za"])[0] == pytest.approx(1.0)


def test_summary_keys_and_means(media) -> None:
    r = media["none"]
    rows = {latent: [S.pair_scores(media[latent], r, media[latent], latent, media["all"])] * 2
            for latent in S.SWAP_LATENTS}
    s = S.summarise(rows)
    assert set(s["swap_fidelity"]) == set(S.SWAP_LATENTS)
    for latent, v in s["swap_fidelity"].items():
        assert set(v) == {"audio", "visual", "mean"} and v["mean"] == 1.0, latent
    assert np.isnan(s["swap_fidelity"]["za"]["visual"]) and np.isnan(s["swap_fidelity"]["zv"]["audio"])
    assert s["leakage"]["za"]["visual"]["mean"] == 0.0
    assert s["decomposition"]["zv"] == {"visual": {"along": 1.0, "off": 0.0}}
    assert set(s["decomposition"]["all"]) == {"audio", "visual"}
    json.dumps(s, allow_nan=True)


def test_markdown_section(media) -> None:
    r = media["none"]
    rows = {latent: [S.pair_scores(r, r, media[latent], latent, media["all"])] for latent in S.SWAP_LATENTS}
    md = S.markdown({"pairs": 1, **S.summarise(rows)})
    assert "Swap fidelity" in md and "| zav |" in md
    assert "| zv | visual | 0.000 | 0.000 |" in md  # a no-op: no progress, nothing else changed


def _latents(n: int, seed: int):
    from avmdvae.models.mdvae import Latents

    g = torch.Generator().manual_seed(seed)
    return Latents(torch.randn(1, 6, generator=g), *(torch.randn(1, n, d, generator=g) for d in (4, 3, 2)))


def test_code_shift_finds_the_latent_the_counterfactual_moved() -> None:
    from avmdvae.manipulation.swap import combine

    la, lb = _latents(20, 0), _latents(27, 1)  # B longer: its code is fitted to A's length
    ideal = S.code_shift(la, lb, combine(la, lb, ["zv"]))
    assert ideal["zv"]["moved"] == pytest.approx(1.0) and ideal["zv"]["resid"] == pytest.approx(0.0, abs=1e-12)
    for x in ("w", "zav", "za"):
        assert ideal[x]["moved"] == pytest.approx(0.0, abs=1e-12) and ideal[x]["resid"] == pytest.approx(0.0, abs=1e-12)
    # c's code half way to B's in w, and off the line in zav
    off = la._replace(w=(la.w + lb.w) / 2, zav=la.zav + torch.randn(1, 20, 4))
    sh = S.code_shift(la, lb, off)
    assert sh["w"]["moved"] == pytest.approx(0.5) and sh["zav"]["resid"] > 0.1
    # a level change is invisible to a latent the decoders read centred
    level = la._replace(za=la.za + 3.0)
    assert S.code_shift(la, lb, level)["za"]["moved"] != pytest.approx(0.0)
    assert S.code_shift(la, lb, level, centred=("za",))["za"]["moved"] == pytest.approx(0.0, abs=1e-6)
    s = S.summarise_code({"zv": [sh, ideal, sh]})  # medians over pairs
    assert s["zv"]["w"]["moved"] == pytest.approx(0.5) and s["zv"]["zv"]["moved"] == pytest.approx(0.0, abs=1e-12)
    md = S.markdown({"pairs": 3, "swap_fidelity": {}, "code_shift": s})
    assert "| zv | 0.500 / 0.000 |" in md and "c's code" in md


def test_clip_spec_from_truth_and_synth_source(tmp_path) -> None:
    truth = {"speaker": np.array("W002"), "emotion": np.array("sad"), "intensity": np.array(3),
             "sentence": np.array(2)}
    assert S.clip_spec(truth) == B
    assert S.clip_spec(truth, ["M001", "W002"]) == B
    (tmp_path / "synth.json").write_text(json.dumps({"options": {"seed": 3, "size": 96}}))
    video = tmp_path / "W002" / "video" / "front" / "sad" / "level_3" / "002.mp4"
    root, desc = S.synth_source(video)
    assert root == tmp_path and desc["options"]["seed"] == 3
    assert S.synth_source(tmp_path.parent / "elsewhere.mp4") is None


def test_pairs_are_of_different_speakers_and_deterministic() -> None:
    spk = ["a", "a", "b", "b", "c"]
    p = S.pick_pairs(list(range(5)), spk, 6, seed=0)
    assert len(p) == 6 and all(spk[i] != spk[j] for i, j in p)
    assert p == S.pick_pairs(list(range(5)), spk, 6, seed=0)
    assert S.pick_pairs(list(range(3)), ["a"] * 3, 4, 0) == []


# ------------------------------------------------------------------------------------------ estimators
def test_pitch_track_finds_the_fundamental_of_a_harmonic_spectrum() -> None:
    sr, n = 16000, 16000
    t = np.arange(n) / sr
    for f0 in (95.0, 140.0, 220.0, 330.0):
        x = sum((0.8 ** h) * np.sin(2 * np.pi * h * f0 * t) for h in range(1, 12)).astype(np.float32)
        power = audio_mod.power_spectrogram(torch.from_numpy(x), n_frames=30).numpy()
        st, sal = E.pitch_track(power[5:-5])
        assert np.median(np.abs(st - 12 * np.log2(f0))) < 0.3, f0
        st2, _ = E.pitch_track(power[5:-5], centre=float(12 * np.log2(f0)) + 5)
        assert np.median(np.abs(st2 - 12 * np.log2(f0))) < 0.3, f0


def test_estimators_fit_estimate_and_thresholds() -> None:
    cropper = FaceCropper(detector="none")
    clips = list(E.fresh_clips(SEED, 2, 4, SIZE, cropper, 30.0, first_sentence=500))
    assert all(c.faces.shape[1:] == (64, 64, 3) and len(c.power) == len(c.faces) for c in clips)
    est = E.FactorEstimators.fit(clips[:3], clips[3:], epochs=1)
    assert set(E.VISUAL_KEYS) | {"f0", "speaker"} <= set(est.quality)
    for q in est.quality.values():
        assert q["usable"] == (q["value"] >= (E.ACC_MIN if q["metric"] == "accuracy" else E.R2_MIN))
    c = clips[3]
    full = est.estimate(c.faces, c.power, only_usable=False)
    assert full["articulation"].shape == (len(c.faces), 2) and full["head_pose"].shape == (len(c.faces), 3)
    assert full["f0"].shape == (len(c.faces), 1) and set(full["speaker"]) == {"M001", "W002"}
    # only usable estimators: a key below the threshold is NaN, a factor with none is left out
    est.quality = {k: {**q, "value": 0.0} for k, q in est.quality.items()}
    assert est.estimate(c.faces, c.power) == {}
    est.quality["blink"]["value"] = 0.95
    got = est.estimate(c.faces, c.power)
    assert set(got) == {"blink"} and np.isfinite(got["blink"]).all()
    # stored as tensors and plain values: loads with weights_only=True and estimates the same
    buf = io.BytesIO()
    torch.save(est.to_state(), buf)
    buf.seek(0)
    back = E.FactorEstimators.from_state(torch.load(buf, weights_only=True))
    again = back.estimate(c.faces, c.power, only_usable=False)
    for name, v in est.estimate(c.faces, c.power, only_usable=False).items():
        if isinstance(v, dict):
            assert v == pytest.approx(again[name]), name
        else:
            np.testing.assert_allclose(v, again[name], rtol=1e-6, atol=1e-9, err_msg=name)


def test_linear_classifier_matches_the_sklearn_pipeline_it_replaces() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 5)) * [1, 10, 0.1, 3, 1] + [0, 5, 1, -2, 0]
    for y in (x[:, 0] > 0, np.array(["a", "b", "c"])[(x[:, 0] > 0).astype(int) + (x[:, 3] > -2)]):
        ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.5)).fit(x, y)
        mine = E.LinearClassifier.fit(x, y, c=0.5)
        np.testing.assert_allclose(mine.predict_proba(x), ref.predict_proba(x), atol=1e-9)
        assert (mine.predict(x) == ref.predict(x)).all()


# the planted pickle below is written with pickle.dumps (protocol 4), which torch.load warns about before refusing it
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_estimator_cache_roundtrip(tmp_path, monkeypatch) -> None:
    calls = []

    def fake_fit(train, test, seed=0, progress=None):
        calls.append(len(train))
        k = len(E.VISUAL_KEYS)
        voicing = E.LinearClassifier(np.zeros(3), np.ones(3), np.ones((1, 3)), np.zeros(1), np.array([False, True]))
        return E.FactorEstimators(cnn_state=E._FaceCNN(k).state_dict(), y_mean=np.zeros(k), y_std=np.ones(k),
                                  voicing=voicing, info={"version": E.ESTIMATOR_VERSION})

    monkeypatch.setattr(E.FactorEstimators, "fit", staticmethod(fake_fit))
    opts = {"seed": 0, "size": SIZE, "n_speakers": 2, "n_sentences": 1, "generator_version": 1}
    params = {"fps": 30.0, "detector": "none", "face_size": 64}
    cropper = FaceCropper(detector="none")
    a = E.load_or_fit(opts, params, cropper, n_train=1, n_test=1, cache=tmp_path)
    b = E.load_or_fit(opts, params, cropper, n_train=1, n_test=1, cache=tmp_path)
    assert calls == [1] and isinstance(b, E.FactorEstimators) and a.info["cache"].startswith(str(tmp_path))
    # a planted file that would run code when unpickled is refused and replaced, never executed
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    cached = Path(a.info["cache"])
    cached.write_bytes(pickle.dumps(Evil()))
    E.load_or_fit(opts, params, cropper, n_train=1, n_test=1, cache=tmp_path)
    assert calls == [1, 1] and not marker.exists()


class _Identity:
    """A stand-in stage-1 audio VQ-VAE that passes spectra through unchanged."""

    def encode_frames(self, p: np.ndarray) -> np.ndarray:
        return np.asarray(p, np.float32)

    def decode_frames(self, f: np.ndarray) -> np.ndarray:
        return np.asarray(f, np.float32)


def test_expected_power_averages_draws_in_db() -> None:
    from types import SimpleNamespace

    model = SimpleNamespace(vq_audio=_Identity())
    p = np.random.default_rng(0).uniform(1e-6, 1.0, (5, 7)).astype(np.float32)
    np.testing.assert_allclose(S.expected_power(model, [p, p]), p, rtol=1e-4)
    np.testing.assert_allclose(S.expected_power(model, [p, 4 * p]), 2 * p, rtol=1e-4)  # the geometric mean


def test_averaged_target_lets_a_noise_free_swap_score_what_one_draw_denies() -> None:
    """An ideal z(a) swap that knows the factors but not the noise (an average of 32 other draws) is scored
    against one draw and against the average of NOISE_DRAWS: the noise caps the first, much less the second."""
    from types import SimpleNamespace

    model = SimpleNamespace(vq_audio=_Identity())

    def power(latents: list[str], k: int) -> np.ndarray:
        audio = counterfactual_audio(SEED, A, B, latents, k)
        return audio_mod.power_spectrogram(torch.from_numpy(audio)).numpy()

    def avg(latents: list[str], ks: range) -> S.Media:
        return S.Media(np.zeros((1, 1, 1, 3), np.uint8), S.expected_power(model, [power(latents, k) for k in ks]))

    one = S.Media(np.zeros((1, 1, 1, 3), np.uint8), power(["za"], 0))
    k = S.NOISE_DRAWS
    target, ideal, r = avg(["za"], range(1, k + 1)), avg(["za"], range(k + 1, k + 33)), avg([], range(1, k + 1))
    capped = S.pair_scores(ideal, r, one, "za")["fidelity"]["audio"]
    fair = S.pair_scores(ideal, r, target, "za")["fidelity"]["audio"]
    assert capped < 0.6 and fair > capped + 0.2, (capped, fair)


def test_report_writes_swap_fidelity_keys(media, tmp_path) -> None:
    from avmdvae.evaluation.report import write_report

    r = media["none"]
    rows = {latent: [S.pair_scores(media[latent], r, media[latent], latent, media["all"])]
            for latent in S.SWAP_LATENTS}
    write_report(tmp_path, {"swap": {"pairs": 1, **S.summarise(rows)}})
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["swap_fidelity"]["zav"]["audio"] == 1.0 and rep["swap_fidelity"]["zav"]["mean"] == 1.0
    assert rep["swap_fidelity"]["za"]["visual"] is None  # not a modality z(a) should change
    assert "Swap fidelity" in (tmp_path / "report.md").read_text()
    assert "swap_fidelity.png" in rep["plots"] and (tmp_path / "swap_fidelity.png").stat().st_size > 1000
    assert rep["swap"]["decomposition"]["zv"]["visual"] == {"along": 1.0, "off": 0.0}
    assert "swap_decomposition.png" in rep["plots"] and (tmp_path / "swap_decomposition.png").stat().st_size > 1000
    assert "swap_code_shift.png" not in rep["plots"]  # no code shift in these results


def test_report_plots_the_code_shift(tmp_path) -> None:
    from avmdvae.evaluation.report import write_report
    from avmdvae.manipulation.swap import combine

    la, lb = _latents(20, 0), _latents(24, 1)
    code = S.summarise_code({x: [S.code_shift(la, lb, combine(la, lb, [x]))] for x in ("w", "zav", "za", "zv")})
    write_report(tmp_path, {"swap": {"pairs": 1, "swap_fidelity": {}, "code_shift": code}})
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["swap"]["code_shift"]["za"]["za"]["moved"] == pytest.approx(1.0)
    assert rep["swap"]["code_shift"]["za"]["zv"]["moved"] == pytest.approx(0.0, abs=1e-9)
    assert "swap_code_shift.png" in rep["plots"] and (tmp_path / "swap_code_shift.png").stat().st_size > 1000
    md = (tmp_path / "report.md").read_text()
    assert "| za | 0.000 / 0.000 | 0.000 / 0.000 | 1.000 / 0.000 | 0.000 / 0.000 |" in md


# ------------------------------------------------------------------------------------------ the task
@pytest.mark.slow  # loads the shipped demo model; renders and crops 5 counterfactuals per pair
def test_swap_task_end_to_end(tmp_path) -> None:
    from pathlib import Path
    from types import SimpleNamespace

    from avmdvae.corpus import ClipRecord, Corpus, CorpusWriter, PreprocessParams
    from avmdvae.manipulation.model import AVModel
    from avmdvae.synth import make_clip
    from avmdvae.synth.generate import SynthOptions, clip_paths, corpus_description

    run = Path(__file__).resolve().parents[1] / "models" / "demo" / "mdvae"
    if not (run / "best.pt").is_file():
        pytest.skip("no shipped demo model")
    opts = SynthOptions(n_speakers=2, n_sentences=1, emotions=("neutral",), levels=(1,), size=SIZE)
    synth = tmp_path / "synth"
    synth.mkdir()
    (synth / "synth.json").write_text(json.dumps(corpus_description(opts)))
    params = PreprocessParams(detector="none")
    w = CorpusWriter(tmp_path / "corpus", params)
    cropper = FaceCropper(detector="none")
    for spk in range(2):
        for sen in (1, 2):
            spec = ClipSpec(spk, "neutral", 1, sen)
            clip = make_clip(SEED, spec, SIZE)
            m = E.media_clip(clip.frames, clip.audio, clip.truth, cropper, 30.0)
            video = clip_paths(synth, spec, str(clip.truth["speaker"]))[0]
            w.write_clip(ClipRecord(f"{spk}_{sen}", str(video), str(clip.truth["speaker"]), "neutral", 1, str(sen),
                                    len(m.faces), "test"), m.faces, m.power, clip.truth)
    w.rebuild_index()
    model = AVModel.load(run, device="cpu")
    ev = SimpleNamespace(model=model, corpus=Corpus.open(tmp_path / "corpus"),
                         opt=SimpleNamespace(swap_pairs=2, seed=0))
    res = S.run(ev, estimators=None)
    assert res["pairs"] == 2 and res["clips"] == 4
    fid = res["swap_fidelity"]
    assert set(fid) == set(S.SWAP_LATENTS)
    for latent, v in fid.items():
        for m in S.affected(latent):
            assert -1.0 <= v[m] <= 1.0, (latent, m)
    assert res["regeneration"]["face_mse"]["mean"] < 1e-6  # same renderer, no codec in this corpus
    assert set(res["leakage"]["za"]) == {"visual"} and set(res["leakage"]["zv"]) == {"audio"}
    # the ceiling: the model's own resynthesis of the counterfactual is nearer to it than A's resynthesis
    # when the swap changes the speaker (w, all)
    assert set(res["ceiling"]) == set(S.SWAP_LATENTS)
    assert res["ceiling"]["w"]["mean"] > 0 and res["ceiling"]["all"]["mean"] > 0
    # the audio target averages 8 noise draws; the scores against the corpus' own draw are kept beside it
    assert res["noise_draws"] == S.NOISE_DRAWS
    assert set(res["one_draw"]["swap_fidelity"]) == {"w", "zav", "za", "all"}
    assert res["one_draw"]["lsd_to_expected_db"]["mean"] > 1.0
    # where the counterfactual's change lands in the code: copying all of B moves w's code toward B's
    assert set(res["code_shift"]) == set(S.SWAP_LATENTS) and set(res["code_shift"]["zv"]) == {"w", "zav", "za", "zv"}
    assert res["code_shift"]["all"]["w"]["moved"] > 0.5
    assert set(res["hybrid"]) == {"a_with_c", "c_with_b"} and set(res["hybrid"]["a_with_c"]) == {"w", "zav", "za", "zv"}
    for latent, v in res["hybrid"]["a_with_c"].items():
        for m in S.affected(latent):
            assert -1.0 <= v[m] <= 1.0, (latent, m)
    assert "c with B's L" in S.markdown(res)
