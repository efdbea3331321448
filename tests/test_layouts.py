"""Input discovery: MEAD / RAVDESS names, folder + CSV labels, single files, ids and splits."""

from __future__ import annotations

import pytest

from avmdvae.errors import AvmdvaeError, ConfigError
from avmdvae.layouts import (
    SourceClip,
    assign_splits,
    detect_layout,
    discover,
    parse_mead_path,
    parse_ravdess_name,
    safe_id,
)


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_parse_ravdess_name():
    lab = parse_ravdess_name("01-01-06-02-02-01-12.mp4")
    assert lab == {"modality": "audio-video", "vocal_channel": "speech", "emotion": "fearful",
                   "intensity": 2, "statement": 2, "sentence": "Dogs are sitting by the door",
                   "repetition": 1, "actor": 12, "speaker": "Actor_12"}
    assert parse_ravdess_name("02-02-08-01-01-02-03")["modality"] == "video-only"
    emotions = [parse_ravdess_name(f"01-01-0{e}-01-01-01-01")["emotion"] for e in range(1, 9)]
    assert emotions == ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    assert parse_ravdess_name("01-02-03-01-01-01-01")["sentence"] == "Kids are talking by the door"
    for bad in ("01-01-09-01-01-01-01.mp4", "01-01-03-03-01-01-01.mp4", "clip.mp4", "01-01-03-01-01-01.mp4"):
        with pytest.raises(ValueError):
            parse_ravdess_name(bad)


def test_discover_ravdess_skips_video_only(tmp_path):
    root = tmp_path / "RAVDESS"
    for name in ("01-01-03-01-01-01-01.mp4", "02-01-03-01-01-01-01.mp4", "01-02-05-02-02-02-01.mp4"):
        _touch(root / "Actor_01" / name)
    for a in (2, 3):
        _touch(root / f"Actor_{a:02d}" / f"01-01-01-01-01-01-{a:02d}.mp4")
    _touch(root / "Actor_02" / "notes.txt")
    assert detect_layout(root) == "ravdess"
    d = discover(root)
    assert d.layout == "ravdess"
    assert [c.clip_id for c in d.clips] == ["01-01-01-01-01-01-02", "01-01-01-01-01-01-03",
                                            "01-01-03-01-01-01-01", "01-02-05-02-02-02-01"]
    song = d.clips[-1]
    assert (song.speaker, song.emotion, song.intensity, song.sentence, song.audio) == \
        ("Actor_01", "angry", 2, "Dogs are sitting by the door", None)
    assert [(s.clip_id, s.reason) for s in d.skipped] == \
        [("02-01-03-01-01-01-01", "video-only file (no audio track)")]
    # 3 actors -> speaker-disjoint, one actor in each split
    split_of = {}
    for c in d.clips:
        split_of.setdefault(c.speaker, set()).add(c.split)
    assert all(len(s) == 1 for s in split_of.values())
    assert sorted(s.pop() for s in split_of.values()) == ["test", "train", "validation"]
    assert d.split_rule == "speaker-disjoint: 1 train / 1 validation / 1 test speakers"


def test_discover_mead(tmp_path):
    root = tmp_path / "MEAD"
    for spk in ("M003", "W009"):
        _touch(root / spk / "video" / "front" / "angry" / "level_3" / "001.mp4")
        _touch(root / spk / "video" / "front" / "neutral" / "level_1" / "002.mp4")
        _touch(root / spk / "video" / "left_30" / "angry" / "level_3" / "001.mp4")  # other views ignored
    _touch(root / "M003" / "audio" / "angry" / "level_3" / "001.m4a")
    _touch(root / "M003" / "video" / "front" / "angry" / "level_3" / "001.truth.npz")
    assert detect_layout(root) == "mead"
    d = discover(root, "mead")
    ids = [c.clip_id for c in d.clips]
    assert ids == ["M003_angry_level3_001", "M003_neutral_level1_002", "W009_angry_level3_001",
                   "W009_neutral_level1_002"]
    c = d.clips[0]
    assert (c.speaker, c.emotion, c.intensity, c.sentence) == ("M003", "angry", 3, "001")
    assert c.audio == root / "M003" / "audio" / "angry" / "level_3" / "001.m4a"
    assert c.truth == root / "M003" / "video" / "front" / "angry" / "level_3" / "001.truth.npz"
    assert d.clips[2].audio is None and d.clips[2].truth is None  # falls back to the mp4's own track
    # one speaker folder works too
    d1 = discover(root / "W009")
    assert d1.layout == "mead" and [c.speaker for c in d1.clips] == ["W009", "W009"]
    assert parse_mead_path(root / "M003/video/front/sad/level_2/010.mp4", root / "M003") == \
        {"speaker": "M003", "emotion": "sad", "intensity": 2, "number": "010"}
    with pytest.raises(ValueError):
        parse_mead_path(root / "M003/video/front/sad/010.mp4", root / "M003")
    with pytest.raises(AvmdvaeError, match="does not look like MEAD"):
        discover(tmp_path / "MEAD" / "M003" / "audio", "mead")


