"""Write a synthetic audiovisual speech corpus in the MEAD layout, with ground truth per clip.

    OUT/synth.json                                           seed, options, speakers, sentences
    OUT/<speaker>/video/front/<emotion>/level_<i>/<NNN>.mp4        H.264 + AAC, 30 fps, 16 kHz mono
    OUT/<speaker>/video/front/<emotion>/level_<i>/<NNN>.truth.npz  ground truth (docs/synthetic-corpus.md)

Every file is written atomically, the sidecar after the video: a clip whose sidecar exists is
complete and is skipped when the command is re-run (resume). Each clip's random draws depend only on
(seed, speaker, emotion, level, sentence), so the output does not depend on the number of workers or
on the order in which clips are made, and a corpus with more speakers / sentences contains the
clips of a smaller one with the same seed and size, unchanged.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avmdvae.atomic import atomic_path, write_json
from avmdvae.errors import ConfigError, CorpusError
from avmdvae.synth.factors import (
    AROUSAL_VALENCE,
    EMOTIONS,
    FPS,
    INTENSITY_SCALE,
    LEVELS,
    SAMPLE_RATE,
    STREAM_RENDER,
    STREAM_SPEECH,
    VOICED_THRESHOLD,
    ClipSpec,
    Sentence,
    Speaker,
    Timeline,
    formants,
    make_sentence,
    make_speaker,
    make_timeline,
)
from avmdvae.synth.render import render_clip
from avmdvae.synth.speech import synthesize

GENERATOR_VERSION = 1  # bump when the same options would produce different media
MANIFEST = "synth.json"
TRUTH_SUFFIX = ".truth.npz"
LOUDNESS_WINDOW_S = 2 / FPS  # RMS window of the loudness ground truth, centred on each frame time
LOUDNESS_FLOOR_DB = -100.0
MIN_SIZE = 96  # smaller frames leave the face detector too few pixels


@dataclass(frozen=True)
class SynthOptions:
    """Everything that determines the corpus content (the worker count does not)."""

    n_speakers: int = 4
    n_sentences: int = 3
    emotions: tuple[str, ...] = EMOTIONS
    levels: tuple[int, ...] = LEVELS
    seed: int = 0
    size: int = 192

    def __post_init__(self) -> None:
        if self.n_speakers < 1 or self.n_speakers > 999:
            raise ConfigError(f"--speakers must be between 1 and 999, got {self.n_speakers}")
        if self.n_sentences < 1 or self.n_sentences > 999:
            raise ConfigError(f"--sentences must be between 1 and 999, got {self.n_sentences}")
        bad = [e for e in self.emotions if e not in EMOTIONS]
        if bad or not self.emotions:
            raise ConfigError(f"unknown emotion(s) {', '.join(bad) or '(none given)'}; "
                              f"choose from {', '.join(EMOTIONS)}")
        bad_l = [lv for lv in self.levels if lv not in LEVELS]
        if bad_l or not self.levels:
            raise ConfigError(f"--levels must be among {LEVELS}, got {self.levels}")
        if self.size < MIN_SIZE or self.size > 2048 or self.size % 2:
            raise ConfigError(f"--size must be an even number of pixels in [{MIN_SIZE}, 2048], "
                              f"got {self.size}")
        # canonical order, no duplicates
        object.__setattr__(self, "emotions", tuple(e for e in EMOTIONS if e in self.emotions))
        object.__setattr__(self, "levels", tuple(sorted(set(self.levels))))

    def to_dict(self) -> dict[str, Any]:
        return {"n_speakers": self.n_speakers, "n_sentences": self.n_sentences,
                "emotions": list(self.emotions), "levels": list(self.levels), "seed": self.seed,
                "size": self.size,
                "generator_version": GENERATOR_VERSION, "fps": FPS, "sample_rate": SAMPLE_RATE}


def plan_clips(opts: SynthOptions) -> list[ClipSpec]:
    """All clips of the corpus. Neutral exists only at level 1 (as in MEAD)."""
    specs = []
    for spk in range(opts.n_speakers):
        for emo in opts.emotions:
            for level in (1,) if emo == "neutral" else opts.levels:
                for s in range(1, opts.n_sentences + 1):
                    specs.append(ClipSpec(spk, emo, level, s))
    return specs


def clip_paths(out: str | os.PathLike[str], spec: ClipSpec, speaker_name: str) -> tuple[Path, Path]:
    """(video, truth sidecar) paths of a clip in the MEAD layout."""
    d = Path(out) / speaker_name / "video" / "front" / spec.emotion / f"level_{spec.level}"
    return d / f"{spec.sentence:03d}.mp4", d / f"{spec.sentence:03d}{TRUTH_SUFFIX}"


# -------------------------------------------------------------------------------------------- clips


@dataclass
class SynthClip:
    """One generated clip in memory: frames (N,H,W,3) uint8, audio (N*1600/3,) float32, truth."""

    spec: ClipSpec
    frames: np.ndarray
    audio: np.ndarray
    truth: dict[str, np.ndarray]
    timeline: Timeline = field(repr=False)


def frame_loudness(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """RMS level in dBFS over LOUDNESS_WINDOW_S centred on each frame time k / FPS: (S,) -> (N,)."""
    half = int(round(LOUDNESS_WINDOW_S * SAMPLE_RATE / 2))
    c = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    centre = np.round(np.arange(n_frames) * SAMPLE_RATE / FPS).astype(int)
    lo, hi = np.clip(centre - half, 0, len(audio)), np.clip(centre + half, 0, len(audio))
    ms = (c[hi] - c[lo]) / np.maximum(hi - lo, 1)
    return np.maximum(10 * np.log10(np.maximum(ms, 1e-30)), LOUDNESS_FLOOR_DB).astype(np.float32)


def truth_arrays(spec: ClipSpec, speaker: Speaker, tl: Timeline, audio: np.ndarray) -> dict[str, np.ndarray]:
    """Ground truth of a clip: 0-d scalars and (N,) per-frame arrays at 30 fps (N = video frames)."""
    voiced = tl.at_frames(tl.voice) >= VOICED_THRESHOLD
    f = tl.at_frames
    fhz = formants(f(tl.jaw), f(tl.lip), speaker.vtl_scale)
    per_frame = {
        "jaw": f(tl.jaw), "lip_width": f(tl.lip),
        "f0": np.where(voiced, f(tl.f0), 0.0),
        "loudness": frame_loudness(audio, tl.n_frames),
        "blink": tl.blink,
        "head_yaw": tl.head_yaw, "head_pitch": tl.head_pitch, "head_roll": tl.head_roll,
        "head_x": tl.head_x, "head_y": tl.head_y, "head_scale": tl.head_scale,
        "f1": fhz[:, 0], "f2": fhz[:, 1], "f3": fhz[:, 2], "f4": fhz[:, 3],
    }
    out: dict[str, np.ndarray] = {
        "speaker": np.array(speaker.name), "emotion": np.array(spec.emotion),
        "intensity": np.array(spec.level, np.int64), "sentence": np.array(spec.sentence, np.int64),
        "arousal": np.array(tl.arousal, np.float32), "valence": np.array(tl.valence, np.float32),
    }
    for k, v in per_frame.items():
        assert len(v) == tl.n_frames, k
        out[k] = np.asarray(v, np.float32)
    return out


def make_clip(seed: int, spec: ClipSpec, size: int, speaker: Speaker | None = None,
              sentence: Sentence | None = None) -> SynthClip:
    """Generate one clip in memory (deterministic in seed, spec and size)."""
    speaker = speaker or make_speaker(seed, spec.speaker)
    sentence = sentence or make_sentence(seed, spec.sentence)
    tl = make_timeline(seed, spec, speaker, sentence)
    audio = synthesize(tl, speaker, spec.rng(seed, STREAM_SPEECH))
    frames = render_clip(speaker, tl, size, spec.rng(seed, STREAM_RENDER))
    return SynthClip(spec, frames, audio, truth_arrays(spec, speaker, tl, audio), tl)


def save_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> None:
    """np.savez-compatible archive with fixed member timestamps: same arrays -> same bytes. Atomic."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def write_clip(out: str | os.PathLike[str], seed: int, spec: ClipSpec, size: int) -> bool:
    """Generate and write one clip unless it is complete already. Returns True if written."""
    from avmdvae.media import write_av

    speaker = make_speaker(seed, spec.speaker)
    video, truth = clip_paths(out, spec, speaker.name)
    if truth.is_file() and video.is_file():
        return False
    clip = make_clip(seed, spec, size, speaker=speaker)
    write_av(video, clip.frames, clip.audio, fps=FPS, sample_rate=SAMPLE_RATE)
    save_npz(truth, clip.truth)
    return True


