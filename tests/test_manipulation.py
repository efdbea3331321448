"""Manipulation: resynth / swap / interpolate / denoise with tiny models trained here on a synthetic
corpus (avmdvae.synth speakers and sentences -> mp4 -> preprocess -> train vqvae x2 + mdvae)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from avmdvae import media
from avmdvae.audio import _segments
from avmdvae.cli import app
from avmdvae.constants import SAMPLE_RATE
from avmdvae.corpus import Corpus, PreprocessParams
from avmdvae.errors import ConfigError, MediaError
from avmdvae.layouts import Discovery, SourceClip
from avmdvae.manipulation import model as model_module
from avmdvae.manipulation import noise as noise_mod
from avmdvae.manipulation import ops
from avmdvae.manipulation.model import AVModel, Clip
from avmdvae.manipulation.sheets import SheetRow, write_sheet
from avmdvae.manipulation.swap import combine, interpolate, stretch
from avmdvae.models.mdvae import Latents
from avmdvae.preprocess import run_batch
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
from avmdvae.training.tasks import MDVAETask, VQVAETask

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "tiny"
SEED = 3
N_SPEAKERS = 4
SENTENCES = (1, 2, 3)  # sentence 3 of every speaker is the validation split
QUIET = RunOptions(device="cpu", progress=False, tensorboard=False)


@dataclass
class Env:
    root: Path
    videos: dict[tuple[int, int], Path]  # (speaker, sentence) -> mp4
    corpus: Path
    run: Path
    model: AVModel


def _synth_video(path: Path, speaker: int, sentence: int) -> None:
    spk = make_speaker(SEED, speaker)
    spec = ClipSpec(speaker, "neutral", 1, sentence)
    tl = make_timeline(SEED, spec, spk, make_sentence(SEED, sentence))
    frames = render_clip(spk, tl, 64, spec.rng(SEED, STREAM_RENDER))
    audio = synthesize(tl, spk, spec.rng(SEED, STREAM_SPEECH))
    media.write_av(path, frames, audio)


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    # One torch thread: on these shared 2-core machines multithreaded tiny ops are ~30x slower when
    # the CPU is oversubscribed (spin-waiting), and tiny models gain nothing from threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _build_env(tmp_path_factory.mktemp("manip"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_env(env: Env) -> Iterator[Env]:
    """The same corpus with longer training (for the slow tests that judge what the model learnt)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # learned observation variances: with unit variances on these small synthetic features the
        # tiny MDVAE's posteriors collapse (every KL ~0, w unused) and no swap can change anything
        yield _build_env(
            env.root.parent / "manip-trained",
            videos_from=env,
            vq_epochs=12,
            md_epochs=60,
            md_sets=("model.learn_obs_var=true",),
        )
    finally:
        torch.set_num_threads(threads)


def _build_env(
    root: Path,
    videos_from: Env | None = None,
    vq_epochs: int = 4,
    md_epochs: int = 6,
    md_sets: tuple[str, ...] = (),
) -> Env:
    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    videos = {}
    clips = []
    for s in range(N_SPEAKERS):
        for j in SENTENCES:
            if videos_from is not None:
                p = videos_from.videos[(s, j)]
            else:
                p = root / "videos" / f"s{s}" / f"{j}.mp4"
                p.parent.mkdir(parents=True, exist_ok=True)
                _synth_video(p, s, j)
            videos[(s, j)] = p
            clips.append(
                SourceClip(f"s{s}_{j}", p, f"s{s}", "neutral", 1, split="validation" if j == 3 else "train")
            )
    params = PreprocessParams(detector="none")
    corpus = root / "corpus"
    report = run_batch(Discovery("folder", clips[0].video.parents[1], clips), corpus, params, workers=1)
    assert report.done == len(clips)
    runs = {}
    for m in ("audio", "visual"):
        cfg = resolve("vqvae", m, TINY / f"vqvae-{m}.yaml", [f"train.epochs={vq_epochs}"])
        runs[m] = root / f"vq-{m}"
        train(VQVAETask(corpus, m, cfg), runs[m], QUIET)
    cfg = resolve("mdvae", None, TINY / "mdvae.yaml", [f"train.epochs={md_epochs}", *md_sets])
    run = root / "mdvae"
    train(MDVAETask(corpus, runs["audio"], runs["visual"], cfg), run, QUIET)
    return Env(root, videos, corpus, run, AVModel.load(run))


