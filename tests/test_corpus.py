"""Corpus format: writer, reader, parameter/version checks, atomicity, window and frame datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avmdvae.corpus import (
    CORPUS_FORMAT_VERSION,
    ClipRecord,
    Corpus,
    CorpusWriter,
    PreprocessParams,
)
from avmdvae.errors import CorpusError
from avmdvae.training.datasets import FrameDataset

PARAMS = PreprocessParams()


def _arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, 256, size=(n, 64, 64, 3), dtype=np.uint8)
    # row k of the spectrogram carries k in bin 0 so windows can be checked for alignment
    spec = rng.random((n, 513), dtype=np.float32)
    spec[:, 0] = np.arange(n)
    faces[:, 0, 0, 0] = np.arange(n) % 256
    return faces, spec


def _make(root, lengths: dict[str, tuple[int, str, str]], params: PreprocessParams = PARAMS) -> CorpusWriter:
    """lengths: clip_id -> (n_frames, speaker, split)."""
    w = CorpusWriter(root, params)
    for i, (cid, (n, spk, split)) in enumerate(sorted(lengths.items())):
        faces, spec = _arrays(n, i)
        w.write_clip(ClipRecord(cid, f"/in/{cid}.mp4", spk, "happy", 1, None, n, split), faces, spec)
    w.rebuild_index()
    return w


@pytest.fixture
def small_corpus(tmp_path):
    root = tmp_path / "corpus"
    _make(root, {"a": (50, "s1", "train"), "b": (31, "s1", "train"), "c": (10, "s2", "train"),
                 "d": (40, "s3", "validation"), "e": (35, "s4", "test")})
    return root


def test_roundtrip_records_and_memmaps(small_corpus):
    c = Corpus.open(small_corpus, expect=PARAMS)
    assert [r.clip_id for r in c.clips] == ["a", "b", "c", "d", "e"]
    assert [r.clip_id for r in c.split("train")] == ["a", "b", "c"]
    rec = c.clip("d")
    assert (rec.speaker, rec.emotion, rec.intensity, rec.sentence, rec.n_frames, rec.split) == \
        ("s3", "happy", 1, None, 40, "validation")
    faces, spec = c.faces("a"), c.spec("a")
    assert isinstance(faces, np.memmap) and isinstance(spec, np.memmap)
    assert faces.shape == (50, 64, 64, 3) and faces.dtype == np.uint8
    assert spec.shape == (50, 513) and spec.dtype == np.float32
    ref_faces, ref_spec = _arrays(50, 0)
    np.testing.assert_array_equal(faces, ref_faces)
    np.testing.assert_array_equal(spec, ref_spec)
    assert c.n_frames() == 50 + 31 + 10 + 40 + 35
    assert c.speakers("train") == ["s1", "s2"]
    assert c.truth("a") is None
    # manifest.csv lists every clip with the contract's columns
    lines = (small_corpus / "manifest.csv").read_text().splitlines()
    assert lines[0] == "clip_id,source,speaker,emotion,intensity,sentence,n_frames,split"
    assert len(lines) == 6
    meta = json.loads((small_corpus / "corpus.json").read_text())
    assert meta["format_version"] == CORPUS_FORMAT_VERSION and meta["params"]["fps"] == 30.0


def test_mismatched_params_fail_clearly(tmp_path):
    root = tmp_path / "c25"
    _make(root, {"a": (5, "s", "train")}, PreprocessParams(fps=25.0))
    with pytest.raises(CorpusError) as e:
        Corpus.open(root, expect=PreprocessParams(fps=30.0))
    msg = str(e.value)
    assert "fps=25 but fps=30 was asked" in msg and "--fps 25" in msg and "\n" not in msg
    # a mapping checks only its keys; detector alone does not block a trainer
    Corpus.open(root, expect={"fps": 25})
    Corpus.open(root, expect=PreprocessParams(fps=25.0, detector="none"))
    with pytest.raises(CorpusError, match="face_size=64 but face_size=32"):
        Corpus.open(root, expect={"face_size": 32})
    # writing new clips with other parameters into it is refused (even the detector)
    with pytest.raises(CorpusError, match="detector=mtcnn"):
        CorpusWriter(root, PreprocessParams(fps=25.0, detector="none"))


def test_version_and_missing(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        Corpus.open(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CorpusError, match="not an avmdvae corpus"):
        Corpus.open(tmp_path / "plain")
    root = tmp_path / "c"
    _make(root, {"a": (5, "s", "train")})
    meta = json.loads((root / "corpus.json").read_text())
    meta["format_version"] = CORPUS_FORMAT_VERSION + 1
    (root / "corpus.json").write_text(json.dumps(meta))
    with pytest.raises(CorpusError, match="format version 2 but this avmdvae reads version 1"):
        Corpus.open(root)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(CorpusError, match="not empty and is not a corpus"):
        CorpusWriter(tmp_path / "junk", PARAMS)


def test_open_sees_clips_finished_after_last_manifest(small_corpus):
    w = CorpusWriter(small_corpus, PARAMS)
    faces, spec = _arrays(7, 9)
    w.write_clip(ClipRecord("f", "/in/f.mp4", "s5", None, None, "hi", 7, "train"), faces, spec)
    # a folder left by an interrupted clip (arrays, no clip.json) is not a clip
    partial = small_corpus / "clips" / "g"
    partial.mkdir()
    np.save(partial / "faces.npy", faces)
    ids = [r.clip_id for r in Corpus.open(small_corpus).clips]
    assert ids == ["a", "b", "c", "d", "e", "f"]
    assert Corpus.open(small_corpus).clip("f").sentence == "hi"
    with pytest.raises(CorpusError, match="no clip 'g'"):
        Corpus.open(small_corpus).faces("g")


def test_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    w = CorpusWriter(tmp_path / "c", PARAMS)
    faces, spec = _arrays(6, 0)
    real_save = np.save
    calls = {"n": 0}

    def dying_save(f, arr, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # while writing spec.npy
            f.write(b"partial")
            raise KeyboardInterrupt
        real_save(f, arr, *a, **k)

    monkeypatch.setattr(np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        w.write_clip(ClipRecord("x", "x.mp4", "s", None, None, None, 6, "train"), faces, spec)
    monkeypatch.setattr(np, "save", real_save)
    d = tmp_path / "c" / "clips" / "x"
    assert not (d / "clip.json").exists() and not (d / "spec.npy").exists()
    assert not [p for p in d.iterdir() if ".tmp" in p.name]
    assert not w.is_done("x")
    # a SIGKILL leaves temp files behind; re-processing the clip removes them
    (d / ".spec.abcd.tmp.npy").write_bytes(b"half")
    w.write_clip(ClipRecord("x", "x.mp4", "s", None, None, None, 6, "train"), faces, spec)
    assert sorted(p.name for p in d.iterdir()) == ["clip.json", "faces.npy", "spec.npy"]
    assert w.is_done("x")


def test_truth_and_skipped(tmp_path):
    w = CorpusWriter(tmp_path / "c", PARAMS)
    faces, spec = _arrays(4, 0)
    truth = {"jaw": np.linspace(0, 1, 4, dtype=np.float32), "speaker": np.array("spk01")}
    w.write_clip(ClipRecord("t", "t.mp4", "spk01", None, None, None, 4, "train"), faces, spec, truth=truth)
    w.write_skipped("bad", "bad.mp4", "bad.mp4: no audio stream; give a video with sound")
    w.write_skipped("flaky", "flaky.mp4", "unexpected error", permanent=False)
    done, skipped = w.rebuild_index()
    assert (done, skipped) == (1, 2)
    c = Corpus.open(tmp_path / "c")
    t = c.truth("t")
    np.testing.assert_allclose(t["jaw"], truth["jaw"])
    assert str(t["speaker"]) == "spk01"
    lines = [json.loads(x) for x in (tmp_path / "c" / "skipped.jsonl").read_text().splitlines()]
    assert {(x["clip_id"], x["permanent"]) for x in lines} == {("bad", True), ("flaky", False)}
    assert [s["clip_id"] for s in c.skipped()] == ["bad", "flaky"]
    # a clip that succeeds later loses its skip record
    w.write_clip(ClipRecord("bad", "bad.mp4", "s", None, None, None, 4, "train"), faces, spec)
    assert w.skip_record("bad") is None


def test_datasets_keep_few_memory_maps_and_never_pickle_them(small_corpus, monkeypatch):
    import pickle

    from avmdvae.training import datasets

    monkeypatch.setattr(datasets, "MEMMAP_CACHE_SIZE", 2)
    ds = FrameDataset(Corpus.open(small_corpus), "train", "audio")
    ds.gather(range(len(ds)))  # three clips
    assert len(ds._cache._maps) == 2
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone._cache._maps) == 0 and torch.equal(clone[55]["audio"], ds[55]["audio"])
    assert torch.equal(ds[[55, 3]]["audio"], ds.gather([55, 3]))


def test_frame_dataset(small_corpus):
    c = Corpus.open(small_corpus)
    fa = FrameDataset(c, "train", "audio")
    assert len(fa) == 50 + 31 + 10
    # item 55 = clip b (second, 31 frames) frame 5
    assert fa.locate(55) == (1, 5)
    np.testing.assert_array_equal(fa[55]["audio"].numpy(), c.spec("b")[5])
    fv = FrameDataset(c, "train", "visual")
    assert fv[90]["visual"].shape == (64, 64, 3) and fv[90]["visual"].dtype == torch.uint8
    np.testing.assert_array_equal(fv[90]["visual"].numpy(), c.faces("c")[9])
    idx = [90, 0, 55, 49, 50]
    g = fv.gather(idx)
    assert g.shape == (5, 64, 64, 3)
    for row, i in zip(g, idx, strict=True):
        np.testing.assert_array_equal(row.numpy(), fv[i]["visual"].numpy())
    with pytest.raises(IndexError):
        fa[len(fa)]
