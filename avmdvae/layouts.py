"""Find the clips of an input dataset, read their labels from names or a CSV, and split by speaker.

Layouts (`discover(path, layout)`):

* ``mead``: ``<speaker>/video/front/<emotion>/level_<N>/<NNN>.mp4``; the audio comes from
  ``<speaker>/audio/<emotion>/level_<N>/<NNN>.m4a`` when that file exists, else from the mp4's own
  track. Only the frontal view is used. PATH may be the MEAD root or one speaker's folder.
* ``ravdess``: ``Actor_XX/MM-VC-EE-II-SS-RR-AA.mp4`` (modality, vocal channel, emotion, intensity,
  statement, repetition, actor). Modality 02 (video-only) files are skipped: they have no audio.
* ``folder``: every video below PATH, recursively; labels from an optional CSV (``labels.csv`` in PATH,
  or given explicitly) with a ``path`` or ``clip_id`` column and any of ``speaker, emotion, intensity,
  sentence``. Without a label, the speaker is the first sub-folder under PATH ("unknown" for videos
  directly in PATH).
* ``file``: a single video.

Synthetic clips come with ground truth in a sidecar next to the video (``NNN.truth.npz`` beside
``NNN.mp4``, see avmdvae.synth); discovery records it so preprocessing copies it into the corpus.

Splits (`assign_splits`) are speaker-disjoint and deterministic: speakers are ordered by a hash of
their name (stable, and independent of alphabetical order, which in MEAD would group the sexes), then
10% go to test, 10% to validation (at least one each) and the rest to train. With fewer than three
speakers a speaker-disjoint three-way split is impossible; clips are then split individually (same
fractions, by hash of the clip id; 1 clip -> train, 2 clips -> train + validation) and the returned
rule says so.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from avmdvae.errors import AvmdvaeError, ConfigError

LAYOUTS = ("auto", "mead", "ravdess", "folder", "file")
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v", ".flv",
                            ".wmv", ".ts", ".mts", ".3gp", ".ogv"})
TRUTH_SUFFIX = ".truth.npz"  # synth sidecar: NNN.truth.npz next to NNN.mp4
LABELS_CSV = "labels.csv"
LABEL_COLUMNS = ("speaker", "emotion", "intensity", "sentence")
UNKNOWN_SPEAKER = "unknown"

# Split fractions (validation, test); the rest is train.
VAL_FRACTION = 0.1
TEST_FRACTION = 0.1
MAX_ID_LEN = 120  # clip ids become folder names; keep well below the usual 255-byte name limit

# RAVDESS file-name fields (https://zenodo.org/record/1188976): MM-VC-EE-II-SS-RR-AA.
RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
RAVDESS_MODALITY = {"01": "audio-video", "02": "video-only", "03": "audio-only"}
RAVDESS_CHANNEL = {"01": "speech", "02": "song"}
RAVDESS_EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry",
                    "06": "fearful", "07": "disgust", "08": "surprised"}
RAVDESS_INTENSITY = {"01": 1, "02": 2}  # normal, strong
RAVDESS_STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}

MEAD_LEVEL = re.compile(r"^level_(\d+)$")
MEAD_AUDIO_SUFFIXES = (".m4a", ".wav", ".aac", ".mp3", ".flac")
# MEAD-style names outside the MEAD tree (--layout folder): a path part that starts with the speaker
# code (M001, W011...), an emotion word and a level_N anywhere in the path.
MEAD_SPEAKER = re.compile(r"^([MW]\d{3})(?=$|[_\-. ])")
MEAD_NAME_LEVEL = re.compile(r"level_?(\d+)", re.IGNORECASE)
MEAD_EMOTIONS = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")


@dataclass
class SourceClip:
    """One input clip, before preprocessing."""

    clip_id: str  # unique, filesystem-safe
    video: Path
    speaker: str
    emotion: str | None = None
    intensity: int | None = None
    sentence: str | None = None
    audio: Path | None = None  # separate audio file; None: the video's own audio track
    truth: Path | None = None  # synth ground-truth sidecar
    split: str = "train"


@dataclass
class SkippedSource:
    clip_id: str
    source: Path
    reason: str


@dataclass
class Discovery:
    layout: str
    root: Path
    clips: list[SourceClip] = field(default_factory=list)
    skipped: list[SkippedSource] = field(default_factory=list)
    split_rule: str = ""
    notes: list[str] = field(default_factory=list)  # facts for the user (unmatched labels...)
    warnings: list[str] = field(default_factory=list)  # problems the user should fix (mixed splits...)


# ---------------------------------------------------------------------------------------- clip ids

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_id(text: str) -> str:
    """A filesystem-safe id: [A-Za-z0-9._-], no leading dot, at most MAX_ID_LEN characters.

    The id depends on `text` alone (never on other names), so it is stable across runs. Names with
    non-ASCII characters, which the replacement by '_' would merge ('café', 'cafè' -> 'caf'), and
    over-long names get a short hash of the full text.
    """
    s = _UNSAFE.sub("_", text).strip("_")
    s = s.lstrip(".") or "clip"
    if len(s) > MAX_ID_LEN or not text.isascii():
        s = s[: MAX_ID_LEN - 9] + "-" + _hash(text)[:8]
    return s


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def path_id(clip_id: str, video: Path) -> str:
    """`clip_id` made specific to the file `video`: a short hash of its absolute path appended."""
    return f"{clip_id[: MAX_ID_LEN - 9]}-{_hash(str(video.absolute()))[:8]}"


def make_unique(clips: list[SourceClip]) -> None:
    """Make clip ids unique in place (ids that collide get a short hash of their source path)."""
    by_id: dict[str, list[SourceClip]] = {}
    for c in clips:
        by_id.setdefault(c.clip_id, []).append(c)
    for cid, group in by_id.items():
        if len(group) > 1:
            for c in group:
                c.clip_id = path_id(cid, c.video)


def truth_sidecar(video: Path) -> Path | None:
    p = video.with_name(video.name[: -len(video.suffix)] + TRUTH_SUFFIX) if video.suffix else None
    return p if p is not None and p.is_file() else None


def _is_video(p: Path) -> bool:
    return p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith(".")


def _walk_videos(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if _is_video(Path(f)))
    return out


# -------------------------------------------------------------------------------------------- MEAD


def parse_mead_path(path: Path, speaker_root: Path) -> dict[str, object]:
    """Labels of `<speaker_root>/video/front/<emotion>/level_<N>/<NNN>.mp4`.

    Returns {"speaker", "emotion", "intensity", "number"}; ValueError when the path does not match.
    """
    rel = path.relative_to(speaker_root).parts
    if len(rel) != 5 or rel[0] != "video" or rel[1] != "front":
        raise ValueError(f"not a MEAD frontal video path: {path}")
    m = MEAD_LEVEL.match(rel[3])
    if not m:
        raise ValueError(f"not a MEAD level folder: {rel[3]}")
    return {"speaker": speaker_root.name, "emotion": rel[2], "intensity": int(m.group(1)),
            "number": Path(rel[4]).stem}


def _mead_speaker_roots(root: Path) -> list[Path]:
    if (root / "video" / "front").is_dir():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "video" / "front").is_dir())


def discover_mead(root: Path) -> Discovery:
    d = Discovery("mead", root)
    speakers = _mead_speaker_roots(root)
    if not speakers:
        raise AvmdvaeError(f"{root} does not look like MEAD (no <speaker>/video/front folder); "
                           "check the path or pass --layout folder")
    for spk_root in speakers:
        for video in _walk_videos(spk_root / "video" / "front"):
            try:
                lab = parse_mead_path(video, spk_root)
            except ValueError:
                rel = video.relative_to(root)
                d.skipped.append(SkippedSource(safe_id(str(rel.with_suffix(""))), video,
                                               "not a MEAD file path (expected <speaker>/video/front/"
                                               "<emotion>/level_<N>/<NNN>.mp4)"))
                continue
            speaker, emotion, level, number = (str(lab["speaker"]), str(lab["emotion"]),
                                               int(str(lab["intensity"])), str(lab["number"]))
            audio = None
            audio_stem = spk_root / "audio" / emotion / f"level_{level}" / number
            for suf in MEAD_AUDIO_SUFFIXES:
                if audio_stem.with_suffix(suf).is_file():
                    audio = audio_stem.with_suffix(suf)
                    break
            cid = safe_id(f"{speaker}_{emotion}_level{level}_{number}")
            # MEAD numbers the sentences of each emotion; the synthetic corpus uses NNN as its sentence id
            d.clips.append(SourceClip(cid, video, speaker, emotion, level, number, audio, truth_sidecar(video)))
    return d


# ----------------------------------------------------------------------------------------- RAVDESS


def parse_ravdess_name(name: str) -> dict[str, object]:
    """Decode a RAVDESS file name (with or without extension).

    Returns {"modality", "vocal_channel", "emotion", "intensity", "statement", "sentence",
    "repetition", "actor", "speaker"}; ValueError when the name is not a RAVDESS name.
    """
    stem = Path(name).stem if "." in name else name
    m = RAVDESS_NAME.match(stem)
    if not m:
        raise ValueError(f"{name}: not a RAVDESS file name (expected MM-VC-EE-II-SS-RR-AA)")
    mod, vc, emo, inten, stmt, rep, actor = m.groups()
    try:
        out: dict[str, object] = {
            "modality": RAVDESS_MODALITY[mod],
            "vocal_channel": RAVDESS_CHANNEL[vc],
            "emotion": RAVDESS_EMOTIONS[emo],
            "intensity": RAVDESS_INTENSITY[inten],
            "statement": int(stmt),
            "sentence": RAVDESS_STATEMENTS[stmt],
            "repetition": int(rep),
            "actor": int(actor),
        }
    except KeyError as e:
        raise ValueError(f"{name}: field value {e.args[0]} out of range for a RAVDESS name") from None
    if int(rep) < 1 or int(actor) < 1:
        raise ValueError(f"{name}: repetition and actor must be >= 01 in a RAVDESS name")
    out["speaker"] = f"Actor_{int(actor):02d}"
    return out


def discover_ravdess(root: Path) -> Discovery:
    d = Discovery("ravdess", root)
    files = [p for p in _walk_files(root) if p.suffix.lower() in VIDEO_SUFFIXES | {".wav"}]
    if not any(RAVDESS_NAME.match(p.stem) for p in files):
        raise AvmdvaeError(f"{root} does not look like RAVDESS (no MM-VC-EE-II-SS-RR-AA.mp4 files); "
                           "check the path or pass --layout folder")
    for p in files:
        cid = safe_id(p.stem)
        try:
            lab = parse_ravdess_name(p.name)
        except ValueError:
            d.skipped.append(SkippedSource(cid, p, "not a RAVDESS file name "
                                                   "(expected MM-VC-EE-II-SS-RR-AA.mp4)"))
            continue
        if lab["modality"] == "video-only":
            d.skipped.append(SkippedSource(cid, p, "video-only file (no audio track)"))
            continue
        if lab["modality"] == "audio-only" or p.suffix.lower() == ".wav":
            d.skipped.append(SkippedSource(cid, p, "audio-only file (no video)"))
            continue
        d.clips.append(SourceClip(cid, p, str(lab["speaker"]), str(lab["emotion"]),
                                  int(str(lab["intensity"])), str(lab["sentence"]), None, truth_sidecar(p)))
    return d


def _walk_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return out


# ------------------------------------------------------------------------------------ folder / file


def read_labels(csv_path: Path) -> tuple[str, dict[str, dict[str, str]]]:
    """Read a labels CSV: returns (key column, {key: {column: value}}). Keys: 'path' or 'clip_id'."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip().lower() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"cannot read labels CSV {csv_path} ({e}); give a UTF-8 CSV file") from None
    key = "path" if "path" in cols else "clip_id" if "clip_id" in cols else None
    if key is None:
        raise ConfigError(f"labels CSV {csv_path} has no 'path' or 'clip_id' column (columns: "
                          f"{', '.join(cols) or 'none'}); add one naming each video")
    labels: dict[str, dict[str, str]] = {}
    for i, row in enumerate(rows, start=2):
        k = row.get(key, "")
        if not k:
            continue
        inten = row.get("intensity", "")
        if inten and not inten.lstrip("-").isdigit():
            raise ConfigError(f"labels CSV {csv_path} line {i}: intensity {inten!r} is not an integer; "
                              "use integers (e.g. 1, 2) or leave it empty")
        labels[_norm_key(k) if key == "path" else k] = row
    return key, labels


