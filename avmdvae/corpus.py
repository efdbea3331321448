"""The preprocessed corpus: on-disk format, reader, writer and the training datasets.

Layout of a corpus folder OUT (documented for users in docs/corpus-format.md):

    OUT/corpus.json                {"format_version": 1, "params": {...}}
    OUT/manifest.csv               one row per finished clip, rebuilt atomically from the clip.json files
    OUT/skipped.jsonl              one JSON line per skipped clip, rebuilt from OUT/skipped/*.json
    OUT/clips/<clip_id>/faces.npy  (N, 64, 64, 3) uint8 face crops
    OUT/clips/<clip_id>/spec.npy   (N, 513) float32 power spectrogram, row k aligned with face k
    OUT/clips/<clip_id>/truth.npz  optional ground truth of a synthetic clip
    OUT/clips/<clip_id>/clip.json  the ClipRecord, written LAST: its presence means "clip complete"
    OUT/skipped/<clip_id>.json     why a clip was skipped (one small file per clip, so parallel shards
                                   never write the same file)

Every file is written atomically (avmdvae.atomic), so a killed run leaves at most temporary files
(`.name.<host>-<pid>-XXXX.tmp.ext`) in the folder of the clip it was working on; they are removed when
that clip is processed again (and stale ones elsewhere by the next run). One `preprocess` run at a
time writes into a corpus (`lock_corpus`), and every clip id read back from disk is checked
(`check_clip_id`) before it becomes a path. Arrays are plain .npy files so that training reads random
windows through memory maps without ever loading the corpus.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from avmdvae.atomic import atomic_path, pid_alive, save_npy, write_json, write_text
from avmdvae.constants import FACE_SIZE, MODEL_FPS, N_FFT, SAMPLE_RATE
from avmdvae.errors import CorpusError

try:
    import fcntl
except ImportError:  # not POSIX: corpora are not locked
    fcntl = None  # type: ignore[assignment]

CORPUS_FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")

CORPUS_FILE = "corpus.json"
MANIFEST_FILE = "manifest.csv"
SKIPPED_FILE = "skipped.jsonl"
CLIPS_DIR = "clips"
SKIPPED_DIR = "skipped"
CLIP_FILE = "clip.json"
FACES_FILE = "faces.npy"
SPEC_FILE = "spec.npy"
TRUTH_FILE = "truth.npz"
LOCK_FILE = ".preprocess.lock"
# Clip ids name folders and files: letters, digits, '.', '_', '-', no leading dot (so never '.' or
# '..'), no separator. Every id read from disk is checked against this before it becomes a path.
CLIP_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


# Parameters whose mismatch makes a corpus unusable for a model (array shapes or time base change).
# `detector` only records how the crops were made; it is compared when writing into an existing
# corpus (never mix crops of two front ends), not when a trainer opens one.
SHAPE_FIELDS = ("fps", "sample_rate", "n_fft", "face_size")
# Command-line option that sets each parameter (for error messages).
PARAM_OPTIONS = {"fps": "--fps", "detector": "--detector"}


@dataclass(frozen=True)
class PreprocessParams:
    """Everything that determines the content of a corpus' arrays."""

    fps: float = MODEL_FPS  # model frame rate: one face and one spectrogram row per 1/fps s
    sample_rate: int = SAMPLE_RATE
    n_fft: int = N_FFT  # 64 ms at 16 kHz -> n_fft // 2 + 1 = 513 bins
    face_size: int = FACE_SIZE
    detector: str = "mtcnn"

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CorpusError(f"unknown preprocessing parameter(s) {', '.join(unknown)}; "
                              "this corpus was made by a newer avmdvae: upgrade avmdvae")
        kw: dict[str, Any] = dict(d)
        for name in ("sample_rate", "n_fft", "face_size"):
            if name in kw:
                kw[name] = int(kw[name])
        if "fps" in kw:
            kw["fps"] = float(kw["fps"])
        return cls(**kw)

    def mismatches(self, expect: PreprocessParams | Mapping[str, Any],
                   names: Sequence[str] | None = None) -> list[str]:
        """Names of the parameters in which `expect` differs from self.

        With a mapping, only its keys are compared; with a PreprocessParams, the fields in `names`
        (default: all fields).
        """
        if isinstance(expect, PreprocessParams):
            wanted = {n: getattr(expect, n) for n in (names or [f.name for f in fields(self)])}
        else:
            wanted = dict(expect)
        out = []
        for name, value in wanted.items():
            if not hasattr(self, name):
                raise CorpusError(f"unknown preprocessing parameter {name!r}; "
                                  f"known: {', '.join(f.name for f in fields(self))}")
            mine = getattr(self, name)
            if isinstance(mine, float):
                if abs(float(value) - mine) > 1e-9:
                    out.append(name)
            elif value != mine:
                out.append(name)
        return out


