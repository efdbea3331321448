"""Preprocessing: per-clip pipeline, CLI, resumption, shards, layouts end to end, and bad inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from avmdvae import media
from avmdvae import preprocess as pp
from avmdvae.cli import app
from avmdvae.corpus import Corpus, PreprocessParams
from avmdvae.errors import AvmdvaeError
from avmdvae.layouts import discover

from ._mediagen import encode

runner = CliRunner()
SR = 16_000
FAST = PreprocessParams(detector="none")  # frames used as crops: no MTCNN, for bookkeeping tests


def face_frames(n: int, w: int = 160, h: int = 120, seed: int = 0) -> np.ndarray:
    """(n, h, w, 3) uint8: a drawn face (MTCNN finds it with p ~ 0.95) moving slowly, mouth moving."""
    rng = np.random.default_rng(seed)
    bg = tuple(int(x) for x in rng.integers(60, 140, 3))
    skin = (225, 190, 160)
    out = []
    for k in range(n):
        img = Image.new("RGB", (w, h), bg)
        d = ImageDraw.Draw(img)
        cx, cy, r = w / 2 + 8 * np.sin(2 * np.pi * k / 60), h / 2, h * 0.34
        d.ellipse([cx - 0.8 * r, cy - r, cx + 0.8 * r, cy + r], fill=skin)
        for ex in (-0.35, 0.35):
            ey = cy - 0.3 * r
            d.ellipse([cx + ex * r - 7, ey - 4, cx + ex * r + 7, ey + 4], fill=(255, 255, 255))
            d.ellipse([cx + ex * r - 3, ey - 3, cx + ex * r + 3, ey + 3], fill=(40, 30, 20))
            d.line([cx + ex * r - 9, cy - 0.5 * r, cx + ex * r + 9, cy - 0.5 * r], fill=(70, 50, 30), width=3)
        d.polygon([(cx, cy - 0.15 * r), (cx - 5, cy + 0.2 * r), (cx + 5, cy + 0.2 * r)], fill=(200, 160, 130))
        mo = 2 + 4 * abs(np.sin(k / 3))
        d.ellipse([cx - 0.3 * r, cy + 0.45 * r - mo, cx + 0.3 * r, cy + 0.45 * r + mo], fill=(150, 50, 60))
        out.append(np.asarray(img))
    return np.stack(out)


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def talking(path: Path, n: int = 30, hz: float = 440.0, seed: int = 0, audio: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    media.write_av(path, face_frames(n, seed=seed), tone(n / 30, hz) if audio else None)
    return path


def dominant_bin(spec: np.ndarray) -> int:
    return int(np.argmax(spec[2:-2].mean(0)))


# -------------------------------------------------------------------------------------- bad inputs


def _truncated(d: Path) -> Path:
    p = talking(d / "truncated.mp4", n=30)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    return p


def _not_media(d: Path) -> Path:
    p = d / "notes.mp4"
    p.write_text("this is not a video\n" * 50)
    return p


def _no_audio(d: Path) -> Path:
    return talking(d / "silent_film.mp4", audio=False)


def _no_video(d: Path) -> Path:
    return encode(d / "radio.mp4", audio=tone(1.0)[None, :], sample_rate=SR)


def _zero_frames(d: Path) -> Path:
    p = d / "zero.mkv"
    with av.open(str(p), "w") as c:
        vs = c.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = 64, 64, "yuv420p"
        c.add_stream("aac", rate=SR, layout="mono")
        c.start_encoding()
        for pkt in vs.encode(None):
            c.mux(pkt)
    return p


def _no_face(d: Path) -> Path:
    frames = np.zeros((30, 120, 160, 3), np.uint8)
    frames[..., 2] = np.linspace(40, 200, 160, dtype=np.uint8)[None, None, :]
    p = d / "wall.mp4"
    media.write_av(p, frames, tone(1.0))
    return p


def _too_short(d: Path) -> Path:
    p = d / "blink.mp4"  # one frame at 60 fps lasts 1/60 s, less than one model frame (1/30 s)
    media.write_av(p, face_frames(1), tone(1 / 60), fps=60.0)
    return p


def _missing(d: Path) -> Path:
    p = d / "gone.mp4"
    os.symlink(d / "does_not_exist.mp4", p)  # a dangling link: listed by a folder walk, unreadable
    return p


BAD = {"truncated": (_truncated, "truncated"), "not media": (_not_media, "not a readable media file"),
       "no audio": (_no_audio, "no audio"), "no video": (_no_video, "no video stream"),
       "zero frames": (_zero_frames, ""), "no face": (_no_face, "no face found"),
       "too short": (_too_short, "shorter than one model frame"),
       "missing": (_missing, ("not found", "does not exist"))}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_single_file_is_one_line_error(kind, tmp_path):
    make, words = BAD[kind]
    src = make(tmp_path)
    out = tmp_path / "out"
    r = runner.invoke(app, ["preprocess", str(src), str(out)])
    assert r.exit_code != 0, r.output
    assert "Traceback" not in r.output
    text = " ".join(r.output.split())
    alternatives = words if isinstance(words, tuple) else (words,)
    assert "error:" in text and any(w in text for w in alternatives), r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert not out.exists() or not any(out.rglob("*.npy"))  # nothing half-written


def test_missing_input_path_cli(tmp_path):
    r = runner.invoke(app, ["preprocess", str(tmp_path / "nope.mp4"), str(tmp_path / "out")])
    assert r.exit_code == 2 and "does not exist" in r.output and "Traceback" not in r.output


def test_batch_skips_bad_inputs_with_reasons(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    talking(src / "good.mp4")
    for make, _ in BAD.values():
        make(src)
    out = tmp_path / "out"
    r = runner.invoke(app, ["preprocess", str(src), str(out), "--layout", "folder", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    c = Corpus.open(out)
    assert [x.clip_id for x in c.clips] == ["good"]
    skipped = {s["clip_id"]: s for s in c.skipped()}
    assert set(skipped) == {"truncated", "notes", "silent_film", "radio", "zero", "wall", "blink", "gone"}
    for s in skipped.values():
        assert s["permanent"] and "\n" not in s["reason"], s
    assert "no face found" in skipped["wall"]["reason"]
    assert "no audio" in skipped["silent_film"]["reason"]
    assert "shorter than one model frame" in skipped["blink"]["reason"]
    assert "skipped" in r.output  # closing table
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "skipped clips (8)" in info.output and "no face found" in info.output
    # nothing left half-written
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    # a re-run does not retry permanent skips while the files are unchanged
    report = pp.run_batch(discover(src, "folder"), out, PreprocessParams(), workers=1)
    assert report.results == [] and report.already_done == 1 and len(report.kept_skipped) == 8


def test_batch_where_nothing_succeeds_exits_nonzero(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _no_audio(src)
    _not_media(src)
    r = runner.invoke(app, ["preprocess", str(src), str(tmp_path / "out"), "--workers", "1"])
    assert r.exit_code == 2 and "no clip could be preprocessed" in r.output and "Traceback" not in r.output


# ------------------------------------------------------------------------------------- good inputs


def test_single_file_with_mtcnn(tmp_path):
    src = talking(tmp_path / "speaker one.mp4", n=45)
    out = tmp_path / "out"
    r = runner.invoke(app, ["preprocess", str(src), str(out)])
    assert r.exit_code == 0, r.output
    c = Corpus.open(out, expect=PreprocessParams())
    (rec,) = c.clips
    assert rec.clip_id == "speaker_one" and rec.n_frames == 45 and rec.split == "train"
    faces, spec = c.faces(rec.clip_id), c.spec(rec.clip_id)
    assert isinstance(faces, np.memmap) and faces.shape == (45, 64, 64, 3)
    assert spec.shape == (45, 513) and spec.dtype == np.float32
    # the crop is the face: skin colour dominates the centre, background the corners do not
    centre = faces[:, 24:40, 24:40].reshape(-1, 3).mean(0)
    assert centre[0] > 150 and centre[0] > centre[2]
    assert dominant_bin(spec) == round(440 / 15.625)  # 440 Hz tone, 15.625 Hz per bin
    # a second run is a no-op; other parameters are refused with a clear message
    r2 = runner.invoke(app, ["preprocess", str(src), str(out)])
    assert r2.exit_code == 0 and "already" in r2.output
    r3 = runner.invoke(app, ["preprocess", str(src), str(out), "--fps", "25"])
    assert r3.exit_code == 2 and "fps=30 but fps=25 was asked" in " ".join(r3.output.split())


def _mead_tree(root: Path) -> None:
    hz = {"M001": 300.0, "M002": 500.0, "W003": 700.0, "W004": 900.0}
    for i, (spk, f) in enumerate(hz.items()):
        talking(root / spk / "video" / "front" / "happy" / "level_2" / "001.mp4", n=30, hz=f, seed=i)
    # M001's clip has a separate audio file with another tone: it must be preferred over the mp4 track
    a = root / "M001" / "audio" / "happy" / "level_2" / "001.m4a"
    a.parent.mkdir(parents=True)
    encode(a, audio=tone(30 / 30, 1000.0)[None, :], sample_rate=SR)
    truth = {"jaw": np.linspace(0, 1, 30, dtype=np.float32), "speaker": np.array("W003")}
    np.savez(root / "W003" / "video" / "front" / "happy" / "level_2" / "001.truth.npz", **truth)


def test_mead_end_to_end_with_audio_files_and_truth(tmp_path):
    _mead_tree(tmp_path / "MEAD")
    out = tmp_path / "out"
    # default --workers (0: one per CPU) runs the process pool here
    r = runner.invoke(app, ["preprocess", str(tmp_path / "MEAD"), str(out), "--detector", "none"])
    assert r.exit_code == 0, r.output
    assert "mead layout: 4 clips" in r.output and "speaker-disjoint" in r.output
    c = Corpus.open(out)
    ids = [x.clip_id for x in c.clips]
    assert ids == ["M001_happy_level2_001", "M002_happy_level2_001", "W003_happy_level2_001",
                   "W004_happy_level2_001"]
    assert {x.split for x in c.clips} == {"train", "validation", "test"}
    assert all(x.emotion == "happy" and x.intensity == 2 for x in c.clips)
    assert dominant_bin(c.spec("M001_happy_level2_001")) == round(1000 / 15.625)  # from the .m4a
    assert dominant_bin(c.spec("M002_happy_level2_001")) == round(500 / 15.625)  # from the mp4
    t = c.truth("W003_happy_level2_001")
    assert t is not None and np.allclose(t["jaw"], np.linspace(0, 1, 30)) and str(t["speaker"]) == "W003"
    assert c.truth("M002_happy_level2_001") is None
    meta = json.loads((out / "clips" / "M001_happy_level2_001" / "clip.json").read_text())
    assert meta["audio_source"].endswith("001.m4a")
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "M001 (1)" in info.output and "happy" in info.output


def test_ravdess_end_to_end_skips_video_only(tmp_path):
    root = tmp_path / "RAVDESS"
    talking(root / "Actor_01" / "01-01-03-02-01-01-01.mp4", n=30)
    talking(root / "Actor_01" / "02-01-03-02-01-01-01.mp4", n=30, audio=False)
    out = tmp_path / "out"
    r = runner.invoke(app, ["preprocess", str(root), str(out), "--detector", "none"])
    assert r.exit_code == 0, r.output
    c = Corpus.open(out)
    (rec,) = c.clips
    assert (rec.speaker, rec.emotion, rec.intensity, rec.sentence) == \
        ("Actor_01", "happy", 2, "Kids are talking by the door")
    (sk,) = c.skipped()
    assert sk["clip_id"] == "02-01-03-02-01-01-01" and sk["reason"] == "video-only file (no audio track)"
    assert "video-only file (no audio track)" in runner.invoke(app, ["info", str(out)]).output


def test_folder_with_csv_labels(tmp_path):
    src = tmp_path / "vids"
    talking(src / "a.mp4", n=30)
    talking(src / "b.mp4", n=30, seed=1)
    (src / "labels.csv").write_text("path,speaker,emotion,intensity,sentence\na.mp4,ann,sad,1,Hi there\n")
    out = tmp_path / "out"
    r = runner.invoke(app, ["preprocess", str(src), str(out), "--detector", "none", "--workers", "1"])
    assert r.exit_code == 0, r.output
    a = Corpus.open(out).clip("a")
    assert (a.speaker, a.emotion, a.intensity, a.sentence) == ("ann", "sad", 1, "Hi there")


# ------------------------------------------------------------------------------- resume and shards


def _folder(tmp_path: Path, n: int) -> Path:
    src = tmp_path / "in"
    for i in range(n):
        talking(src / f"spk{i % 3}" / f"clip{i}.mp4", n=30, seed=i)
    return src


def test_resume_after_interruption(tmp_path, monkeypatch):
    src = _folder(tmp_path, 5)
    out = tmp_path / "out"
    d = discover(src)
    order = [c.clip_id for c in d.clips]
    real = pp.process_clip
    seen: list[str] = []

    def interrupted(clip, *a, **k):
        seen.append(clip.clip_id)
        if len(seen) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the 3rd clip
        return real(clip, *a, **k)

    monkeypatch.setattr(pp, "process_clip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pp.run_batch(d, out, FAST, workers=1)
    assert [x.clip_id for x in Corpus.open(out).clips] == order[:2]
    # a SIGKILL while writing the 4th clip would leave a temp file and no clip.json
    partial = out / "clips" / order[3]
    partial.mkdir(parents=True)
    (partial / ".faces.x1y2.tmp.npy").write_bytes(b"half")
    (partial / "faces.npy").write_bytes(b"stale")

    calls: list[str] = []
    monkeypatch.setattr(pp, "process_clip",
                        lambda clip, *a, **k: calls.append(clip.clip_id) or real(clip, *a, **k))
    report = pp.run_batch(discover(src), out, FAST, workers=1)
    assert calls == order[2:] and report.already_done == 2 and report.done == 3
    c = Corpus.open(out)
    assert [x.clip_id for x in c.clips] == order
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert c.faces(order[3]).shape == (30, 64, 64, 3)
    assert len((out / "manifest.csv").read_text().splitlines()) == 6


def test_transient_failures_are_retried(tmp_path, monkeypatch):
    src = _folder(tmp_path, 2)
    out = tmp_path / "out"
    real = pp.process_clip

    def flaky(clip, *a, **k):
        if clip.clip_id.endswith("clip1"):
            raise RuntimeError("simulated bug")
        return real(clip, *a, **k)

    monkeypatch.setattr(pp, "process_clip", flaky)
    rep = pp.run_batch(discover(src), out, FAST, workers=1)
    assert rep.done == 1 and [r.status for r in rep.results if r.status != "done"] == ["failed"]
    assert "simulated bug" in Corpus.open(out).skipped()[0]["reason"]
    monkeypatch.setattr(pp, "process_clip", real)
    rep2 = pp.run_batch(discover(src), out, FAST, workers=1)
    assert rep2.done == 1 and rep2.already_done == 1 and Corpus.open(out).skipped() == []


def test_shards_partition_the_clips(tmp_path):
    src = _folder(tmp_path, 5)
    out = tmp_path / "out"
    ids = sorted(c.clip_id for c in discover(src).clips)
    parts = []
    for i in (1, 2):
        r = runner.invoke(app, ["preprocess", str(src), str(out), "--shard", f"{i}/2", "--detector", "none",
                                "--workers", "1"])
        assert r.exit_code == 0, r.output
        parts.append({x.clip_id for x in Corpus.open(out).clips} - set().union(*parts))
    assert parts[0] == set(ids[0::2]) and parts[1] == set(ids[1::2])
    assert {x.clip_id for x in Corpus.open(out).clips} == set(ids)
    assert pp.shard_items(ids, (2, 2)) == set(ids[1::2])
    for bad in ("0/2", "3/2", "x", "1/0"):
        r = runner.invoke(app, ["preprocess", str(src), str(out), "--shard", bad])
        assert r.exit_code == 2 and "--shard" in r.output and "Traceback" not in r.output
    with pytest.raises(AvmdvaeError):
        pp.parse_shard("2-4")


def test_workers_process_pool(tmp_path):
    src = _folder(tmp_path, 3)
    out = tmp_path / "out"
    rep = pp.run_batch(discover(src), out, FAST, workers=2)
    assert rep.done == 3
    assert len(Corpus.open(out).clips) == 3
