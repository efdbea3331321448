"""Media I/O on files generated here with PyAV (frames spell their own index; audio carries clicks)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from avmdvae import media
from avmdvae.constants import SAMPLE_RATE
from avmdvae.errors import MediaError
from tests._mediagen import H, W, clicks, encode, frame_index, index_frame

SR = SAMPLE_RATE
CLICK_TIMES = [0.5, 1.0, 1.7]  # seconds after the start of the video


def click_offsets(audio: np.ndarray, times: list[float], search: int = 300) -> list[int]:
    """Offset (samples) of the loudest sample near each expected click position."""
    out = []
    for t in times:
        c = int(round(t * SR))
        seg = np.abs(audio[c - search:c + search])
        out.append(int(np.argmax(seg)) - search)
    return out


def one_line_media_error(fn, *args, **kwargs) -> str:
    with pytest.raises(MediaError) as ei:
        fn(*args, **kwargs)
    msg = str(ei.value)
    assert msg and "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------- round trip


def test_write_av_round_trip(tmp_path: Path) -> None:
    n = 45
    frames = np.stack([index_frame(k) for k in range(n)])
    sig = clicks(CLICK_TIMES[:2], SR, n / 30, channels=1)[0]
    out = tmp_path / "rt.mp4"
    media.write_av(out, frames, sig)
    info = media.probe(out)
    assert (info.has_video, info.has_audio, info.width, info.height) == (True, True, W, H)
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert info.fps == pytest.approx(30.0) and info.duration == pytest.approx(1.5, abs=0.07)
    got = media.read_frames(out)
    assert got.shape == frames.shape and got.dtype == np.uint8
    assert [frame_index(f) for f in got] == list(range(n))
    assert np.abs(got.astype(int) - frames).mean() < 3.0
    audio = media.read_audio(out)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - n * SR / 30) <= 1  # encoder padding trimmed: duration N/fps
    assert all(abs(o) <= 1 for o in click_offsets(audio, CLICK_TIMES[:2]))  # A/V sync
    assert not list(tmp_path.glob(".*tmp*"))  # atomic: no temporary left behind


def test_write_av_trims_pads_audio_and_fixes_odd_sizes(tmp_path: Path) -> None:
    frames = np.full((10, 33, 47, 3), 120, np.uint8)
    out = tmp_path / "odd.mp4"
    media.write_av(out, frames, np.zeros(100_000, np.float32), fps=25.0)  # audio far too long
    got = media.read_frames(out, fps=25.0)
    assert got.shape == (10, 34, 48, 3)  # padded to even by edge replication
    assert np.abs(got.astype(int) - 120).max() <= 3
    assert abs(len(media.read_audio(out)) - 10 * SR // 25) <= 1
    media.write_av(tmp_path / "short.mp4", frames, np.zeros(10, np.float32), fps=25.0)  # too short
    assert abs(len(media.read_audio(tmp_path / "short.mp4")) - 10 * SR // 25) <= 1
    media.write_av(tmp_path / "silent.mp4", frames[:, :32, :46], None)
    assert not media.probe(tmp_path / "silent.mp4").has_audio


def test_write_audio_round_trip(tmp_path: Path) -> None:
    sig = clicks([0.25], SR, 0.5, channels=1)[0]
    media.write_audio(tmp_path / "a.wav", sig)
    back = media.read_audio(tmp_path / "a.wav")
    assert len(back) == len(sig) and np.abs(back - sig).max() < 1e-3


def test_max_side_downscales_at_decode(tmp_path: Path) -> None:
    p = encode(tmp_path / "big.mp4", n_frames=6, size=(256, 128))
    small = media.read_frames(p, max_side=64)
    assert small.shape == (6, 32, 64, 3)
    assert [frame_index(f) for f in small] == list(range(6))
    assert media.read_frames(p, max_side=1000).shape == (6, 128, 256, 3)


# ------------------------------------------------------------------------- frame-rate normalisation


@pytest.mark.parametrize("rate", [Fraction(25), Fraction(30000, 1001), Fraction(60), Fraction(30)],
                         ids=["25", "29.97", "60", "30"])
def test_frame_rate_normalised_by_timestamp(tmp_path: Path, rate: Fraction) -> None:
    n_in = int(round(2 * rate))  # 2 s of input
    p = encode(tmp_path / "r.mp4", n_frames=n_in, rate=rate)
    got = [frame_index(f) for f in media.iter_frames(p, fps=30.0)]
    # output frame k shows input frame floor(k/30 * rate): the last one at or before time k/30
    expected = [int(Fraction(k, 30) * rate) for k in range(len(got))]
    assert got == expected
    assert len(got) == round(n_in / rate * 30)


def test_variable_frame_rate_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    times_ms = np.cumsum(rng.integers(20, 60, size=60))
    times_ms = np.concatenate([[0], times_ms])
    # keep the test unambiguous: no input frame within 2 ms of an output frame time k/30
    grid = np.arange(0, times_ms[-1] + 100) * 1000 / 30
    times_ms = np.array([t for t in times_ms if t == 0 or np.min(np.abs(grid - t)) > 2])
    p = encode(tmp_path / "vfr.mkv", pts=[Fraction(int(t), 1000) for t in times_ms])
    got = [frame_index(f) for f in media.iter_frames(p)]
    n_check = int(times_ms[-1] * 30 // 1000) + 1  # outputs up to the last input frame time
    expected = [int(np.searchsorted(times_ms, k * 1000 / 30, side="right")) - 1 for k in range(n_check)]
    assert got[:n_check] == expected
    assert n_check <= len(got) <= n_check + 3
    assert all(g == len(times_ms) - 1 for g in got[n_check:])


# -------------------------------------------------------------------------------- audio formats


@pytest.mark.parametrize(
    ("ext", "vcodec", "acodec", "rate", "fmt", "start", "tol"),
    [
        ("mp4", "libx264", "aac", 48_000, None, 0.0, 1),
        ("mp4", "libx264", "aac", 44_100, None, 0.0, 1),
        # AAC priming with a delayed audio start is only signalled to within a few input samples
        ("mp4", "libx264", "aac", 48_000, None, 0.25, 16),
        ("mkv", "libx264", "pcm_s16le", 44_100, None, 0.25, 1),
        ("mov", "libx264", "pcm_s16le", 48_000, None, 0.25, 1),
        ("mkv", "libx264", "flac", 44_100, None, 0.25, 1),
        ("mkv", "libx264", "mp2", 44_100, None, 0.25, 1),
        ("mpg", "mpeg2video", "mp2", 48_000, "mpeg", 0.25, 1),
        ("avi", "mpeg4", "pcm_s16le", 44_100, None, 0.0, 1),
        # WebM stores times in whole milliseconds: 1 ms = 16 samples
        ("webm", "libvpx", "libopus", 48_000, None, 0.25, 17),
    ],
)
def test_containers_and_audio_codecs_align(tmp_path: Path, ext: str, vcodec: str, acodec: str, rate: int,
                                           fmt: str | None, start: float, tol: int) -> None:
    dur = 2.0
    sig = clicks([t - start for t in CLICK_TIMES], rate, dur - start, channels=2)
    p = encode(tmp_path / f"in.{ext}", n_frames=60, vcodec=vcodec, audio=sig, acodec=acodec,
               sample_rate=rate, audio_start=start, fmt=fmt)
    info = media.probe(p)
    assert info.has_audio and info.audio_rate == rate and info.audio_channels == 2
    assert [frame_index(f) for f in media.read_frames(p)] == list(range(60))
    audio = media.read_audio(p)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - dur * SR) < 0.05 * SR
    if start > 0:  # before the audio stream starts: silence (zeros), not shifted audio
        assert np.abs(audio[: int(0.9 * start * SR)]).max() < 1e-3
    offsets = click_offsets(audio, CLICK_TIMES)
    assert all(abs(o) <= tol for o in offsets), offsets


def test_sixty_second_clip_has_no_drift(tmp_path: Path) -> None:
    """Clicks at video-frame times near the end of a 60 s clip land on their samples and frames."""
    from avmdvae.audio import frame_centers, power_spectrogram

    n = 1800  # 60 s at 30 fps
    click_frames = [5, 1000, 1790, 1795, 1799]
    sig = clicks([k / 30 for k in click_frames], 48_000, 60.0, channels=2, tone_hz=None)
    p = encode(tmp_path / "long.mp4", n_frames=n, audio=sig, size=(32, 32))
    frames = list(media.iter_frames(p))
    assert len(frames) == n and [frame_index(f) for f in frames[-3:]] == [n - 3, n - 2, n - 1]
    audio = media.read_audio(p)
    centers = frame_centers(n).numpy()
    for k in click_frames:
        c = int(centers[k])
        assert abs(int(np.argmax(np.abs(audio[c - 200:c + 200]))) - 200) <= 1
    energy = power_spectrogram(audio, n_frames=n).sum(-1).numpy()  # (N,)
    for k in click_frames:
        assert int(np.argmax(energy[k - 2:k + 3])) == 2  # the click's own spectrogram frame


# ----------------------------------------------------------------------------------- bad input


def test_missing_file_and_folder(tmp_path: Path) -> None:
    assert "not found" in one_line_media_error(media.read_frames, tmp_path / "nope.mp4")
    one_line_media_error(media.read_audio, tmp_path / "nope.mp4")
    one_line_media_error(media.probe, tmp_path)


def test_not_a_media_file(tmp_path: Path) -> None:
    p = tmp_path / "notes.mp4"
    p.write_text("this is a text file, not a video\n" * 20)
    for fn in (media.probe, media.read_frames, media.read_audio):
        one_line_media_error(fn, p)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert "empty" in one_line_media_error(media.read_frames, empty)


def test_truncated_mp4(tmp_path: Path) -> None:
    p = encode(tmp_path / "full.mp4", n_frames=30, audio=clicks([0.5], 48_000, 1.0))
    cut = tmp_path / "cut.mp4"
    data = p.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # moov atom (at the end) is lost
    for fn in (media.probe, media.read_frames, media.read_audio):
        one_line_media_error(fn, cut)


def test_truncated_or_corrupt_stream_data_never_tracebacks(tmp_path: Path) -> None:
    """Index at the front (faststart), data cut or overwritten: frames so far, or a MediaError."""
    src = tmp_path / "src.mp4"
    with av.open(str(src), "w", options={"movflags": "faststart"}) as c:
        vs = c.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        for k in range(30):
            f = av.VideoFrame.from_ndarray(index_frame(k), format="rgb24")
            f.pts = k
            c.mux(vs.encode(f))
        c.mux(vs.encode(None))
    data = src.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    junk = bytearray(data)
    rng = np.random.default_rng(1)
    junk[len(data) // 3:] = rng.integers(0, 256, len(data) - len(data) // 3, dtype=np.uint8).tobytes()
    bad = tmp_path / "junk.mp4"
    bad.write_bytes(bytes(junk))
    for p in (cut, bad):
        try:
            frames = media.read_frames(p)
        except MediaError as e:
            assert "\n" not in str(e)
        else:
            assert frames.ndim == 4 and 1 <= len(frames) <= 31


def test_no_audio_stream(tmp_path: Path) -> None:
    p = encode(tmp_path / "silent.mp4", n_frames=10)
    assert "no audio stream" in one_line_media_error(media.read_audio, p)
    assert not media.probe(p).has_audio


def test_no_video_stream(tmp_path: Path) -> None:
    p = encode(tmp_path / "voice.m4a", audio=clicks([0.2], 48_000, 0.5), fmt="mp4")
    assert "no video stream" in one_line_media_error(media.read_frames, p)
    wav = tmp_path / "voice.wav"
    media.write_audio(wav, np.zeros(1600, np.float32))
    one_line_media_error(media.read_frames, wav)
    assert len(media.read_audio(p)) == pytest.approx(0.5 * SR, abs=2)  # audio-only: starts at 0


def test_zero_frames(tmp_path: Path) -> None:
    p = tmp_path / "zero.mp4"
    with av.open(str(p), "w") as c:
        vs = c.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        c.mux(vs.encode(None))
    one_line_media_error(media.read_frames, p)
    with pytest.raises(ValueError):
        media.write_av(tmp_path / "none.mp4", np.zeros((0, 8, 8, 3), np.uint8), None)
