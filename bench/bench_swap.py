"""End-to-end time of `avmdvae swap` on a 10 s 1080p clip pair, with the share of each step.

Two generated 1920x1080, 30 fps, 10 s H.264 + AAC clips (the astronaut photo drifting over a textured
background, as in bench_face.py, B mirrored; synthetic speech from avmdvae.synth as the sound).
Reference-size models (visual VQ-VAE 64x64 -> 8x8x32 / 512 codes, audio VQ-VAE 513 -> 64x8 / 64
codes, MDVAE w 84, z(av) 16, z(a) 8, z(v) 4) with random weights: the time does not depend on training.

Measured after one untimed warm-up swap; each repeat runs the whole swap and then each step alone
(so that both see the same machine load); medians of --repeats:
  swap end to end      ops.swap(A, B, ["w"]) exactly as the CLI runs it (after the model is loaded)
and its steps, each timed alone in the same run:
  decode               media.iter_frames(max_side=640) of A and B + read_audio (what the reader pays)
  face crop + spec     AVModel.read(A) + read(B) minus "decode": MTCNN every 5th frame, tracking,
                       crops, power spectrogram
  encode               stage-1 features + MDVAE posterior of A and B
  decode               MDVAE decoder + stage-1 decoders (faces, power spectrogram)
  griffin-lim          64 iterations of fast Griffin-Lim over 10 s
  mp4 write            256x256 upscaled faces + AAC audio, H.264

Usage: .venv/bin/python bench/bench_swap.py [--repeats 3] [--threads 2] [--seconds 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_face import make_clip  # noqa: E402

from avmdvae import media  # noqa: E402
from avmdvae.constants import SAMPLE_RATE  # noqa: E402
from avmdvae.corpus import PreprocessParams  # noqa: E402
from avmdvae.manipulation import ops  # noqa: E402
from avmdvae.manipulation.model import AVModel  # noqa: E402
from avmdvae.manipulation.swap import combine  # noqa: E402
from avmdvae.models import MDVAE, AudioVQVAE, VisualVQVAE  # noqa: E402
from avmdvae.preprocess import WORK_MAX_SIDE  # noqa: E402


def speech(seconds: float, seed: int) -> np.ndarray:
    """Synthetic speech, sentences of one speaker back to back, `seconds` long."""
    from avmdvae.synth.factors import ClipSpec, make_sentence, make_speaker, make_timeline
    from avmdvae.synth.speech import synthesize

    out, k = [], 1
    spk = make_speaker(seed, seed)
    while sum(len(x) for x in out) < seconds * SAMPLE_RATE:
        spec = ClipSpec(seed, "neutral", 1, k)
        tl = make_timeline(seed, spec, spk, make_sentence(seed, k))
        out.append(synthesize(tl, spk, spec.rng(seed, 1)))
        k += 1
    return np.concatenate(out)[: int(seconds * SAMPLE_RATE)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = int(round(args.seconds * 30))
    tmp = Path(tempfile.mkdtemp(prefix="bench-swap-"))
    frames = make_clip(1080, 1920, n)
    a_path, b_path, out = tmp / "a.mp4", tmp / "b.mp4", tmp / "out.mp4"
    media.write_av(a_path, frames, speech(args.seconds, 0))
    media.write_av(b_path, frames[:, :, ::-1], speech(args.seconds, 1))
    del frames
    torch.manual_seed(0)
    mdvae = MDVAE()
    mdvae.fit_input_stats({"audio": torch.randn(64, 512), "visual": torch.randn(64, 2048)})
    model = AVModel(mdvae, AudioVQVAE(), VisualVQVAE(), PreprocessParams(detector="mtcnn"))
    model.cropper()  # load MTCNN once, as the CLI does before the work
    opts = ops.OutputOptions()
    r = args.repeats

    def decode_only() -> None:
        for p in (a_path, b_path):
            for _ in media.iter_frames(p, max_side=WORK_MAX_SIDE):
                pass
            media.read_audio(p)

    names = ["total", "decode", "read", "encode", "mdecode", "gl", "mp4"]
    times: dict[str, list[float]] = {k: [] for k in names}

    def clock(name: str, fn):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        out = fn()
        times[name].append(time.perf_counter() - t0)
        return out

    with torch.no_grad():
        ops.swap(model, a_path, b_path, ["w"], out, opts)  # warm-up: first-call costs (oneDNN, MTCNN)
        for _ in range(r):  # the whole swap and then each step, so that they see the same load
            clock("total", lambda: ops.swap(model, a_path, b_path, ["w"], out, opts))
            clock("decode", decode_only)
            ca, cb = clock("read", lambda: (model.read(a_path), model.read(b_path)))
            la, lb = clock("encode", lambda: (model.encode(ca), model.encode(cb)))  # noqa: B023
            lat = combine(la, lb, ["w"])
            dec = clock("mdecode", lambda: model.decode(lat))  # noqa: B023
            wave = clock("gl", lambda: model.to_audio(dec.power))  # noqa: B023
            clock("mp4", lambda: ops.write_video(out, dec.faces, wave, model.fps, opts))  # noqa: B023
    med = {k: statistics.median(v) for k, v in times.items()}
    t_total, t_dec, t_read, t_enc = med["total"], med["decode"], med["read"], med["encode"]
    t_mdec, t_gl, t_mp4 = med["mdecode"], med["gl"], med["mp4"]
    steps = [
        ("decode (A and B)", t_dec),
        ("face crop + spectrogram", t_read - t_dec),
        ("encode", t_enc),
        ("decode", t_mdec),
        ("griffin-lim (64 it.)", t_gl),
        ("mp4 write (256x256)", t_mp4),
    ]
    s = sum(t for _, t in steps)
    print(f"# {args.seconds:g} s 1080p pair, {n} frames, torch threads {args.threads}, medians of {r}")
    print("| step | time | share |\n|---|---|---|")
    for name, t in steps:
        print(f"| {name} | {t:.2f} s | {100 * t / s:.0f} % |")
    print(f"| sum of steps | {s:.2f} s | 100 % |")
    print(f"| **swap end to end** | **{t_total:.2f} s** | {t_total / args.seconds:.2f}x real time |")


if __name__ == "__main__":
    main()
