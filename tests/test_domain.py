"""Inputs unlike the training data: stage-1 runs record their validation error, the domain check
compares an input's error with it and warns once; silent or too-short inputs are named; the decoded
sound gets the input's loudness back (issue 17)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from avmdvae import audio as audio_mod
from avmdvae import domain, media
from avmdvae.corpus import Corpus, PreprocessParams
from avmdvae.manipulation.model import AVModel, Clip
from avmdvae.training import checkpoint as ck
from avmdvae.training import load_run
from avmdvae.training.loop import RunOptions, train
from avmdvae.training.tasks import MDVAETask, VQVAETask
from tests.test_training import make_corpus, tiny_config

DATA = Path(__file__).parent / "data"
QUIET = RunOptions(device="cpu", progress=False, tensorboard=False)
FPS = 30.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> SimpleNamespace:
    """Audio and visual tiny VQ-VAEs trained long enough (30 epochs) to reconstruct their corpus."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("domain")
    corpus = make_corpus(root / "corpus")
    paths = {}
    for m in ("audio", "visual"):
        paths[m] = root / f"vq-{m}"
        train(VQVAETask(corpus, m, tiny_config("vqvae", m, "train.epochs=30")), paths[m], QUIET)
    yield SimpleNamespace(root=root, corpus=corpus, paths=paths)
    torch.set_num_threads(before)


def model_of(paths: dict[str, Path], seq_len: int = 8) -> SimpleNamespace:
    """What the domain check needs of an AVModel: the stage-1 models and the run's stage-1 references."""
    refs = {
        m: {"run": str(p), "checkpoint": str(p / ck.BEST), "sha256": ck.sha256_file(p / ck.BEST)}
        for m, p in paths.items()
    }
    run = SimpleNamespace(stage1=refs, checkpoint=Path(paths["visual"]).parent / "mdvae" / ck.BEST)
    return SimpleNamespace(
        run=run,
        vq_audio=load_run(paths["audio"]).model,
        vq_visual=load_run(paths["visual"]).model,
        seq_len=seq_len,
    )


def corpus_clip(corpus: Path) -> Clip:
    """The held-out test clip of the corpus, with a waveform made from its spectrogram."""
    c = Corpus.open(corpus)
    rec = c.split("test")[0]
    power = np.array(c.spec(rec.clip_id))
    wave = audio_mod.griffin_lim(torch.from_numpy(power), n_iter=4).numpy()
    return Clip(np.array(c.faces(rec.clip_id)), power, wave, FPS, f"{rec.clip_id}.mp4")


