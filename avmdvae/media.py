"""Media I/O with PyAV: decode any container to model-rate RGB frames and 16 kHz mono audio, encode mp4.

Time conventions (shared by `iter_frames`, `read_audio` and `avmdvae.audio`):

* The clock origin t0 is the start of the video stream (its `start_time`, else the first decoded
  frame). Containers such as MPEG-PS start at arbitrary times and their audio and video streams often
  start at different times; everything is measured from t0.
* Video is resampled by timestamp to a constant `fps`: output frame k is the input frame on screen at
  time t0 + k/fps (the last frame whose pts is <= that time). 25, 29.97, 60 fps and variable frame rate
  inputs therefore all map to the same model clock with no drift.
* Audio sample s (at `sample_rate`) is the sound at time t0 + s/sample_rate. Samples before the audio
  stream starts are zeros; samples before t0 are dropped. Encoder priming (AAC) is handled by the
  demuxer/decoder and shows up in the frame pts, which is what we use.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from avmdvae.atomic import atomic_path
from avmdvae.constants import MODEL_FPS, SAMPLE_RATE
from avmdvae.errors import MediaError

# Tolerance when comparing a frame pts with a target time: 1/10_000 of an output frame period (3 us at
# 30 fps). Larger than float rounding of pts * time_base, far smaller than any real frame interval
# (29.97 fps frame 1 is 33 us after 30 fps frame 1 and must not count as shown then).
_PTS_EPS_FRAMES = 1e-4

_VIDEO_SUFFIX_FORMAT = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
_MAX_TRIM_S = 0.1  # at most this much decoded audio past the stream's recorded end counts as padding
_AAC_FRAME = 1024  # samples per AAC frame; we feed the encoder in chunks of this size

# Errors PyAV/FFmpeg raise on unreadable or corrupt input. Everything else is a bug and propagates.
_AV_ERRORS: tuple[type[BaseException], ...] = (av.error.FFmpegError, UnicodeDecodeError, EOFError)


@dataclass
class MediaInfo:
    """What `probe` learns from the container headers (no full decode)."""

    path: str
    duration: float  # seconds (container duration, else the longest stream)
    has_video: bool
    has_audio: bool
    width: int  # 0 when there is no video
    height: int
    fps: float  # average input frame rate (0.0 when unknown or no video)
    n_frames: int  # input video frames (container count, else estimated as duration * fps)
    audio_rate: int  # 0 when there is no audio
    audio_channels: int
    video_codec: str | None
    audio_codec: str | None


# --------------------------------------------------------------------------------------------- open


def _check_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise MediaError(f"{p}: file not found; check the path")
    if p.is_dir():
        raise MediaError(f"{p}: is a folder, not a media file; give the path of a video file")
    if not os.access(p, os.R_OK):
        raise MediaError(f"{p}: not readable (permission denied); fix the file permissions")
    if p.stat().st_size == 0:
        raise MediaError(f"{p}: empty file (0 bytes); re-copy or re-export the media")
    return p


def _open(path: str | os.PathLike[str]) -> av.container.InputContainer:
    p = _check_path(path)
    try:
        return av.open(str(p), "r", metadata_errors="ignore")
    except _AV_ERRORS as e:
        raise MediaError(f"{p}: not a readable media file ({_reason(e)}); check that it is an intact "
                         "video/audio file (truncated downloads cannot be read)") from None
    except OSError as e:
        raise MediaError(f"{p}: cannot open ({e.strerror or e}); check the path and permissions") from None


def _reason(e: BaseException) -> str:
    """A short one-line reason from an FFmpeg error."""
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(msg).split())[:160]


def _video_stream(container: av.container.InputContainer, path: Path | str) -> av.VideoStream:
    if not container.streams.video:
        raise MediaError(f"{path}: no video stream; give a video file (this one has audio only or no media)")
    return container.streams.video[0]


def _audio_stream(container: av.container.InputContainer, path: Path | str) -> av.AudioStream:
    if not container.streams.audio:
        raise MediaError(f"{path}: no audio stream; give a video with sound, or provide the audio separately")
    return container.streams.audio[0]


def _stream_start(stream: av.stream.Stream) -> float | None:
    if stream.start_time is None or stream.time_base is None:
        return None
    return float(stream.start_time * stream.time_base)


def _stream_end(stream: av.stream.Stream) -> float | None:
    start = _stream_start(stream)
    if start is None or stream.duration is None:
        return None
    return start + float(stream.duration * stream.time_base)


def _first_frame_time(path: str | os.PathLike[str]) -> float:
    """Time of the first decoded video frame (used only when the stream has no start_time)."""
    with _open(path) as c:
        s = _video_stream(c, path)
        try:
            for frame in c.decode(s):
                if frame.time is not None:
                    return float(frame.time)
        except _AV_ERRORS:
            pass
    return 0.0


# -------------------------------------------------------------------------------------------- probe


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """Read stream information from the headers. MediaError when the file is not readable media."""
    with _open(path) as c:
        vs = c.streams.video[0] if c.streams.video else None
        aus = c.streams.audio[0] if c.streams.audio else None
        if vs is None and aus is None:
            raise MediaError(f"{path}: contains no audio or video stream; give a video file")
        durations = [float(s.duration * s.time_base) for s in (vs, aus)
                     if s is not None and s.duration is not None and s.time_base is not None]
        duration = c.duration / av.time_base if c.duration is not None else max(durations, default=0.0)
        fps = 0.0
        n_frames = 0
        if vs is not None:
            rate = vs.average_rate or vs.guessed_rate or vs.base_rate
            fps = float(rate) if rate else 0.0
            n_frames = int(vs.frames or 0) or int(round(duration * fps))
        return MediaInfo(
            path=str(path),
            duration=float(duration),
            has_video=vs is not None,
            has_audio=aus is not None,
            width=int(vs.codec_context.width) if vs is not None else 0,
            height=int(vs.codec_context.height) if vs is not None else 0,
            fps=fps,
            n_frames=n_frames,
            audio_rate=int(aus.codec_context.sample_rate or 0) if aus is not None else 0,
            audio_channels=int(aus.codec_context.channels or 0) if aus is not None else 0,
            video_codec=vs.codec_context.name if vs is not None else None,
            audio_codec=aus.codec_context.name if aus is not None else None,
        )


# -------------------------------------------------------------------------------------------- video


def _scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(w, h) with max(w, h) <= max_side and the aspect ratio kept; unchanged when already small."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(frame: av.VideoFrame, max_side: int | None) -> np.ndarray:
    w, h = _scaled_size(frame.width, frame.height, max_side)
    if (w, h) != (frame.width, frame.height):
        frame = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA")
        return frame.to_ndarray()
    return frame.to_ndarray(format="rgb24")


def iter_frames(path: str | os.PathLike[str], fps: float = MODEL_FPS,
                max_side: int | None = None) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames (H, W, 3) resampled by timestamp to a constant `fps`.

    Output frame k is the input frame displayed at time t0 + k/fps (nearest preceding pts), t0 = video
    stream start. The clip lasts until the end of the last input frame (its duration, else the typical
    frame interval), rounded to the nearest whole output frame. With `max_side`, frames are downscaled at
    decode time so that max(H, W) <= max_side (aspect kept). Memory: one or two frames at a time; a
    repeated frame is yielded as the same array object, so copy before modifying frames in place.
    Raises MediaError for unreadable input, no video stream or no decodable frame.
    """
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    p = _check_path(path)
    with _open(p) as c:
        stream = _video_stream(c, p)
        stream.thread_type = "AUTO"
        # pts are rounded to the stream time base (1 ms in Matroska/WebM), so a stored pts may be up to
        # half a tick later than the true time: such a frame still counts as shown at the target time.
        tick = float(stream.time_base) if stream.time_base else 0.0
        eps = min(max(_PTS_EPS_FRAMES / fps, 0.51 * tick), 0.25 / fps)
        t0 = _stream_start(stream)
        default_dt = 1.0 / float(stream.average_rate) if stream.average_rate else None

        k = 0  # next output frame index
        prev: np.ndarray | None = None  # RGB of the last decoded frame
        prev_t = None  # its time (s)
        prev_dur: float | None = None
        last_dt: float | None = None  # last observed inter-frame interval
        n_decoded = 0
        try:
            for frame in c.decode(stream):
                t = frame.time
                if t is None:  # no timestamp: assume a constant rate after the previous one
                    dt = last_dt or default_dt or 1.0 / fps
                    t = (prev_t + dt) if prev_t is not None else (t0 or 0.0)
                t = float(t)
                if t0 is None:
                    t0 = t
                if prev_t is not None and t <= prev_t:  # out-of-order or duplicate pts: skip
                    continue
                rgb = _to_rgb(frame, max_side)
                n_decoded += 1
                if prev is None:
                    # targets before the first frame show the first frame
                    while t0 + k / fps < t - eps:
                        yield rgb
                        k += 1
                else:
                    last_dt = t - prev_t
                    while t0 + k / fps < t - eps:
                        yield prev
                        k += 1
                prev, prev_t = rgb, t
                fd = frame.duration
                prev_dur = float(fd * frame.time_base) if fd and frame.time_base is not None else None
        except _AV_ERRORS as e:
            if prev is None:
                raise MediaError(f"{p}: video cannot be decoded ({_reason(e)}); the file is corrupt or "
                                 "truncated, re-export or re-download it") from None
            # a corrupt or truncated tail: keep the frames decoded so far
        if prev is None or prev_t is None or t0 is None:
            raise MediaError(f"{p}: no decodable video frame; the file is empty, corrupt or truncated")
        dur = prev_dur or last_dt or default_dt or 1.0 / fps
        end = prev_t + dur
        n_total = max(k, 1, int(math.floor((end - t0) * fps + 0.5)))
        while k < n_total:
            yield prev
            k += 1