def _norm_key(p: str) -> str:
    return Path(p.replace("\\", "/")).as_posix()


def labels_from_name(rel: Path) -> dict[str, object]:
    """Labels that a RAVDESS file name or a MEAD-style path (M001/..., W011_happy_level_1_004.mp4)
    carries: {"speaker", "emotion", "intensity"[, "sentence"]}; {} when the name has none."""
    try:
        lab = parse_ravdess_name(rel.name)
    except ValueError:
        pass
    else:
        return {k: lab[k] for k in ("speaker", "emotion", "intensity", "sentence")}
    parts = rel.with_suffix("").parts
    speaker = next((m.group(1) for part in parts if (m := MEAD_SPEAKER.match(part))), None)
    if speaker is None:
        return {}
    words = set(re.split(r"[_\-. ]", "_".join(parts).lower()))
    level = MEAD_NAME_LEVEL.search("_".join(parts))
    return {"speaker": speaker, "emotion": next((e for e in MEAD_EMOTIONS if e in words), None),
            "intensity": int(level.group(1)) if level else None}


def discover_folder(root: Path, labels_csv: Path | None = None) -> Discovery:
    d = Discovery("folder", root)
    videos = _walk_videos(root)
    if not videos:
        raise AvmdvaeError(f"no video files found under {root} (looked for "
                           f"{', '.join(sorted(VIDEO_SUFFIXES))}); check the path")
    if labels_csv is None and (root / LABELS_CSV).is_file():
        labels_csv = root / LABELS_CSV
    key, labels = ("path", {}) if labels_csv is None else read_labels(labels_csv)
    for v in videos:
        rel = v.relative_to(root)
        speaker = rel.parts[0] if len(rel.parts) > 1 else UNKNOWN_SPEAKER
        c = SourceClip(safe_id("__".join(rel.with_suffix("").parts)), v, safe_id(speaker),
                       truth=truth_sidecar(v))
        _apply_labels(c, {k: "" if x is None else str(x) for k, x in labels_from_name(rel).items()})
        d.clips.append(c)
    make_unique(d.clips)
    if labels:
        used = set()
        for c in d.clips:
            k = _norm_key(str(c.video.relative_to(root))) if key == "path" else c.clip_id
            row = labels.get(k)
            if row is None and key == "path":
                k = _norm_key(str(c.video))
                row = labels.get(k)
            if row is None:
                continue
            used.add(k)
            _apply_labels(c, row)
        unmatched = len(labels) - len(used)
        if unmatched:
            d.notes.append(f"{unmatched} row(s) of {labels_csv} match no video under {root}")
        unlabeled = len(d.clips) - len(used)
        if unlabeled:
            d.notes.append(f"{unlabeled} video(s) have no row in {labels_csv}; their speaker is their folder "
                           "(or the one their MEAD/RAVDESS-style name gives)")
    n_unknown = sum(c.speaker == UNKNOWN_SPEAKER for c in d.clips)
    if 0 < n_unknown < len(d.clips):
        d.warnings.append(f"{n_unknown} video(s) have no speaker (directly in {root}, no labels row, no "
                          f"MEAD/RAVDESS-style name): they count as one speaker {UNKNOWN_SPEAKER!r}, so the "
                          "splits are not truly speaker-disjoint; give a labels CSV with a speaker column")
    return d