def _fmt(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def params_mismatch_message(root: Path, have: PreprocessParams,
                            want: PreprocessParams | Mapping[str, Any], names: list[str]) -> str:
    """'corpus X was preprocessed with fps=25 but fps=30 was asked; re-run ... or pass --fps 25'."""
    want_d = want.to_dict() if isinstance(want, PreprocessParams) else dict(want)
    had = ", ".join(f"{n}={_fmt(getattr(have, n))}" for n in names)
    asked = ", ".join(f"{n}={_fmt(want_d[n])}" for n in names)
    opts = " ".join(f"{PARAM_OPTIONS[n]} {_fmt(getattr(have, n))}" for n in names if n in PARAM_OPTIONS)
    fix = "re-run `avmdvae preprocess` into a new folder with the parameters you want"
    if opts:
        fix += f", or pass {opts}"
    return f"corpus {root} was preprocessed with {had} but {asked} was asked; {fix}"


@dataclass
class ClipRecord:
    """One finished clip (a row of manifest.csv and the content of clips/<clip_id>/clip.json)."""

    clip_id: str
    source: str  # the input video file (a separate audio file, if used, is in clip.json "audio_source")
    speaker: str
    emotion: str | None
    intensity: int | None
    sentence: str | None
    n_frames: int
    split: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClipRecord:
        def opt_str(v: Any) -> str | None:
            return None if v is None or v == "" else str(v)

        intensity = d.get("intensity")
        return cls(
            clip_id=str(d["clip_id"]),
            source=str(d.get("source", "")),
            speaker=str(d.get("speaker", "")),
            emotion=opt_str(d.get("emotion")),
            intensity=None if intensity is None or intensity == "" else int(intensity),
            sentence=opt_str(d.get("sentence")),
            n_frames=int(d["n_frames"]),
            split=str(d["split"]),
        )


MANIFEST_COLUMNS = [f.name for f in fields(ClipRecord)]


def manifest_text(records: Iterable[ClipRecord]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: ("" if v is None else v) for k, v in r.to_dict().items()})
    return buf.getvalue()


def check_clip_id(clip_id: str, where: str | os.PathLike[str]) -> str:
    """`clip_id` if it is a safe clip id (see CLIP_ID); CorpusError naming `where` otherwise."""
    if not isinstance(clip_id, str) or not CLIP_ID.fullmatch(clip_id):
        raise CorpusError(f"{where}: invalid clip id {clip_id!r} (expected letters, digits, '.', '_' "
                          "or '-', not starting with '.'); this corpus was altered: re-run "
                          "`avmdvae preprocess` into a new folder")
    return clip_id


def _record_from_file(d: Mapping[str, Any], path: Path, folder: str) -> ClipRecord:
    """The ClipRecord in clip.json `path` of clip folder `folder`; CorpusError if it is malformed."""
    try:
        rec = ClipRecord.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise CorpusError(f"{path}: malformed clip record ({type(e).__name__}: {e}); delete "
                          f"{path.parent} and re-run `avmdvae preprocess` to redo that clip") from None
    check_clip_id(rec.clip_id, path)
    if rec.clip_id != folder:
        raise CorpusError(f"{path}: clip id {rec.clip_id!r} does not match its folder {folder!r}; "
                          "this corpus was altered: re-run `avmdvae preprocess` into a new folder")
    if rec.n_frames < 0:
        raise CorpusError(f"{path}: negative frame count {rec.n_frames}; delete {path.parent} and re-run "
                          "`avmdvae preprocess` to redo that clip")
    return rec