def _probe_av(path: Path) -> tuple[int, float, float]:
    """(video frames, video seconds, audio seconds) of an mp4, by decoding it."""
    with av.open(str(path)) as c:
        assert c.streams.video and c.streams.audio
        n = sum(1 for _ in c.decode(c.streams.video[0]))
    a = media.read_audio(path)
    return n, n / 30.0, len(a) / SAMPLE_RATE


# ------------------------------------------------------------------------------------------- pure parts


def test_noise_specs_parse_and_fail_in_one_line() -> None:
    assert noise_mod.parse_noise("audio:white:5").value == 5.0
    assert noise_mod.parse_noise("visual:occlude:mouth").value == "mouth"
    for bad in (
        "audio:white",
        "audio:pink:3",
        "visual:gaussian:x",
        "visual:occlude:nose",
        "visual:gaussian:3",
    ):
        with pytest.raises(ConfigError) as e:
            noise_mod.parse_noise(bad)
        assert "\n" not in str(e.value)


def test_audio_noise_hits_the_requested_snr() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    speech = (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    for spec in ("audio:white:5", "audio:babble:0"):
        s = noise_mod.parse_noise(spec)
        voices = (
            [rng.standard_normal(8000).astype(np.float32) for _ in range(3)] if s.kind == "babble" else None
        )
        noisy = noise_mod.add_audio_noise(speech, s, rng, voices)
        snr = 10 * np.log10(np.mean(speech**2) / np.mean((noisy - speech) ** 2))
        assert abs(snr - float(s.value)) < 0.2


def test_synthetic_babble_is_speech_like_and_scaled() -> None:
    rng = np.random.default_rng(1)
    b = noise_mod.synthetic_babble(16000, rng, talkers=3)
    assert b.shape == (16000,) and np.isfinite(b).all() and b.std() > 0


def test_visual_corruptions() -> None:
    rng = np.random.default_rng(0)
    faces = np.full((3, 64, 64, 3), 100, np.uint8)
    noisy = noise_mod.corrupt_faces(faces, noise_mod.parse_noise("visual:gaussian:0.1"), rng)
    assert abs(noisy.astype(float).std() - 25.5) < 2
    occ = noise_mod.corrupt_faces(faces, noise_mod.parse_noise("visual:occlude:mouth"), rng)
    y0, y1, x0, x1 = noise_mod.region_box("mouth", 64)
    assert (occ[:, y0:y1, x0:x1] == noise_mod.OCCLUDE_GREY).all()
    assert (occ[:, :y0] == 100).all()  # only the region changes
    e0, e1, _, _ = noise_mod.region_box("eyes", 64)
    assert e1 <= y0  # eyes above the mouth


def test_stretch_and_loop_lengths() -> None:
    x = torch.arange(5.0).view(1, 5, 1)
    s = stretch(x, 9)
    assert s.shape == (1, 9, 1)
    torch.testing.assert_close(s[0, :, 0], torch.linspace(0, 4, 9))  # linear in latent space, ends kept
    assert stretch(x, 3)[0, :, 0].tolist() == [0.0, 2.0, 4.0]
    assert stretch(x, 3, "loop")[0, :, 0].tolist() == [0.0, 1.0, 2.0]  # truncated
    assert stretch(x, 12, "loop")[0, :, 0].tolist() == [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3]  # back and forth
    with pytest.raises(ConfigError):
        stretch(x, 3, "warp")


def test_combine_takes_named_factors_and_fits_length() -> None:
    def lat(n: int, v: float) -> Latents:
        return Latents(
            torch.full((1, 6), v),
            torch.full((1, n, 4), v),
            torch.full((1, n, 3), v),
            torch.full((1, n, 2), v),
        )

    a, b = lat(10, 0.0), lat(7, 1.0)
    out = combine(a, b, ["w", "zv"])
    assert out.w.eq(1).all() and out.zav.eq(0).all() and out.za.eq(0).all() and out.zv.eq(1).all()
    assert out.zv.shape == (1, 10, 2)
    with pytest.raises(ConfigError):
        combine(a, b, ["speaker"])
    mid = interpolate(a, b, ["w"], torch.linspace(0, 1, 10))
    assert mid.w.shape == (1, 10, 6)
    torch.testing.assert_close(mid.w[0, :, 0], torch.linspace(0, 1, 10))


def test_sheet_png(tmp_path: Path) -> None:
    faces = np.random.default_rng(0).integers(0, 255, (20, 64, 64, 3), dtype=np.uint8)
    power = np.random.default_rng(1).random((20, 513)).astype(np.float32)
    write_sheet(
        tmp_path / "s.png", [SheetRow("a", faces, power), SheetRow("b", faces, None)], n_frames=4, face_px=32
    )
    img = np.asarray(Image.open(tmp_path / "s.png"))
    assert img.shape[1] == 4 * 32 + 8 and img.shape[2] == 3
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left nothing behind


def test_segments_cover_with_overlap() -> None:
    segs = _segments(2000, 900, 16)
    assert segs[0][0] == 0 and segs[-1][1] == 2000
    assert all(b0 == a1 - 16 for (_, a1), (b0, _) in zip(segs, segs[1:], strict=False))


# --------------------------------------------------------------------------------------- with the model


def test_resynth_cli_writes_valid_mp4_with_audio(env: Env, tmp_path: Path) -> None:
    video = env.videos[(0, 1)]
    n_in = len(env.model.read(video).faces)
    out = tmp_path / "r.mp4"
    sheet = tmp_path / "r.png"
    res = CliRunner().invoke(
        app,
        [
            "resynth",
            str(video),
            "--model",
            str(env.run),
            "-o",
            str(out),
            "--sheet",
            str(sheet),
            "--side-by-side",
            "-q",
            "--gl-iters",
            "8",
        ],
    )
    assert res.exit_code == 0, res.output
    n, vs, as_ = _probe_av(out)
    assert n == n_in and abs(as_ - vs) < 0.03
    info = media.probe(out)
    assert (info.width, info.height) == (512, 256)  # input | reconstruction, each upscaled to 256
    assert sheet.is_file()
    out2 = tmp_path / "native.mp4"
    res = CliRunner().invoke(
        app,
        [
            "resynth",
            str(video),
            "-m",
            str(env.run),
            "-o",
            str(out2),
            "--native-size",
            "--phase",
            "source",
        ],
    )
    assert res.exit_code == 0, res.output
    # not a terminal (a log file): progress comes as plain lines, each step reaching its total
    assert f"decode: {n_in}/{n_in}" in res.output and "\x1b[" not in res.output
    assert (media.probe(out2).width, media.probe(out2).height) == (64, 64)
    assert _probe_av(out2)[0] == n_in


def test_source_phase_resynthesis_of_the_input_power_is_the_input(env: Env) -> None:
    clip = env.model.read(env.videos[(1, 1)])
    y = env.model.to_audio(clip.power, phase_from=clip.audio)
    a = clip.audio[: len(y)]
    # identical except the last ~80 samples that no analysis window reaches (audio.istft)
    assert np.abs(y[:-200] - a[: len(y) - 200]).max() < 1e-4


def test_swap_with_own_factors_is_the_resynthesis(env: Env) -> None:
    m = env.model
    clip = m.read(env.videos[(2, 1)])
    lat = m.encode(clip)
    ref = m.decode(lat)
    for factors in (["w"], ["zav"], ["za", "zv"], ["w", "zav", "za", "zv"]):
        out = m.decode(combine(lat, m.encode(clip), factors))
        assert np.array_equal(out.faces, ref.faces)
        np.testing.assert_allclose(out.power, ref.power, rtol=1e-5)


def test_swap_cli_different_lengths(env: Env, tmp_path: Path) -> None:
    lengths = {k: len(env.model.read(v).faces) for k, v in env.videos.items()}
    a = env.videos[(0, 1)]
    na = lengths[(0, 1)]
    b = next(env.videos[k] for k, n in lengths.items() if n != na)
    for length in ("stretch", "loop"):
        out = tmp_path / f"swap-{length}.mp4"
        res = CliRunner().invoke(
            app,
            [
                "swap",
                str(a),
                str(b),
                "--factor",
                "w",
                "--factor",
                "zav",
                "-m",
                str(env.run),
                "-o",
                str(out),
                "--length",
                length,
                "-q",
                "--gl-iters",
                "4",
            ],
        )
        assert res.exit_code == 0, res.output
        n, vs, as_ = _probe_av(out)
        assert n == na and abs(as_ - vs) < 0.03  # A's length whatever B's


def test_interpolate_cli_writes_grid_and_video(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "i.mp4"
    res = CliRunner().invoke(
        app,
        [
            "interpolate",
            str(env.videos[(0, 1)]),
            str(env.videos[(1, 2)]),
            "--factor",
            "w",
            "--steps",
            "4",
            "-m",
            str(env.run),
            "-o",
            str(out),
            "-q",
            "--gl-iters",
            "4",
        ],
    )
    assert res.exit_code == 0, res.output
    grid = np.asarray(Image.open(out.with_suffix(".png")))
    assert grid.shape[0] > 4 * 96 and _probe_av(out)[0] > 0


def test_interpolation_endpoints_are_a_and_swap(env: Env) -> None:
    m = env.model
    la, lb = m.encode(m.read(env.videos[(0, 1)])), m.encode(m.read(env.videos[(1, 1)]))
    d0 = m.decode(interpolate(la, lb, ["w"], 0.0))
    d1 = m.decode(interpolate(la, lb, ["w"], 1.0))
    assert np.array_equal(d0.faces, m.decode(la).faces)
    assert np.array_equal(d1.faces, m.decode(combine(la, lb, ["w"])).faces)


def test_long_clip_is_encoded_in_training_windows(env: Env) -> None:
    """A clip longer than T: latents for every frame, decoded to every frame; w pooled over its windows
    (the clip three times in a row has the w of the clip, to float rounding)."""
    m = env.model
    clip = m.read(env.videos[(3, 1)])
    long = Clip(*(np.concatenate([x] * 3) for x in (clip.faces, clip.power, clip.audio)), clip.fps)
    xa, xv = m.features(long)
    lat = m.encode_features(xa, xv)
    n = long.n_frames
    assert lat.w.shape[0] == 1 and lat.zav.shape[:2] == (1, n) and lat.zv.shape[:2] == (1, n)
    dec = m.decode(lat)
    assert dec.faces.shape == (n, 64, 64, 3) and np.isfinite(dec.power).all()
    one = m.encode(clip)
    torch.testing.assert_close(lat.w, one.w, atol=0.15 * float(one.w.abs().max()), rtol=0)


def test_decoding_centres_a_latent_over_the_whole_clip(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a centred z(a) (MDVAEDims.decoder_z), decoding in stage-1 chunks gives the clip's own
    decode: the MDVAE part is not cut into chunks, each with its own mean."""
    m = env.model
    monkeypatch.setattr(m.mdvae, "centred", ("za",))
    monkeypatch.setattr(model_module, "CHUNK", 16)
    clip = m.read(env.videos[(1, 2)])
    lat = m.encode(clip)
    assert clip.n_frames > 2 * 16
    fa, _ = m.mdvae.decode(lat)
    want = m.vq_audio.decode_frames(fa[0])
    np.testing.assert_allclose(m.decode(lat).power, want, rtol=1e-5, atol=1e-6 * float(want.max()))


def test_encoding_one_window_is_the_models_posterior_mean(env: Env) -> None:
    m = env.model
    clip = m.read(env.videos[(0, 2)])
    xa, xv = m.features(clip)
    t = m.seq_len
    zero = {k: torch.zeros(1, *s) for k, s in m.mdvae.noise_shapes(t).items()}
    out = m.mdvae(torch.from_numpy(xa[None, :t]), torch.from_numpy(xv[None, :t]), noise=zero)
    ours = m.encode_features(xa[:t], xv[:t])
    for name, z in zip(("w", "zav", "za", "zv"), ours, strict=True):
        torch.testing.assert_close(z, out.posterior[name][0], atol=1e-5, rtol=1e-5)


def test_denoise_improves_the_corrupted_modality(env: Env, tmp_path: Path) -> None:
    m = env.model
    gains = {"visual:gaussian:0.3": [], "audio:white:-5": []}
    for (_, j), video in env.videos.items():
        if j != 3:
            continue  # held-out clips
        for spec, g in gains.items():
            res = ops.denoise(
                m,
                video,
                tmp_path / "d.mp4",
                add_noise=spec,
                opts=ops.OutputOptions(native_size=True, gl_iters=4),
            )
            mod = spec.split(":")[0]
            key, sign = ("psnr", 1) if mod == "visual" else ("lsd_db", -1)
            g.append(sign * (res.metrics[mod]["after"][key] - res.metrics[mod]["before"][key]))
    for spec, g in gains.items():
        assert np.mean(g) > 0, (spec, g)


def test_denoise_cli_drop_and_metrics(env: Env, tmp_path: Path) -> None:
    out, js = tmp_path / "d.mp4", tmp_path / "m.json"
    res = CliRunner().invoke(
        app,
        [
            "denoise",
            str(env.videos[(1, 3)]),
            "-m",
            str(env.run),
            "-o",
            str(out),
            "--drop",
            "audio",
            "--metrics",
            str(js),
            "-q",
            "--gl-iters",
            "4",
        ],
    )
    assert res.exit_code == 0, res.output
    import json

    metrics = json.loads(js.read_text())
    assert "after" in metrics["audio"] and "before" not in metrics["audio"]
    assert _probe_av(out)[0] > 0


def test_one_line_errors(env: Env, tmp_path: Path) -> None:
    runner = CliRunner()
    silent = tmp_path / "silent.mp4"
    media.write_av(silent, np.zeros((10, 64, 64, 3), np.uint8), None)
    cases = [
        (
            ["resynth", str(env.videos[(0, 1)]), "-m", str(tmp_path / "nope"), "-o", str(tmp_path / "o.mp4")],
            "not found",
        ),
        (
            ["resynth", str(tmp_path / "missing.mp4"), "-m", str(env.run), "-o", str(tmp_path / "o.mp4")],
            "not found",
        ),
        (["resynth", str(silent), "-m", str(env.run), "-o", str(tmp_path / "o.mp4")], "no audio"),
        (
            [
                "swap",
                str(silent),
                str(silent),
                "-f",
                "speaker",
                "-m",
                str(env.run),
                "-o",
                str(tmp_path / "o.mp4"),
            ],
            "unknown factor",
        ),
        (
            [
                "denoise",
                str(silent),
                "-m",
                str(env.run),
                "-o",
                str(tmp_path / "o.mp4"),
                "--add-noise",
                "audio:pink:1",
            ],
            "unknown noise",
        ),
        (
            [
                "resynth",
                str(env.videos[(0, 1)]),
                "-m",
                str(env.root / "vq-audio"),
                "-o",
                str(tmp_path / "o.mp4"),
            ],
            "MDVAE run",
        ),
        (["resynth", str(env.videos[(0, 1)]), "-m", str(env.run), "-o", str(tmp_path / "o.avi")], ".mp4"),
    ]
    for args, needle in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "o.mp4").exists()
    with pytest.raises(ConfigError, match="fps"):
        env.model.clip_from_arrays(
            np.zeros((4, 64, 64, 3), np.uint8), np.ones((4, 513), np.float32), fps=25.0
        )


def test_clip_from_arrays_matches_read(env: Env) -> None:
    clip = env.model.read(env.videos[(2, 2)])
    again = env.model.clip_from_arrays(clip.faces, audio=clip.audio)
    np.testing.assert_allclose(again.power, clip.power, rtol=1e-4, atol=1e-6)
    with pytest.raises(MediaError):
        env.model.read(env.root)


@pytest.mark.slow
def test_swap_w_moves_speaker_towards_b_and_keeps_a_articulation(trained_env: Env) -> None:
    """A speaker probe (logistic regression on per-clip mean stage-1 features of the training corpus,
    with speaker ground truth) judges the outputs: swapping w makes B's speaker more likely; the
    articulation (the time-varying part of the decoded features) stays A's rather than B's."""
    from sklearn.linear_model import LogisticRegression

    env = trained_env
    m = env.model
    corpus = Corpus.open(env.corpus)

    def clip_feature(faces: np.ndarray, power: np.ndarray) -> np.ndarray:
        xa, xv = m.features(Clip(faces, power, np.zeros(1, np.float32), m.fps))
        return np.concatenate([xa.mean(0), xv.mean(0)])

    X, y = [], []
    for rec in corpus.clips:
        faces, power = np.asarray(corpus.faces(rec.clip_id)), np.asarray(corpus.spec(rec.clip_id))
        for a in range(0, rec.n_frames - 15, 15):  # several 0.5 s pieces per clip
            X.append(clip_feature(faces[a : a + 15], power[a : a + 15]))
            y.append(int(rec.speaker[1:]))
    probe = LogisticRegression(max_iter=2000).fit(np.array(X), np.array(y))

    def dynamics(lat: Latents) -> np.ndarray:
        """Time-varying part of the decoded (continuous, pre-codebook) features of both modalities:
        (T, Da + Dv) minus its time mean, which holds the static (w) part. The tiny 16-code VQ-VAEs
        quantise these small movements away, so articulation is judged before the codebook."""
        fa, fv = m.mdvae.decode(lat)
        f = torch.cat([fa[0], fv[0]], -1).numpy()
        return f - f.mean(0)

    moved, kept = [], []
    for sa, sb in ((0, 1), (1, 2), (2, 3), (3, 0)):
        ca, cb = m.read(env.videos[(sa, 1)]), m.read(env.videos[(sb, 2)])
        la, lb = m.encode(ca), m.encode(cb)
        rec, sw = m.decode(la), m.decode(combine(la, lb, ["w"]))
        p_rec = probe.predict_proba(clip_feature(rec.faces, rec.power)[None])[0, sb]
        p_sw = probe.predict_proba(clip_feature(sw.faces, sw.power)[None])[0, sb]
        moved.append(p_sw - p_rec)
        # articulation: the time-varying part of the output is A's, not B's dynamics on A's timeline
        d_sw = dynamics(combine(la, lb, ["w"]))
        d_a, d_b = dynamics(la), dynamics(combine(la, lb, ["zav", "za", "zv"]))
        kept.append(np.linalg.norm(d_sw - d_b) - np.linalg.norm(d_sw - d_a))
    assert np.mean(moved) > 0, moved
    assert np.mean(kept) > 0, kept