def astronaut_clip(n: int = 40) -> Clip:
    """Real-photo face crops (tests/data/astronaut.png) with a steady tone: not like the corpus."""
    img = Image.open(DATA / "astronaut.png").convert("RGB")
    w, h = img.size
    rng = np.random.default_rng(0)
    faces = []
    for _ in range(n):
        x, y = rng.integers(0, w // 4), rng.integers(0, h // 4)
        faces.append(np.asarray(img.crop((x, y, x + w // 2, y + h // 2)).resize((64, 64))))
    t = np.arange(audio_mod.num_samples_for(n, FPS)) / 16000
    wave = (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    power = audio_mod.power_spectrogram(torch.from_numpy(wave), n_frames=n).numpy()
    return Clip(np.stack(faces), power, wave, FPS, "astronaut.mp4")


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "avmdvae.domain"]


def test_stage1_runs_record_their_validation_error_and_corpus(runs):
    for m, path in runs.paths.items():
        ref = ck.load_checkpoint(path / ck.BEST)[domain.DOMAIN_KEY]
        assert "9 clips" in ref["corpus"] and "3 speakers" in ref["corpus"] and "64px faces" in ref["corpus"]
        stats = ref[m]
        assert stats["frames"] == 80 and stats["median"] > 0 and stats["p90"] >= stats["median"]
        assert stats["metric"] == domain.METRIC[m]
    visual = ck.load_checkpoint(runs.paths["visual"] / ck.BEST)[domain.DOMAIN_KEY]["visual"]
    assert visual["psnr_db"] == pytest.approx(10 * np.log10(1 / visual["median"]))


def test_inference_copies_keep_the_reference(runs, tmp_path):
    """slim_copy (how models/demo/ is made) keeps what the domain check needs."""
    ck.slim_copy(runs.paths["visual"] / ck.BEST, tmp_path / "slim.pt")
    kept = ck.load_checkpoint(tmp_path / "slim.pt")[domain.DOMAIN_KEY]
    assert kept == ck.load_checkpoint(runs.paths["visual"] / ck.BEST)[domain.DOMAIN_KEY]
    # a shipped copy names its corpus without the local folders; the reference itself is unchanged
    ck.slim_copy(runs.paths["visual"] / ck.BEST, tmp_path / "named.pt", corpus_description="the benchmark corpus")
    named = ck.load_checkpoint(tmp_path / "named.pt")[domain.DOMAIN_KEY]
    assert named == {**kept, "corpus": "the benchmark corpus"}


def test_out_of_domain_input_is_measured_and_warned_once(runs, caplog):
    model = model_of(runs.paths)
    caplog.set_level(logging.WARNING, logger="avmdvae.domain")
    same = domain.check_inputs(model, [corpus_clip(runs.corpus)])
    assert not same.out_of_domain and {c.modality for c in same.checks} == {"audio", "visual"}
    assert all(c.ratio < 1.5 for c in same.checks)
    assert warnings_of(caplog) == []
    other = domain.check_inputs(model, [astronaut_clip(), astronaut_clip()])
    assert {c.modality for c in other.out_of_domain} == {"audio", "visual"}
    assert all(c.ratio > domain.OUT_OF_DOMAIN_RATIO for c in other.out_of_domain)
    (line,) = warnings_of(caplog)  # once, for both clips and both modalities
    assert "\n" not in line and "unlike what the model was trained on (corpus: 9 clips" in line
    assert "PSNR" in line and "log-spectral distance" in line
    assert "avmdvae preprocess" in line and "avmdvae train" in line  # what to do
    # random-noise faces are out of the face model's domain too
    noise = astronaut_clip()
    noise.faces = np.random.default_rng(1).integers(0, 256, noise.faces.shape, dtype=np.uint8)
    assert "visual" in {c.modality for c in domain.check(model, [noise]).out_of_domain}


def test_runs_without_the_stored_error_use_their_corpus_or_say_the_check_was_skipped(runs, tmp_path, caplog):
    old = {}
    for m, path in runs.paths.items():  # stage-1 runs from before the reference was recorded
        old[m] = tmp_path / f"old-{m}"
        shutil.copytree(path, old[m])
        for name in (ck.BEST, ck.LAST):
            state = ck.load_checkpoint(old[m] / name)
            del state[domain.DOMAIN_KEY]
            ck.save_checkpoint(old[m] / name, state)
    model = model_of(old)
    caplog.set_level(logging.WARNING, logger="avmdvae.domain")
    result = domain.check(model, [astronaut_clip()])
    assert {c.modality for c in result.out_of_domain} == {"audio", "visual"} and not result.skipped
    assert (old["visual"] / domain.CACHE_FILE).is_file()  # computed once from the corpus, then cached
    stored = ck.load_checkpoint(runs.paths["visual"] / ck.BEST)[domain.DOMAIN_KEY]["visual"]["median"]
    assert domain.check(model, [astronaut_clip()]).checks[0].reference_error == pytest.approx(stored, rel=0.5)
    for m in old:  # and with the corpus gone: skipped, and said so
        (old[m] / domain.CACHE_FILE).unlink()
    moved = runs.root / "corpus-moved"
    shutil.move(runs.corpus, moved)
    try:
        result = domain.check_inputs(model, [astronaut_clip()])
    finally:
        shutil.move(moved, runs.corpus)
    assert not result.checks and set(result.skipped) == {"audio", "visual"}
    assert "is not available" in result.skipped["visual"]
    (line,) = warnings_of(caplog)
    assert line.startswith("note: could not check whether the input is like the training data")


def test_silent_and_too_short_inputs_are_named(runs, caplog):
    model = model_of(runs.paths, seq_len=30)
    caplog.set_level(logging.WARNING, logger="avmdvae.domain")
    clip = corpus_clip(runs.corpus)
    silent = Clip(clip.faces, np.zeros_like(clip.power), np.zeros_like(clip.audio), FPS, "/x/silent.mp4")
    result = domain.check_inputs(model, [silent])
    assert result.skipped == {"audio": domain.SILENT} and [c.modality for c in result.checks] == ["visual"]
    (line,) = warnings_of(caplog)  # 40 frames >= 30: long enough; the faces are in the domain
    assert "the sound of silent.mp4 is silent (peak below -80 dBFS)" in line and "\n" not in line
    short = Clip(clip.faces[:10], clip.power[:10], clip.audio[: audio_mod.num_samples_for(10, FPS)], FPS, "s.mp4")
    caplog.clear()
    domain.check_inputs(model, [short])
    assert any("s.mp4 has 10 frames, fewer than the model's window of 30 frames" in ln for ln in warnings_of(caplog))
    assert domain.audio_unscorable(silent) == "the clean sound is silent (peak below -80 dBFS)"
    assert "STOI needs at least 0.4 s" in domain.audio_unscorable(short)
    assert domain.audio_unscorable(clip) is None


def test_decoded_sound_gets_the_input_loudness_back_without_clipping():
    t = np.arange(16000) / 16000
    voice = (0.04 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    power = audio_mod.power_spectrogram(torch.from_numpy(voice)).numpy()
    quiet = power * 10 ** (-9 / 10)  # the decoded spectrum: 9 dB quieter
    fake = SimpleNamespace(fps=FPS, params=PreprocessParams())
    plain = AVModel.to_audio(fake, quiet, phase_from=voice)  # type: ignore[arg-type]
    assert 20 * np.log10(audio_mod.rms(plain) / audio_mod.rms(voice)) == pytest.approx(-9, abs=0.5)
    for phase in (voice, None):
        out = AVModel.to_audio(fake, quiet, phase_from=phase, n_iter=8, loudness_from=voice)  # type: ignore[arg-type]
        assert 20 * np.log10(audio_mod.rms(out) / audio_mod.rms(voice)) == pytest.approx(0, abs=0.5)
    wave = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    loud = (0.9 * np.sign(voice)).astype(np.float32)  # louder than the peak allows: limited, no clipping
    scaled, gain = audio_mod.match_loudness(wave, loud)
    assert np.max(np.abs(scaled)) == pytest.approx(audio_mod.PEAK, rel=1e-4) and gain > 1
    assert audio_mod.match_loudness(plain, np.zeros(10))[1] == 1.0  # silent input: left as decoded


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "avmdvae", *args, "--threads", "1", "-q"], env=env, text=True,
                          capture_output=True, timeout=300)


def test_manipulation_commands_warn_once_in_plain_words(runs, tmp_path):
    """resynth / swap / denoise through the CLI: one warning line for an out-of-domain input, none for an
    in-domain one; a silent input is named; STOI of a too-short clip is 'not computable', never nan."""
    md = runs.root / "mdvae"
    if not md.exists():
        train(MDVAETask(runs.corpus, runs.paths["audio"], runs.paths["visual"], tiny_config("mdvae")), md, QUIET)
    videos = {}
    for name, clip in (("same", corpus_clip(runs.corpus)), ("astro", astronaut_clip()), ("astro2", astronaut_clip(30))):
        videos[name] = tmp_path / f"{name}.mp4"
        media.write_av(videos[name], clip.faces, clip.audio)
    same = corpus_clip(runs.corpus)
    videos["silent"] = tmp_path / "silent.mp4"
    media.write_av(videos["silent"], same.faces, np.zeros_like(same.audio))
    videos["short"] = tmp_path / "short.mp4"
    media.write_av(videos["short"], same.faces[:6], same.audio[: audio_mod.num_samples_for(6, FPS)])

    def warnings(p: subprocess.CompletedProcess) -> list[str]:
        assert p.returncode == 0, p.stderr
        return [ln for ln in p.stderr.splitlines() if ln.startswith(("warning:", "note:"))]

    assert warnings(_cli("resynth", str(videos["same"]), "-m", str(md), "-o", str(tmp_path / "a.mp4"))) == []
    (line,) = warnings(_cli("resynth", str(videos["astro"]), "-m", str(md), "-o", str(tmp_path / "b.mp4")))
    assert line.startswith("warning: this input is unlike what the model was trained on")
    (line,) = warnings(_cli("swap", str(videos["astro"]), str(videos["astro2"]), "-f", "w", "-m", str(md),
                            "-o", str(tmp_path / "c.mp4")))
    assert "unlike what the model was trained on" in line
    (line,) = warnings(_cli("interpolate", str(videos["astro"]), str(videos["same"]), "-f", "w", "--steps", "2",
                            "-m", str(md), "-o", str(tmp_path / "i.mp4")))
    assert "unlike what the model was trained on" in line
    (line,) = warnings(_cli("resynth", str(videos["silent"]), "-m", str(md), "-o", str(tmp_path / "d.mp4")))
    assert "the sound of silent.mp4 is silent" in line
    p = _cli("denoise", str(videos["short"]), "-m", str(md), "-o", str(tmp_path / "e.mp4"), "--add-noise",
             "audio:white:10", "--metrics", str(tmp_path / "m.json"))
    lines = warnings(p)
    assert any("short.mp4 has 6 frames, fewer than the model's window of 8 frames" in ln for ln in lines)
    assert any("STOI and SI-SDR not computable: the clip is 0.20 s long" in ln for ln in lines)
    assert "nan" not in p.stdout.lower() and "NaN" not in (tmp_path / "m.json").read_text()
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert "stoi" not in metrics["audio"]["after"] and "0.4 s" in metrics["audio"]["not_computable"]["stoi"]


def test_the_shipped_demo_models_know_their_domain(runs, caplog):
    """models/demo/ (drawn synthetic faces): a real face is flagged; the reference is found without the
    demo's training corpus (stored in the checkpoints, or domain.json next to them)."""
    from avmdvae.demo import SHIPPED

    model = AVModel.load(SHIPPED / "mdvae")
    caplog.set_level(logging.WARNING, logger="avmdvae.domain")
    result = domain.check_inputs(model, [astronaut_clip()])
    assert result.skipped == {} and "benchmark corpus" in result.corpus
    assert "visual" in {c.modality for c in result.out_of_domain}
    (line,) = warnings_of(caplog)
    assert line.startswith("warning: this input is unlike what the model was trained on (the benchmark corpus")