def read_manifest(path: Path) -> list[ClipRecord]:
    with open(path, newline="", encoding="utf-8") as f:
        return [ClipRecord.from_dict(row) for row in csv.DictReader(f)]


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing or unreadable (a torn copy, say)."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _read_corpus_json(root: Path) -> tuple[PreprocessParams, dict[str, Any]]:
    meta_path = root / CORPUS_FILE
    if not root.exists():
        raise CorpusError(f"corpus {root} does not exist; create it with `avmdvae preprocess INPUT {root}`")
    if not meta_path.is_file():
        raise CorpusError(f"{root} is not an avmdvae corpus (no {CORPUS_FILE}); "
                          f"create one with `avmdvae preprocess INPUT {root}`")
    meta = _read_json(meta_path)
    if meta is None or "format_version" not in meta or "params" not in meta:
        raise CorpusError(f"{meta_path} is unreadable or incomplete; "
                          "re-run `avmdvae preprocess` into a new folder")
    version = meta["format_version"]
    if version != CORPUS_FORMAT_VERSION:
        raise CorpusError(f"corpus {root} has format version {version} but this avmdvae reads version "
                          f"{CORPUS_FORMAT_VERSION}; re-run `avmdvae preprocess` with this version "
                          "(or use the avmdvae that made it)")
    return PreprocessParams.from_dict(meta["params"]), meta


def clip_dir(root: Path, clip_id: str) -> Path:
    """The folder of clip `clip_id` in the corpus at `root` (CorpusError for an unsafe id)."""
    return root / CLIPS_DIR / check_clip_id(clip_id, root)


def _lock_name(shard: tuple[int, int]) -> str:
    i, n = shard
    return LOCK_FILE if n == 1 else LOCK_FILE.replace(".lock", f".shard-{i}-of-{n}.lock")