def _write_clip_job(args: tuple[str, int, ClipSpec, int]) -> bool:
    return write_clip(*args)


# ------------------------------------------------------------------------------------------- corpus


@dataclass
class SynthResult:
    root: Path
    options: SynthOptions
    videos: list[Path]  # every clip of the corpus, in plan order
    written: int  # clips generated by this call
    skipped: int  # clips found complete and kept


def corpus_description(opts: SynthOptions) -> dict[str, Any]:
    """The content of OUT/synth.json."""
    return {
        "generator": "avmdvae synth",
        "options": opts.to_dict(),
        "emotion_map": {e: {"arousal": a, "valence": v} for e, (a, v) in AROUSAL_VALENCE.items()},
        "intensity_scale": {str(k): v for k, v in INTENSITY_SCALE.items()},
        "speakers": [make_speaker(opts.seed, i).to_dict() for i in range(opts.n_speakers)],
        "sentences": [{"number": s.number, "text": s.text(), "syllables": [list(x) for x in s.syllables],
                       "pause_after": s.pause_after}
                      for s in (make_sentence(opts.seed, j) for j in range(1, opts.n_sentences + 1))],
    }


def check_output(out: str | os.PathLike[str], opts: SynthOptions) -> None:
    """Raise CorpusError unless `out` is new, empty, or a corpus made with the same options (resume)."""
    _check_existing(Path(out), {"options": opts.to_dict()})


