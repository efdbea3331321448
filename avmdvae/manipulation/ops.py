"""Media-level operations behind `avmdvae resynth | swap | interpolate | denoise`.

Each reads video files, works on the latents and writes an mp4 (H.264 + AAC, atomic) of the decoded
64x64 faces, upscaled to `view_size` for viewing unless `native_size`, with the decoded audio:

    resynth      encode -> decode (analysis-resynthesis)
    swap         A's latents with the named factors taken from B (swap.combine)
    interpolate  a video whose named factors go from A's (first frame) to B's (last frame), and a
                 grid PNG with one row per step alpha = 0, 1/(K-1), ..., 1
    denoise      (optionally corrupt the input, or drop a modality) -> encode -> decode, with
                 before/after metrics against the clean input

Every output (the video, --sheet, --grid, --metrics) is checked before the work starts
(`check_paths`: names and formats, not an input, writable) and they are written all or none
(avmdvae.outputs).

Audio: fast Griffin-Lim on the decoded power spectrogram, or with phase="source" the STFT phase of
the input (A for swap/interpolate; the corrupted input for denoise, which is what a user has).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avmdvae import domain, media
from avmdvae.constants import Progress, no_progress
from avmdvae.errors import ConfigError
from avmdvae.manipulation import noise as noise_mod
from avmdvae.manipulation.model import AVModel, Clip, Decoded
from avmdvae.manipulation.sheets import SheetRow, image_format, write_sheet
from avmdvae.manipulation.swap import check_factors, combine
from avmdvae.manipulation.swap import interpolate as interp_latents
from avmdvae.outputs import all_or_nothing, check_outputs

VIEW_SIZE = 256  # default output face size: 64 px x 4 (integer factor, still small files)
PHASES = ("griffin-lim", "source")


@dataclass
class OutputOptions:
    native_size: bool = False  # write the 64x64 faces as they are
    view_size: int = VIEW_SIZE
    side_by_side: bool = False  # input crop | result
    phase: str = "griffin-lim"  # or "source"
    gl_iters: int = 64
    sheet: Path | None = None  # contact sheet (.png or .jpg)
    seed: int = 0

    def check(self) -> None:
        if self.phase not in PHASES:
            raise ConfigError(f"--phase {self.phase!r}: use griffin-lim or source")
        if self.view_size < 16:
            raise ConfigError(f"--view-size {self.view_size} is too small (>= 16)")
        if self.gl_iters < 1:
            raise ConfigError(f"--gl-iters {self.gl_iters}: give at least 1 Griffin-Lim iteration")
        if self.sheet is not None:
            image_format(self.sheet)


@dataclass
class Result:
    output: Path
    n_frames: int
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)
    extra_outputs: list[Path] = field(default_factory=list)


def check_output(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.suffix.lower() not in (".mp4", ".m4v", ".mov", ".mkv"):
        raise ConfigError(f"output {p}: use a video name ending in .mp4 (or .mov/.mkv)")
    if p.exists() and p.is_dir():
        raise ConfigError(f"output {p} is a folder: give a file name ending in .mp4")
    return p


def grid_path(output: str | os.PathLike[str], grid: str | os.PathLike[str] | None) -> Path:
    """interpolate's grid image: `grid`, or the output's name with .png."""
    return Path(grid) if grid is not None else Path(output).with_suffix(".png")


def check_paths(
    output: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    opts: OutputOptions,
    grid: str | os.PathLike[str] | None = None,
    metrics: str | os.PathLike[str] | None = None,
) -> Path:
    """Check every output of a command before its work: names and formats, none of them an input or
    another output, all writable (ConfigError, one line). Returns the video's path."""
    out = check_output(output)
    opts.check()
    if grid is not None:
        image_format(grid, "--grid")
    check_outputs({"-o": out, "--sheet": opts.sheet, "--grid": grid, "--metrics": metrics}, inputs=inputs)
    return out