def read_frames(path: str | os.PathLike[str], fps: float = MODEL_FPS,
                max_side: int | None = None) -> np.ndarray:
    """All frames of `iter_frames` stacked: (N, H, W, 3) uint8."""
    frames = list(iter_frames(path, fps=fps, max_side=max_side))
    return np.stack(frames)


# -------------------------------------------------------------------------------------------- audio


def read_audio(path: str | os.PathLike[str], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream to mono float32 (S,) at `sample_rate`, sample 0 at the video start.

    Channels are averaged (down-mixed) and resampled with libswresample. When the file has a video
    stream, sample 0 is the time of video frame 0 (see module docstring); for audio-only files it is
    the audio stream start. Raises MediaError when there is no audio stream or nothing decodes.
    """
    p = _check_path(path)
    with _open(p) as c:
        astream = _audio_stream(c, p)
        if c.streams.video:
            t0 = _stream_start(c.streams.video[0])
            if t0 is None:
                t0 = _first_frame_time(p)
        else:
            t0 = None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        start_t: float | None = None  # time of the first decoded audio sample
        try:
            for frame in c.decode(astream):
                if start_t is None:
                    start_t = float(frame.time) if frame.time is not None else (
                        _stream_start(astream) or 0.0)
                frame.pts = None  # let the resampler treat the stream as contiguous
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
        except (*_AV_ERRORS, ValueError) as e:  # ValueError: stream parameters change mid-file
            if not chunks and start_t is None:
                raise MediaError(f"{p}: audio cannot be decoded ({_reason(e)}); the file is corrupt or "
                                 "truncated, re-export or re-download it") from None
        try:
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except _AV_ERRORS:
            pass
    if start_t is None or not chunks:
        raise MediaError(f"{p}: audio stream has no decodable samples; the file is corrupt or the audio "
                         "track is empty")
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    # Encoders pad the last frame (AAC: up to 1023 samples); the stream duration excludes it. Trim
    # that padding, but never cut real audio when a container records a wrong duration.
    a_end = _stream_end(astream)
    if a_end is not None:
        true_len = int(round((a_end - start_t) * sample_rate))
        if 0 < true_len < len(audio) <= true_len + _MAX_TRIM_S * sample_rate:
            audio = audio[:true_len]
    if t0 is None:
        t0 = start_t
    offset = int(round((start_t - t0) * sample_rate))  # > 0: audio starts after the video
    if offset > 0:
        audio = np.concatenate([np.zeros(offset, np.float32), audio])
    elif offset < 0:
        audio = audio[-offset:]
    return np.clip(audio, -1.0, 1.0)


# ------------------------------------------------------------------------------------------- writing


def _even_frames(frames: np.ndarray) -> np.ndarray:
    """Pad odd heights/widths by one replicated edge row/column (yuv420p needs even sizes)."""
    _, h, w, _ = frames.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames


def _rate(fps: float) -> Fraction:
    """fps as an exact fraction: 30 -> 30/1, 29.97 -> 2997/100, 30000/1001 -> 30000/1001."""
    return Fraction(fps).limit_denominator(1001)


def write_av(path: str | os.PathLike[str], frames: np.ndarray, audio: np.ndarray | None = None,
             fps: float = MODEL_FPS, sample_rate: int = SAMPLE_RATE) -> None:
    """Write frames (N, H, W, 3) uint8 and optional mono audio (S,) float32 to an mp4 (H.264 + AAC).

    Frame k gets pts k/fps, so the video lasts N/fps; audio is trimmed or zero-padded to
    round(N * sample_rate / fps) samples and starts at time 0 (A/V sync). Odd frame sizes are padded by
    one replicated row/column. The container follows the suffix (.mp4/.m4v/.mov/.mkv; mp4 otherwise).
    The file is written atomically.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be (N, H, W, 3) with N >= 1, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    write_av_stream(path, iter(frames), len(frames), audio, fps=fps, sample_rate=sample_rate)


def write_av_stream(path: str | os.PathLike[str], frames: Iterable[np.ndarray], n_frames: int,
                    audio: np.ndarray | None = None, fps: float = MODEL_FPS,
                    sample_rate: int = SAMPLE_RATE) -> None:
    """`write_av` for frames produced one at a time (bounded memory for long clips).

    `frames` yields exactly `n_frames` RGB uint8 arrays (H, W, 3) of one size (e.g. a generator that
    decodes and upscales chunk by chunk); everything else is as in `write_av`.
    """
    if n_frames < 1:
        raise ValueError(f"need at least one frame, got n_frames={n_frames}")
    n = n_frames
    rate = _rate(fps)
    fmt = _VIDEO_SUFFIX_FORMAT.get(Path(path).suffix.lower(), "mp4")
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError(f"frames is empty, expected n_frames={n}")
    h, w = _even_frames(np.asarray(first)[None]).shape[1:3]
    it = itertools.chain([first], it)
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format=fmt) as c:
        vs = c.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.time_base = 1 / rate
        # mbtree off: x264's macroblock-tree rate control made the same frames encode to different
        # bytes from run to run (measured with PyAV 18); without it the output is reproducible.
        vs.options = {"crf": "18", "preset": "fast", "mbtree": "0"}
        as_ = None
        if audio is not None:
            as_ = c.add_stream("aac", rate=sample_rate, layout="mono")
            as_.codec_context.time_base = Fraction(1, sample_rate)
        a = np.zeros(0, np.float32)
        if as_ is not None:  # trimmed / zero-padded to the video duration
            target = int(round(n * sample_rate / float(rate)))
            a = np.asarray(audio, dtype=np.float32).reshape(-1)[:target]
            a = np.clip(np.pad(a, (0, target - len(a))), -1.0, 1.0)
        a_next = 0  # next audio sample to encode; audio is muxed in step with video (interleaving)
        for k in range(n):
            frame = next(it, None)
            if frame is None:
                raise ValueError(f"frames ended after {k} of n_frames={n}")
            frame = np.asarray(frame)
            if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"frames must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
            frame = _even_frames(frame[None])[0]
            if frame.shape[:2] != (h, w):
                raise ValueError(f"frame {k} is {frame.shape[1]}x{frame.shape[0]}, frame 0 was {w}x{h}")
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = k
            c.mux(vs.encode(vf))
            if as_ is not None:
                a_until = len(a) if k == n - 1 else int((k + 1) * sample_rate / float(rate))
                while a_next < a_until:
                    chunk = np.ascontiguousarray(a[a_next:a_next + _AAC_FRAME])[None, :]
                    af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                    af.sample_rate = sample_rate
                    af.pts = a_next
                    af.time_base = Fraction(1, sample_rate)
                    c.mux(as_.encode(af))
                    a_next += chunk.shape[1]
        if as_ is not None:
            c.mux(as_.encode(None))
        c.mux(vs.encode(None))


def write_audio(path: str | os.PathLike[str], audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono (S,) or (S, C) float audio to wav/flac/ogg (format from the suffix), atomically."""
    import soundfile as sf

    a = np.asarray(audio, dtype=np.float32)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(a, -1.0, 1.0), sample_rate)