def test_discover_folder_with_csv_labels(tmp_path):
    root = tmp_path / "vids"
    _touch(root / "alice" / "take 1.mp4")
    _touch(root / "alice" / "take 2.MOV")
    _touch(root / "bob" / "x.mkv")
    _touch(root / "loose.webm")
    _touch(root / "readme.md")
    (root / "labels.csv").write_text(
        "path,speaker,emotion,intensity,sentence\n"
        "alice/take 1.mp4,Alice,happy,2,Hello there\n"
        "bob/x.mkv,,sad,,\n"
        "missing.mp4,zed,,,\n")
    assert detect_layout(root) == "folder"
    d = discover(root)
    by = {c.clip_id: c for c in d.clips}
    assert sorted(by) == ["alice__take_1", "alice__take_2", "bob__x", "loose"]
    a = by["alice__take_1"]
    assert (a.speaker, a.emotion, a.intensity, a.sentence) == ("Alice", "happy", 2, "Hello there")
    assert (by["bob__x"].speaker, by["bob__x"].emotion) == ("bob", "sad")
    assert by["loose"].speaker == "unknown" and by["alice__take_2"].speaker == "alice"
    assert any("1 row(s)" in n for n in d.notes)
    # explicit CSV keyed by clip_id
    lab = tmp_path / "lab.csv"
    lab.write_text("clip_id,speaker\nloose,carol\n")
    assert {c.clip_id: c.speaker for c in discover(root, "folder", labels=lab).clips}["loose"] == "carol"
    bad = tmp_path / "bad.csv"
    bad.write_text("file,speaker\nx,y\n")
    with pytest.raises(ConfigError, match="no 'path' or 'clip_id' column"):
        discover(root, "folder", labels=bad)
    bad.write_text("path,intensity\nloose.webm,strong\n")
    with pytest.raises(ConfigError, match="not an integer"):
        discover(root, "folder", labels=bad)


def test_single_file_and_errors(tmp_path):
    f = _touch(tmp_path / "my clip (1).mp4")
    d = discover(f)
    assert d.layout == "file" and [c.clip_id for c in d.clips] == ["my_clip_1"]
    assert d.clips[0].split == "train"
    with pytest.raises(AvmdvaeError, match="does not exist"):
        discover(tmp_path / "nope.mp4")
    with pytest.raises(AvmdvaeError, match="no video files"):
        (tmp_path / "empty").mkdir()
        discover(tmp_path / "empty")
    with pytest.raises(AvmdvaeError, match="unknown layout"):
        discover(f, "voxceleb")


def test_ids_safe_and_unique(tmp_path):
    assert safe_id("a/b c?d.mp4") == "a_b_c_d.mp4"
    assert safe_id("..hidden") == "hidden"
    assert safe_id("日本").startswith("clip-")
    long = safe_id("x" * 300)
    assert len(long) <= 120
    root = tmp_path / "v"
    _touch(root / "a b.mp4")
    _touch(root / "a_b.mp4")
    ids = [c.clip_id for c in discover(root).clips]
    assert len(set(ids)) == 2 and all(i.startswith("a_b-") for i in ids)