def write_video(
    path: Path,
    faces: np.ndarray,
    audio: np.ndarray,
    fps: float,
    opts: OutputOptions,
    left: np.ndarray | None = None,
) -> None:
    """faces (N, s, s, 3) uint8 (+ optional `left` panel of the same length) and audio -> mp4, streamed."""
    size = faces.shape[1] if opts.native_size else opts.view_size
    stream: Iterable[np.ndarray] = upscale_iter(faces, size)
    if opts.side_by_side and left is not None:
        if len(left) != len(faces):
            raise ValueError("side-by-side panels differ in length")
        stream = hstack_iter(upscale_iter(left, size), stream)
    media.write_av_stream(path, stream, len(faces), audio, fps=fps)


def _audio(
    model: AVModel, dec: Decoded, opts: OutputOptions, phase_source: np.ndarray | None, progress: Progress
) -> np.ndarray:
    src = phase_source if opts.phase == "source" else None
    return model.to_audio(dec.power, phase_from=src, n_iter=opts.gl_iters, seed=opts.seed, progress=progress,
                          loudness_from=phase_source)


def _write_outputs(
    model: AVModel,
    clip: Clip,
    dec: Decoded,
    out: Path,
    opts: OutputOptions,
    input_rows: list[SheetRow],
    label: str,
    progress: Progress,
) -> Result:
    """Decoded media of `clip` -> audio (Griffin-Lim or clip's phase), mp4, and the optional sheet."""
    wave = _audio(model, dec, opts, clip.audio, progress)
    res = Result(out, clip.n_frames, clip.seconds)
    with all_or_nothing() as stage:
        write_video(stage(out), dec.faces, wave, model.fps, opts, left=clip.faces)
        if opts.sheet is not None:
            write_sheet(stage(opts.sheet), [*input_rows, SheetRow(label, dec.faces, dec.power)])
            res.extra_outputs.append(Path(opts.sheet))
    return res


def resynth(
    model: AVModel,
    video: str | os.PathLike[str],
    output: str | os.PathLike[str],
    opts: OutputOptions | None = None,
    progress: Progress = no_progress,
) -> Result:
    opts = opts or OutputOptions()
    out = check_paths(output, [video], opts)
    clip = model.read(video, progress)
    domain.check_inputs(model, [clip])
    dec = model.decode(model.encode(clip, progress=progress), progress)
    return _write_outputs(model, clip, dec, out, opts, [SheetRow("input", clip.faces, clip.power)],
                          "resynthesis", progress)


def swap(
    model: AVModel,
    video_a: str | os.PathLike[str],
    video_b: str | os.PathLike[str],
    factors: Sequence[str],
    output: str | os.PathLike[str],
    opts: OutputOptions | None = None,
    length: str = "stretch",
    progress: Progress = no_progress,
) -> Result:
    """A's video with `factors` (subset of w, zav, za, zv) taken from B; A's length (swap.py)."""
    opts = opts or OutputOptions()
    if not factors:
        raise ConfigError("name at least one --factor to take from B (w, zav, za, zv)")
    out = check_paths(output, [video_a, video_b], opts)
    factors = check_factors(factors, length)  # before the slow work
    clip_a = model.read(video_a, progress)
    clip_b = model.read(video_b, progress)
    domain.check_inputs(model, [clip_a, clip_b])
    lat = combine(
        model.encode(clip_a, progress=progress), model.encode(clip_b, progress=progress), factors, length
    )
    dec = model.decode(lat, progress)
    inputs = [SheetRow("A (input)", clip_a.faces, clip_a.power), SheetRow("B (input)", clip_b.faces, clip_b.power)]
    return _write_outputs(model, clip_a, dec, out, opts, inputs, f"A with {'+'.join(factors)} from B", progress)