def _check_existing(root: Path, desc: dict[str, Any]) -> None:
    if root.exists() and not root.is_dir():
        raise CorpusError(f"{root} is a file; give a folder for the synthetic corpus")
    p = root / MANIFEST
    if not p.is_file():
        if root.is_dir() and any(root.iterdir()):
            raise CorpusError(f"{root} exists and is not a synthetic corpus (no {MANIFEST}); "
                              "choose an empty or new folder")
        return
    try:
        old = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise CorpusError(f"cannot read {p} ({e}); delete the folder or choose another one") from None
    if old.get("options") != desc["options"]:
        old_o, new_o = old.get("options", {}), desc["options"]
        diff = ", ".join(f"{k}: {old_o.get(k)} -> {v}" for k, v in new_o.items() if old_o.get(k) != v)
        raise CorpusError(f"{root} holds a synthetic corpus made with other options ({diff}); "
                          "re-run with the same options to resume, or use a new folder")


def generate_corpus(
    out: str | os.PathLike[str],
    n_speakers: int = 4,
    n_sentences: int = 3,
    emotions: Sequence[str] = EMOTIONS,
    levels: Sequence[int] = LEVELS,
    seed: int = 0,
    size: int = 192,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> SynthResult:
    """Generate (or resume) a synthetic corpus in `out`; see the module docstring for the layout.

    progress(done, total) is called after each clip. workers > 1 generates clips in parallel processes.
    Raises ConfigError for bad options and CorpusError if `out` holds something else.
    """
    opts = SynthOptions(n_speakers, n_sentences, tuple(emotions), tuple(int(x) for x in levels), int(seed),
                        size)
    root = Path(out)
    desc = corpus_description(opts)
    _check_existing(root, desc)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / MANIFEST, desc)
    specs = plan_clips(opts)
    names = [make_speaker(seed, i).name for i in range(opts.n_speakers)]
    videos = [clip_paths(root, s, names[s.speaker])[0] for s in specs]
    jobs = [(str(root), opts.seed, s, opts.size) for s in specs]
    written = 0
    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            written += _write_clip_job(job)
            if progress:
                progress(i + 1, len(jobs))
    else:
        # fork where available: no re-import of the caller's __main__ (scripts without a main guard
        # work); the workers use only numpy/scipy/PIL/PyAV, never torch, so inherited threads are harmless.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
            for i, w in enumerate(pool.map(_write_clip_job, jobs, chunksize=1)):
                written += w
                if progress:
                    progress(i + 1, len(jobs))
    return SynthResult(root, opts, videos, written, len(jobs) - written)