def _clips(speakers_and_counts):
    out = []
    for spk, n in speakers_and_counts:
        out += [SourceClip(f"{spk}_{i:03d}", None, spk) for i in range(n)]  # type: ignore[arg-type]
    return out


def test_splits_speaker_disjoint_and_deterministic():
    clips = _clips([(f"S{i:02d}", 5) for i in range(20)])
    rule = assign_splits(clips)
    assert rule == "speaker-disjoint: 16 train / 2 validation / 2 test speakers"
    split_of: dict[str, set[str]] = {}
    for c in clips:
        split_of.setdefault(c.speaker, set()).add(c.split)
    assert all(len(s) == 1 for s in split_of.values())
    again = _clips([(f"S{i:02d}", 5) for i in reversed(range(20))])
    assign_splits(again)
    assert {c.clip_id: c.split for c in again} == {c.clip_id: c.split for c in clips}
    three = _clips([("a", 2), ("b", 2), ("c", 2)])
    assign_splits(three)
    assert sorted({c.split for c in three}) == ["test", "train", "validation"]


def test_splits_fallback_with_few_speakers():
    one = _clips([("solo", 1)])
    assert "NOT speaker-disjoint" in assign_splits(one) and one[0].split == "train"
    two = _clips([("solo", 2)])
    assign_splits(two)
    assert sorted(c.split for c in two) == ["train", "validation"]
    many = _clips([("a", 15), ("b", 5)])
    rule = assign_splits(many)
    assert "only 2 speaker(s)" in rule and "16 train / 2 validation / 2 test clips" in rule


def test_non_ascii_names_get_distinct_stable_ids(tmp_path):
    a = _touch(tmp_path / "one" / "café.mp4")
    b = _touch(tmp_path / "one" / "cafè.mp4")
    ids = {c.video.name: c.clip_id for c in discover(tmp_path / "one").clips}
    assert len(set(ids.values())) == 2 and all(i.startswith("caf") for i in ids.values())
    # an id does not depend on which other files are present
    alone = tmp_path / "two"
    _touch(alone / a.name)
    assert discover(alone).clips[0].clip_id == ids[a.name]
    assert discover(b).clips[0].clip_id == ids[b.name]
    assert safe_id("日本") != safe_id("中国") and safe_id("日本").startswith("clip-")


def test_folder_layout_reads_ravdess_and_mead_names(tmp_path):
    root = tmp_path / "flat"
    _touch(root / "03-01-06-01-02-01-12.mp4")  # no sub-folder: actor 12, fearful, from the name
    _touch(root / "01-01-03-02-01-02-07.mp4")
    _touch(root / "dump" / "M003" / "angry" / "level_2" / "001.mp4")
    _touch(root / "W011_happy_level_1_004.mp4")
    d = discover(root, "folder")
    by = {c.video.name if c.video.parent == root else c.video.relative_to(root).as_posix(): c
          for c in d.clips}
    r = by["03-01-06-01-02-01-12.mp4"]
    assert (r.speaker, r.emotion, r.intensity) == ("Actor_12", "fearful", 1)
    assert by["01-01-03-02-01-02-07.mp4"].speaker == "Actor_07"
    m = by["dump/M003/angry/level_2/001.mp4"]
    assert (m.speaker, m.emotion, m.intensity) == ("M003", "angry", 2)
    w = by["W011_happy_level_1_004.mp4"]
    assert (w.speaker, w.emotion, w.intensity) == ("W011", "happy", 1)
    assert d.split_rule.startswith("speaker-disjoint") and not d.warnings


def test_folder_layout_warns_when_splits_cannot_be_speaker_disjoint(tmp_path):
    root = tmp_path / "flat"
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        _touch(root / name)
    d = discover(root, "folder")
    assert {c.speaker for c in d.clips} == {"unknown"}
    assert any("not speaker-disjoint" in w and "speaker" in w for w in d.warnings), d.warnings
    root2 = tmp_path / "mixed"
    for spk in ("s1", "s2", "s3"):
        _touch(root2 / spk / "x.mp4")
    _touch(root2 / "loose.mp4")
    d2 = discover(root2, "folder")
    assert any("1 video(s) have no speaker" in w for w in d2.warnings), d2.warnings