def interpolate(
    model: AVModel,
    video_a: str | os.PathLike[str],
    video_b: str | os.PathLike[str],
    factors: Sequence[str],
    steps: int,
    output: str | os.PathLike[str],
    grid: str | os.PathLike[str] | None = None,
    opts: OutputOptions | None = None,
    length: str = "stretch",
    progress: Progress = no_progress,
) -> Result:
    """Video: alpha goes linearly from 0 (A) at the first frame to 1 (B) at the last; grid: K rows."""
    opts = opts or OutputOptions()
    if steps < 2:
        raise ConfigError(f"--steps {steps}: need at least 2 (A and B)")
    if not factors:
        raise ConfigError("name at least one --factor to interpolate (w, zav, za, zv)")
    grid_out = grid_path(output, grid)
    out = check_paths(output, [video_a, video_b], opts, grid=grid_out)
    factors = check_factors(factors, length)
    clip_a = model.read(video_a, progress)
    clip_b = model.read(video_b, progress)
    domain.check_inputs(model, [clip_a, clip_b])
    la, lb = model.encode(clip_a, progress=progress), model.encode(clip_b, progress=progress)
    n = clip_a.n_frames
    alpha = torch.linspace(0, 1, n) if n > 1 else torch.zeros(1)
    dec = model.decode(interp_latents(la, lb, factors, alpha, length), progress)
    wave = _audio(model, dec, opts, clip_a.audio, progress)
    rows = []
    for k in range(steps):
        a = k / (steps - 1)
        d = model.decode(interp_latents(la, lb, factors, a, length))
        rows.append(
            SheetRow(
                f"alpha = {a:.2f}" + (" (A)" if k == 0 else " (B)" if k == steps - 1 else ""),
                d.faces,
                d.power,
            )
        )
        progress("grid", k + 1, steps)
    res = Result(out, n, clip_a.seconds, extra_outputs=[grid_out])
    with all_or_nothing() as stage:
        write_video(stage(out), dec.faces, wave, model.fps, opts, left=clip_a.faces)
        write_sheet(stage(grid_out), rows)
        if opts.sheet is not None:
            write_sheet(
                stage(opts.sheet),
                [
                    SheetRow("A (input)", clip_a.faces, clip_a.power),
                    SheetRow("B (input)", clip_b.faces, clip_b.power),
                    SheetRow("A -> B over time", dec.faces, dec.power),
                ],
            )
            res.extra_outputs.append(Path(opts.sheet))
    return res


# ---------------------------------------------------------------------------------------- denoise
def corrupt(model: AVModel, clip: Clip, spec: noise_mod.NoiseSpec, seed: int = 0) -> Clip:
    """A copy of `clip` with one modality corrupted (noise.py)."""
    from avmdvae import audio as audio_mod

    rng = np.random.default_rng(seed)
    if spec.modality == "visual":
        return Clip(
            noise_mod.corrupt_faces(clip.faces, spec, rng), clip.power, clip.audio, clip.fps, clip.source
        )
    voices: list[np.ndarray] = []
    if spec.kind == "babble" and model.run is not None:
        voices = noise_mod.corpus_voices(
            model.run.corpus.get("path", ""), exclude_source=clip.source, seed=seed
        )
    noisy = noise_mod.add_audio_noise(clip.audio, spec, rng, voices or None)
    power = audio_mod.power_spectrogram(torch.from_numpy(noisy), fps=clip.fps, n_frames=clip.n_frames).numpy()
    return Clip(clip.faces, power, noisy, clip.fps, clip.source)


def visual_scores(clean: np.ndarray, est: np.ndarray) -> dict[str, float]:
    from avmdvae.evaluation.metrics import face_metrics

    return {k: float(v) for k, v in face_metrics(clean, est).items()}


def audio_scores(clean: Clip, power: np.ndarray, wave: np.ndarray) -> dict[str, float]:
    """Log-spectral distance (dB, on power spectrograms: independent of phase), STOI and SI-SDR."""
    from avmdvae.evaluation import metrics as m

    out = {"lsd_db": float(m.log_spectral_distance(clean.power, power))}
    if domain.audio_unscorable(clean) is not None:  # denoise records why STOI and SI-SDR are missing
        return out
    try:
        out["stoi"] = float(m.stoi(clean.audio, wave))
    except Exception:  # noqa: BLE001 - too short or pystoi missing: LSD still reported
        pass
    out["si_sdr_db"] = float(m.si_sdr(clean.audio, wave))
    return out


