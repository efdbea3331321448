"""Face front end throughput: our strategy vs MTCNN on every full-resolution frame.

Generated talking-head-like clips (the real astronaut photo, face ~1/4 of the frame height, slowly
moving over a textured background) at 1080p and 720p, 30 fps. Measured side by side in one run,
medians of --repeats, in input frames per second:

  decode          media.iter_frames alone (PyAV, H.264 mp4 written by media.write_av)
  crop            FaceCropper().crop_clip on frames already in memory (detection + tracking + crops)
  decode+crop     FaceCropper().crop_clip(media.iter_frames(path)): what preprocessing pays for faces
  full-res MTCNN  MTCNN(keep_all=True).detect on every full-resolution frame (reference, default
                  facenet-pytorch settings, same torch thread count)
  crop/CPU-s      crop again, frames per CPU-second of this process (process_time): on a shared,
                  loaded machine this is what the face front end costs, independent of the load

Usage: .venv/bin/python bench/bench_face.py [--frames 150] [--repeats 3] [--threads 1]
       [--detect-max-side 320] [--min-face 0.15] [--detect-every 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from avmdvae import media
from avmdvae._torchvision_compat import load_mtcnn, uses_stand_in
from avmdvae.face import FaceCropper, _torch_threads

PHOTO = Path(__file__).resolve().parent.parent / "tests" / "data" / "astronaut.png"


def make_clip(height: int, width: int, n: int) -> np.ndarray:
    """(n, height, width, 3) uint8: the photo (face ~1/4 of the height) drifting over a textured ground."""
    rng = np.random.default_rng(0)
    side = int(height * 1.2)  # the 256-px photo's face is 56 px: 1.2 * H * 56 / 256 ~ 0.26 H
    photo = np.asarray(Image.open(PHOTO).convert("RGB").resize((side, side), Image.Resampling.BICUBIC))
    background = rng.integers(40, 200, (height // 60, width // 60, 3), dtype=np.uint8)
    background = np.asarray(Image.fromarray(background).resize((width, height), Image.Resampling.BILINEAR))
    frames = np.empty((n, height, width, 3), np.uint8)
    for k in range(n):
        x = int(width * 0.3 + width * 0.05 * np.sin(2 * np.pi * k / 90))
        y = int(height * 0.1 + height * 0.02 * np.sin(2 * np.pi * k / 60))
        frames[k] = background
        h, w = min(side, height - y), min(side, width - x)
        frames[k, y : y + h, x : x + w] = photo[:h, :w]
    return frames


def timed(fn, repeats: int, clock=time.perf_counter) -> float:
    """Median time of fn() over `repeats` runs (seconds; wall clock unless `clock` says otherwise)."""
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for detection (default: FaceCropper's, 1); also set globally")
    parser.add_argument("--reference-frames", type=int, default=6, help="frames for the full-res reference")
    parser.add_argument("--detect-max-side", type=int, default=None)
    parser.add_argument("--min-face", type=float, default=None)
    parser.add_argument("--detect-every", type=int, default=None)
    parser.add_argument("--sizes", default="1080,720")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kw = {k: v for k, v in (("detect_max_side", args.detect_max_side), ("min_face", args.min_face),
                            ("detect_every", args.detect_every), ("threads", args.threads)) if v is not None}
    cropper = FaceCropper(**kw)
    reference = load_mtcnn()(keep_all=True)
    threads = cropper.threads or torch.get_num_threads()
    print(f"torch threads {threads}, NMS stand-in {uses_stand_in()}, FaceCropper({kw}), "
          f"{args.frames} frames, median of {args.repeats}")
    print("| input | decode | crop | decode+crop | full-res MTCNN | decode+crop / full-res | crop/CPU-s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for height in (int(s) for s in args.sizes.split(",")):
            width = height * 16 // 9
            frames = make_clip(height, width, args.frames)
            path = Path(tmp) / f"clip{height}.mp4"
            media.write_av(path, frames)
            n = args.frames
            cropper.crop_clip(frames[:10])  # warm-up (model load)
            t_decode = timed(lambda p=path: sum(1 for _ in media.iter_frames(p)), args.repeats)
            t_crop = timed(lambda f=frames: cropper.crop_clip(f), args.repeats)
            t_both = timed(lambda p=path: cropper.crop_clip(media.iter_frames(p)), args.repeats)
            ref = frames[: args.reference_frames]
            with _torch_threads(cropper.threads):  # same thread count as ours
                reference.detect(ref[:1])
                t_ref = timed(lambda r=ref: [reference.detect(f) for f in r], max(1, args.repeats // 2))
            fps_ref = len(ref) / t_ref
            cpu_crop = timed(lambda f=frames: cropper.crop_clip(f), args.repeats, time.process_time)
            print(f"| {width}x{height} | {n / t_decode:.0f} | {n / t_crop:.0f} | {n / t_both:.0f} | "
                  f"{fps_ref:.1f} | {n / t_both / fps_ref:.0f}x | {n / cpu_crop:.0f} |", flush=True)


if __name__ == "__main__":
    main()