def _apply_labels(c: SourceClip, row: Mapping[str, str]) -> None:
    if row.get("speaker"):
        c.speaker = safe_id(row["speaker"])
    if row.get("emotion"):
        c.emotion = row["emotion"]
    if row.get("intensity"):
        c.intensity = int(row["intensity"])
    if row.get("sentence"):
        c.sentence = row["sentence"]


def discover_file(path: Path) -> Discovery:
    d = Discovery("file", path.parent)
    d.clips.append(SourceClip(safe_id(path.stem), path, UNKNOWN_SPEAKER, truth=truth_sidecar(path)))
    return d


# ------------------------------------------------------------------------------------- detection


def detect_layout(path: Path) -> str:
    """'file', 'mead', 'ravdess' or 'folder' for an existing path."""
    if path.is_file():
        return "file"
    if _mead_speaker_roots(path):
        return "mead"
    names = [p for p in _walk_files(path) if p.suffix.lower() in VIDEO_SUFFIXES]
    if names and all(RAVDESS_NAME.match(p.stem) for p in names):
        return "ravdess"
    return "folder"


def discover(path: str | os.PathLike[str], layout: str = "auto", labels: str | os.PathLike[str] | None = None,
             val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION) -> Discovery:
    """Find the clips under `path` in the given layout and assign speaker-disjoint splits."""
    p = Path(path).absolute()  # sources are recorded absolute: valid from any working folder
    if layout not in LAYOUTS:
        raise AvmdvaeError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if not p.exists():
        raise AvmdvaeError(f"input {p} does not exist; check the path")
    if not os.access(p, os.R_OK):
        raise AvmdvaeError(f"input {p} is not readable (permission denied); fix its permissions")
    if layout == "auto":
        layout = detect_layout(p)
    if layout == "file":
        if not p.is_file():
            raise AvmdvaeError(f"--layout file needs a video file but {p} is a folder; use --layout auto")
        d = discover_file(p)
    else:
        if not p.is_dir():
            raise AvmdvaeError(f"--layout {layout} needs a folder but {p} is a file; use --layout file")
        if layout == "mead":
            d = discover_mead(p)
        elif layout == "ravdess":
            d = discover_ravdess(p)
        else:
            d = discover_folder(p, Path(labels) if labels is not None else None)
    if labels is not None and layout != "folder":
        d.notes.append(f"labels CSV ignored: labels come from the {layout} names")
    make_unique(d.clips)
    d.clips.sort(key=lambda c: c.clip_id)
    d.split_rule = assign_splits(d.clips, val_fraction, test_fraction)
    n_speakers = len({c.speaker for c in d.clips})
    if layout != "file" and n_speakers < MIN_DISJOINT_SPEAKERS:
        d.warnings.append(f"only {n_speakers} speaker(s) found, so the splits are not speaker-disjoint "
                          "(validation and test share speakers with train); put each speaker's videos in "
                          "a sub-folder or give a labels CSV with a speaker column")
    return d