def denoise(
    model: AVModel,
    video: str | os.PathLike[str],
    output: str | os.PathLike[str],
    add_noise: str | None = None,
    drop: str | None = None,
    opts: OutputOptions | None = None,
    metrics_path: str | os.PathLike[str] | None = None,
    impute_iters: int = 0,
    progress: Progress = no_progress,
) -> Result:
    """Reconstruct with the help of the other modality; metrics vs the clean input when it is known.

    metrics = {"audio": {"before": {...}, "after": {...}}, "visual": {...}} for the corrupted (or
    dropped) modality; "before" compares the corrupted input with the clean one ("after" only for
    a dropped modality, which has no input).
    """
    from avmdvae.atomic import write_json

    opts = opts or OutputOptions()
    out = check_paths(output, [video], opts, metrics=metrics_path)
    spec = noise_mod.parse_noise(add_noise) if add_noise else None
    if drop is not None and drop not in ("audio", "visual"):
        raise ConfigError(f"--drop {drop!r}: use audio or visual")
    clean = model.read(video, progress)
    domain.check_inputs(model, [clean])
    noisy = corrupt(model, clean, spec, opts.seed) if spec else clean
    lat = model.encode(noisy, drop=drop, impute_iters=impute_iters, progress=progress)  # type: ignore[arg-type]
    dec = model.decode(lat, progress)
    wave = _audio(model, dec, opts, noisy.audio, progress)
    metrics: dict[str, Any] = {}
    judged = {m for m in (spec.modality if spec else None, drop) if m}
    if spec is not None or drop is not None:
        for m in sorted(judged):
            entry: dict[str, Any] = {}
            if m == "visual":
                if spec is not None and spec.modality == "visual" and drop != "visual":
                    entry["before"] = visual_scores(clean.faces, noisy.faces)
                entry["after"] = visual_scores(clean.faces, dec.faces)
            else:
                if spec is not None and spec.modality == "audio" and drop != "audio":
                    entry["before"] = audio_scores(clean, noisy.power, noisy.audio)
                entry["after"] = audio_scores(clean, dec.power, wave)
                why = domain.audio_unscorable(clean)
                if why is not None:
                    entry["not_computable"] = {"stoi": why, "si_sdr_db": why}
                    domain.log.warning(f"note: STOI and SI-SDR not computable: {why}")
            metrics[m] = entry
        metrics["corruption"] = str(spec) if spec else None
        metrics["drop"] = drop
    res = Result(out, clean.n_frames, clean.seconds, metrics=metrics)
    with all_or_nothing() as stage:
        write_video(stage(out), dec.faces, wave, model.fps, opts, left=noisy.faces)
        if metrics_path is not None:
            write_json(stage(metrics_path), metrics)
            res.extra_outputs.append(Path(metrics_path))
        if opts.sheet is not None:
            rows = [SheetRow("clean input", clean.faces, clean.power)]
            if spec is not None:
                rows.append(SheetRow(f"corrupted ({spec})", noisy.faces, noisy.power))
            rows.append(SheetRow("reconstruction" + (f" ({drop} dropped)" if drop else ""), dec.faces, dec.power))
            write_sheet(stage(opts.sheet), rows)
            res.extra_outputs.append(Path(opts.sheet))
    return res


# ---------------------------------------------------------------------------------------------- frames
def upscale(faces: np.ndarray, size: int) -> np.ndarray:
    """(N, s, s, 3) uint8 -> (N, size, size, 3) uint8 by bicubic resampling (PIL)."""
    from PIL import Image

    if faces.shape[1] == size:
        return faces
    out = np.empty((len(faces), size, size, 3), np.uint8)
    for i, f in enumerate(faces):
        out[i] = np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC))
    return out


def upscale_iter(faces: np.ndarray, size: int, chunk: int = 64) -> Iterator[np.ndarray]:
    """Frames of `upscale`, one at a time (bounded memory for long clips)."""
    for a in range(0, len(faces), chunk):
        yield from upscale(faces[a : a + chunk], size)


def hstack_iter(*streams: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for frames in zip(*streams, strict=True):
        yield np.concatenate(frames, axis=1)