def _try_flock(path: Path, exclusive: bool) -> int | None:
    """An open descriptor of `path` holding a flock, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _lock_holders(root: Path) -> str:
    """'pid 123 (shard 1/2), pid 456' from the lock files of `root` whose process is still running."""
    out = []
    for p in sorted(root.glob(LOCK_FILE.replace(".lock", "*.lock"))):
        info = _read_json(p) or {}
        pid = info.get("pid")
        if isinstance(pid, int) and pid_alive(pid):
            shard = info.get("shard", "1/1")
            out.append(f"pid {pid}" + (f" (shard {shard})" if shard != "1/1" else ""))
    return ", ".join(out) or "a process that did not record its pid"


@contextlib.contextmanager
def lock_corpus(root: str | os.PathLike[str], shard: tuple[int, int] = (1, 1)) -> Iterator[None]:
    """Hold the preprocessing lock of the corpus at `root` (an existing folder) for the block.

    One run at a time writes into a corpus, except the shards of one sharded run (same n): an
    unsharded run locks OUT/.preprocess.lock exclusively; shard i/n locks it shared and
    OUT/.preprocess.shard-i-of-n.lock exclusively. Locks are flock()s, released by the kernel when the
    holder dies, so a lock file left by a killed run is simply taken over. The files record the
    holder's pid for the message a refused run prints. CorpusError when the lock is held.
    """
    root = Path(root)
    if fcntl is None:  # no flock on this platform: nothing to hold
        yield
        return
    i, n = shard
    wanted = [(LOCK_FILE, n == 1)] + ([(_lock_name(shard), True)] if n > 1 else [])
    held: list[int] = []
    try:
        for name, exclusive in wanted:
            fd = _try_flock(root / name, exclusive)
            if fd is None:
                raise CorpusError(f"corpus {root} is being written by another `avmdvae preprocess` "
                                  f"({_lock_holders(root)}; lock {root / name}); wait for it to finish "
                                  "or stop it, then re-run")
            held.append(fd)
            if exclusive:
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps({"pid": os.getpid(), "shard": f"{i}/{n}",
                                         "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode())
        yield
    finally:
        for fd in held:
            os.close(fd)  # releases the flock


def is_corpus(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / CORPUS_FILE).is_file()


def _manifest_records(root: Path) -> dict[str, ClipRecord]:
    """Well-formed rows of manifest.csv by clip id: a cache that spares parsing every clip.json. It is
    only used for clip folders that exist with a clip.json; any other row is ignored."""
    manifest = root / MANIFEST_FILE
    if not manifest.is_file():
        return {}
    try:
        rows = read_manifest(manifest)
    except (OSError, ValueError, KeyError, TypeError, csv.Error):
        return {}  # unreadable manifest: fall back to the clip.json files
    return {r.clip_id: r for r in rows if CLIP_ID.fullmatch(r.clip_id) and r.n_frames >= 0}


def scan_clip_records(root: Path, known: Mapping[str, ClipRecord] | None = None) -> list[ClipRecord]:
    """Records of all complete clips (folders with a clip.json), sorted by clip id.

    Records in `known` (e.g. read from manifest.csv) are reused for folders that still have a
    clip.json, so only clips finished after the last manifest rebuild are parsed.
    """
    clips_dir = root / CLIPS_DIR
    out: list[ClipRecord] = []
    if not clips_dir.is_dir():
        return out
    known = known or {}
    with os.scandir(clips_dir) as it:
        for entry in it:
            # a symlinked clip folder could point anywhere: not part of a corpus we wrote
            if not entry.is_dir(follow_symlinks=False) or entry.name.startswith("."):
                continue
            clip_json = Path(entry.path) / CLIP_FILE
            if entry.name in known:
                if clip_json.is_file():
                    out.append(known[entry.name])
                continue
            d = _read_json(clip_json)
            if d is not None:
                out.append(_record_from_file(d, clip_json, entry.name))
    out.sort(key=lambda r: r.clip_id)
    return out


def scan_skipped(root: Path) -> list[dict[str, Any]]:
    """Skip records (dicts with clip_id, source, reason, permanent, ...) from OUT/skipped/*.json."""
    d = root / SKIPPED_DIR
    out = []
    if d.is_dir():
        for p in sorted(d.glob("*.json")):
            if p.name.startswith("."):
                continue
            rec = _read_json(p)
            if rec is not None:
                out.append(rec)
    return out


class Corpus:
    """Read access to a preprocessed corpus. Arrays are returned as read-only memory maps."""

    def __init__(self, root: Path, params: PreprocessParams, clips: list[ClipRecord],
                 meta: dict[str, Any] | None = None):
        self.root = root
        self.params = params
        self.clips = clips
        self.meta = meta or {}
        self._by_id = {c.clip_id: c for c in clips}

    @classmethod
    def open(cls, path: str | os.PathLike[str],
             expect: PreprocessParams | Mapping[str, Any] | None = None) -> Corpus:
        """Open the corpus at `path`.

        `expect`: the parameters the caller needs. A PreprocessParams is compared on the fields that
        change array shapes or the time base (SHAPE_FIELDS: fps, sample_rate, n_fft, face_size); a
        mapping is compared on exactly its keys. Any difference raises CorpusError, as do a missing
        corpus and another format version.
        """
        root = Path(path)
        params, meta = _read_corpus_json(root)
        if expect is not None:
            names = params.mismatches(expect, SHAPE_FIELDS if isinstance(expect, PreprocessParams) else None)
            if names:
                raise CorpusError(params_mismatch_message(root, params, expect, names))
        return cls(root, params, scan_clip_records(root, _manifest_records(root)), meta)

    def __repr__(self) -> str:
        return f"Corpus({str(self.root)!r}, {len(self.clips)} clips)"

    def __len__(self) -> int:
        return len(self.clips)

    def split(self, name: str) -> list[ClipRecord]:
        if name not in SPLITS:
            raise CorpusError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return [c for c in self.clips if c.split == name]

    def clip(self, clip_id: str) -> ClipRecord:
        try:
            return self._by_id[clip_id]
        except KeyError:
            raise CorpusError(f"corpus {self.root} has no clip {clip_id!r}; "
                              f"`avmdvae info {self.root}` lists what it holds") from None

    def clip_dir(self, clip_id: str) -> Path:
        return clip_dir(self.root, clip_id)

    def faces(self, clip_id: str) -> np.memmap:
        """(N, face_size, face_size, 3) uint8, memory-mapped read-only."""
        return self._load(clip_id, FACES_FILE)

    def spec(self, clip_id: str) -> np.memmap:
        """(N, n_fft // 2 + 1) float32 power spectrogram, memory-mapped read-only."""
        return self._load(clip_id, SPEC_FILE)

    def truth(self, clip_id: str) -> dict[str, np.ndarray] | None:
        """Ground truth of a synthetic clip (see avmdvae.synth), or None for real media."""
        self.clip(clip_id)
        p = self.clip_dir(clip_id) / TRUTH_FILE
        if not p.is_file():
            return None
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def _load(self, clip_id: str, name: str) -> np.memmap:
        self.clip(clip_id)
        p = self.clip_dir(clip_id) / name
        if p.is_symlink():
            raise CorpusError(f"{p} is a symbolic link, which a corpus never holds; delete {p.parent} and "
                              "re-run `avmdvae preprocess` to redo that clip")
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CorpusError(f"cannot read {p} ({e}); delete {p.parent} and re-run `avmdvae preprocess` "
                              "to redo that clip") from None
        return arr

    def skipped(self) -> list[dict[str, Any]]:
        return scan_skipped(self.root)

    def speakers(self, split: str | None = None) -> list[str]:
        clips = self.clips if split is None else self.split(split)
        return sorted({c.speaker for c in clips})

    def n_frames(self, split: str | None = None) -> int:
        clips = self.clips if split is None else self.split(split)
        return sum(c.n_frames for c in clips)


class CorpusWriter:
    """Creates or extends a corpus. Safe to use from several processes on distinct clips."""

    def __init__(self, root: str | os.PathLike[str], params: PreprocessParams):
        self.root = Path(root)
        self.params = params
        if (self.root / CORPUS_FILE).exists():
            have, _ = _read_corpus_json(self.root)
            names = have.mismatches(params)
            if names:
                raise CorpusError(params_mismatch_message(self.root, have, params, names)
                                  .replace("was asked", "was asked for the new clips"))
        else:
            if self.root.exists() and not self.root.is_dir():
                raise CorpusError(f"output {self.root} exists and is not a folder; "
                                  "choose another output path")
            if self.root.is_dir() and any(p.name not in (CLIPS_DIR, SKIPPED_DIR)
                                          for p in self.root.iterdir()):
                raise CorpusError(f"output folder {self.root} is not empty and is not a corpus; "
                                  "choose a new or empty folder")
            from avmdvae import __version__

            write_json(self.root / CORPUS_FILE, {"format_version": CORPUS_FORMAT_VERSION,
                                                 "params": params.to_dict(),
                                                 "created_by": f"avmdvae {__version__}"})
        (self.root / CLIPS_DIR).mkdir(parents=True, exist_ok=True)

    def clip_dir(self, clip_id: str) -> Path:
        return clip_dir(self.root, clip_id)

    def _skip_path(self, clip_id: str) -> Path:
        return self.root / SKIPPED_DIR / f"{check_clip_id(clip_id, self.root)}.json"

    def is_done(self, clip_id: str) -> bool:
        return (self.clip_dir(clip_id) / CLIP_FILE).is_file()

    def clip_problem(self, clip_id: str) -> str | None:
        """Why the finished clip `clip_id` is not usable (an array missing, unreadable or of the wrong
        shape), or None when it is fine. Reads only the clip.json and the .npy headers."""
        d = self.clip_dir(clip_id)
        meta = _read_json(d / CLIP_FILE)
        if meta is None:
            return f"{d / CLIP_FILE} is missing or unreadable"
        try:
            n = _record_from_file(meta, d / CLIP_FILE, clip_id).n_frames
        except CorpusError as e:
            return str(e)
        p = self.params
        want = {FACES_FILE: (n, p.face_size, p.face_size, 3), SPEC_FILE: (n, p.n_bins)}
        for name, shape in want.items():
            try:
                arr = np.load(d / name, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                return f"{d / name} is missing or unreadable ({type(e).__name__})"
            if arr.shape != shape:
                return f"{d / name} has shape {arr.shape}, expected {shape}"
        return None

    def sources(self) -> dict[str, str]:
        """The source video of every finished clip, by clip id."""
        return {r.clip_id: r.source for r in scan_clip_records(self.root, _manifest_records(self.root))}

    def skip_record(self, clip_id: str) -> dict[str, Any] | None:
        return _read_json(self._skip_path(clip_id))

    def clean_partial(self, clip_id: str) -> int:
        """Remove what an interrupted run left for an unfinished clip; returns the number of files."""
        d = self.clip_dir(clip_id)
        n = 0
        if d.is_dir() and not (d / CLIP_FILE).exists():
            for p in d.iterdir():
                if p.is_file():
                    p.unlink(missing_ok=True)
                    n += 1
        return n

    def write_clip(self, record: ClipRecord, faces: np.ndarray, spec: np.ndarray,
                   truth: Mapping[str, np.ndarray] | str | os.PathLike[str] | None = None,
                   extra: Mapping[str, Any] | None = None) -> None:
        """Write one clip: faces.npy, spec.npy, optional truth.npz, then clip.json (last).

        faces: (N, S, S, 3) uint8; spec: (N, n_bins) float32; N == record.n_frames.
        truth: a dict of arrays, or the path of an .npz to copy. `extra` goes into clip.json only.
        """
        p = self.params
        if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != (p.face_size, p.face_size, 3):
            raise ValueError(f"faces must be (N,{p.face_size},{p.face_size},3) uint8, got "
                             f"{faces.shape} {faces.dtype}")
        if spec.ndim != 2 or spec.shape[1] != p.n_bins:
            raise ValueError(f"spec must be (N,{p.n_bins}), got {spec.shape}")
        if not (len(faces) == len(spec) == record.n_frames):
            raise ValueError(f"faces ({len(faces)}), spec ({len(spec)}) and "
                             f"n_frames ({record.n_frames}) differ")
        d = self.clip_dir(record.clip_id)
        (d / CLIP_FILE).unlink(missing_ok=True)  # the clip is incomplete until clip.json is back
        self.clean_partial(record.clip_id)
        d.mkdir(parents=True, exist_ok=True)
        save_npy(d / FACES_FILE, faces)
        save_npy(d / SPEC_FILE, spec.astype(np.float32, copy=False))
        if truth is not None:
            if isinstance(truth, Mapping):
                arrays = {k: np.asarray(v) for k, v in truth.items()}
            else:
                with np.load(truth, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            with atomic_path(d / TRUTH_FILE) as tmp, open(tmp, "wb") as f:
                np.savez(f, **arrays)
        meta = record.to_dict()
        if extra:
            meta.update({k: v for k, v in extra.items() if k not in meta})
        write_json(d / CLIP_FILE, meta)
        self._skip_path(record.clip_id).unlink(missing_ok=True)

    def write_skipped(self, clip_id: str, source: str, reason: str, permanent: bool = True,
                      **extra: Any) -> None:
        """Record that `clip_id` was skipped. Permanent reasons (bad media, no face...) are not retried
        by a re-run while the source is unchanged; others (unexpected errors) are."""
        rec = {"clip_id": clip_id, "source": source, "reason": reason, "permanent": permanent,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
        write_json(self._skip_path(clip_id), rec)

    def clear_skipped(self, clip_id: str) -> None:
        self._skip_path(clip_id).unlink(missing_ok=True)

    def rebuild_index(self) -> tuple[int, int]:
        """Rewrite manifest.csv and skipped.jsonl from the per-clip files; returns (done, skipped)."""
        known: dict[str, ClipRecord] = {}
        records = scan_clip_records(self.root, known)
        write_text(self.root / MANIFEST_FILE, manifest_text(records))
        skipped = scan_skipped(self.root)
        write_text(self.root / SKIPPED_FILE, "".join(json.dumps(s, sort_keys=True) + "\n" for s in skipped))
        return len(records), len(skipped)