# ------------------------------------------------------------------------------------------ splits


def _counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test) out of n items: fractions rounded, at least one each when n >= 3."""
    if n >= 3:
        n_test = max(1, round(n * test_fraction))
        n_val = max(1, round(n * val_fraction))
        while n_val + n_test > n - 1:  # keep at least one for training
            if n_val >= n_test and n_val > 1:
                n_val -= 1
            elif n_test > 1:
                n_test -= 1
            else:
                break
        return n_val, n_test
    return (1, 0) if n == 2 else (0, 0)


MIN_DISJOINT_SPEAKERS = 3  # train, validation and test each need a speaker of their own


def assign_splits(clips: Iterable[SourceClip], val_fraction: float = VAL_FRACTION,
                  test_fraction: float = TEST_FRACTION) -> str:
    """Set `split` of every clip (in place); returns a one-line description of the rule used."""
    clips = list(clips)
    speakers = sorted({c.speaker for c in clips})
    if len(speakers) >= MIN_DISJOINT_SPEAKERS:
        order = sorted(speakers, key=lambda s: (_hash(s), s))
        n_val, n_test = _counts(len(order), val_fraction, test_fraction)
        split_of = {s: "test" for s in order[:n_test]}
        split_of.update({s: "validation" for s in order[n_test:n_test + n_val]})
        split_of.update({s: "train" for s in order[n_test + n_val:]})
        for c in clips:
            c.split = split_of[c.speaker]
        n_train = len(order) - n_val - n_test
        return (f"speaker-disjoint: {n_train} train / {n_val} validation / {n_test} test speakers")
    order_c = sorted(clips, key=lambda c: (_hash(c.clip_id), c.clip_id))
    n_val, n_test = _counts(len(order_c), val_fraction, test_fraction)
    for i, c in enumerate(order_c):
        c.split = "test" if i < n_test else "validation" if i < n_test + n_val else "train"
    n_train = len(order_c) - n_val - n_test
    return (f"only {len(speakers)} speaker(s), so splits are NOT speaker-disjoint: clips split "
            f"individually, {n_train} train / {n_val} validation / {n_test} test clips")
