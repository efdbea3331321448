"""Benchmark: video decode throughput (with/without decode-time downscale) and the audio front end.

Run: .venv/bin/python bench/bench_media_audio.py [--frames 150] [--repeats 3]
Generates its own talking-head-sized content (a moving gradient with a bouncing disc), so it needs no
data. Prints medians of several repeats; all ratios come from the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from avmdvae import audio as A
from avmdvae import media
from avmdvae.constants import N_FFT, SAMPLE_RATE


def make_video(path: Path, width: int, height: int, n: int) -> None:
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "23"}
        for k in range(n):
            cx = width / 2 + width / 4 * np.sin(k / 10)
            disc = ((xx - cx) ** 2 + (yy - height / 2) ** 2) < (height / 5) ** 2
            img = np.stack([(xx + 3 * k) % 256, (yy + k) % 256, np.where(disc, 230, 60)], -1).astype(np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = k
            c.mux(vs.encode(f))
        c.mux(vs.encode(None))


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"torch threads {torch.get_num_threads()}, PyAV {av.__version__}")
    with tempfile.TemporaryDirectory() as d:
        for w, h in ((1920, 1080), (1280, 720)):
            p = Path(d) / f"v{h}.mp4"
            make_video(p, w, h, args.frames)
            for max_side in (None, 480):
                def run(max_side=max_side, p=p) -> None:
                    for _ in media.iter_frames(p, max_side=max_side):
                        pass
                dt = timed(run, args.repeats)
                print(f"decode {h}p max_side={max_side}: {args.frames / dt:7.1f} frames/s")

    sr = SAMPLE_RATE
    x = torch.randn(60 * sr) * 0.1  # 60 s
    n = A.n_frames_for(len(x))
    dt = timed(lambda: A.power_spectrogram(x), args.repeats)
    print(f"power_spectrogram 60 s ({n} frames): {dt * 1000:.1f} ms ({60 / dt:.0f}x real time)")
    spec = A.stft(x)
    dt = timed(lambda: A.istft(spec), args.repeats)
    print(f"istft 60 s: {dt * 1000:.1f} ms")
    p10 = A.power_spectrogram(x[: 10 * sr])
    dt = timed(lambda: A.griffin_lim(p10, n_iter=64, generator=torch.Generator().manual_seed(0)),
               args.repeats)
    print(f"griffin_lim 10 s, 64 iterations: {dt:.2f} s ({10 / dt:.1f}x real time)")
    # the same front end with torch.stft (integer hop 533: drifts, shown for speed reference only)
    win = torch.hann_window(N_FFT)
    dt = timed(lambda: torch.stft(x, N_FFT, 533, window=win, return_complex=True), args.repeats)
    print(f"torch.stft reference 60 s (hop 533): {dt * 1000:.1f} ms")


if __name__ == "__main__":
    main()
