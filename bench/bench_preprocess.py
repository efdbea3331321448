"""Preprocessing throughput (input video frames per second).

Measured side by side in one run, on generated talking-head videos (a drawn face moving slowly on a
textured, slowly panning background, H.264 crf 23 + AAC, 30 fps):

* decode:        media.iter_frames at full resolution (RGB), nothing else: the floor of any pipeline
* decode@work:   media.iter_frames downscaled to preprocess.WORK_MAX_SIDE by the decoder's scaler
* preprocess:    preprocess.process_clip: decode@work + MTCNN on 1 frame in 5 (downscaled, batched),
                 track, smooth, crop, resize + audio decode + spectrogram. Face detection included.
* per-frame full-res MTCNN: the naive approach, decode + MTCNN on every full-resolution frame. Too
                 slow to run on a whole clip: MTCNN is timed on a subset of frames (--naive-frames,
                 evenly spread) and the per-frame cost extrapolated to the clip, plus the measured
                 full-resolution decode time and the same crop cost. Reported as such.

Usage:  .venv/bin/python bench/bench_preprocess.py [--repeats 3] [--seconds 10] [--write-docs]
Figures are medians over --repeats runs. --write-docs replaces the "Preprocessing" section of
docs/benchmarks.md with the results and the command.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, ImageDraw

from avmdvae import media
from avmdvae import preprocess as pp
from avmdvae.corpus import PreprocessParams
from avmdvae.face import FaceCropper
from avmdvae.layouts import SourceClip

FPS = 30
SR = 16_000
RESOLUTIONS = {"1080p": (1920, 1080), "720p": (1280, 720)}
TARGETS = {"1080p": 60.0, "720p": 150.0}  # input frames/s (issue 2)
# libx264's default quality. Gives ~2-4 Mbit/s at 720p here, typical of talking-head datasets (MEAD and
# RAVDESS files are a few Mbit/s); decode cost grows with the bit rate.
CRF = 23
SPEEDUP_TARGET = 15.0  # x the per-frame full-resolution approach


# ------------------------------------------------------------------------------------------ media


def _texture(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) uint8 smooth colour blobs plus fine detail (a 'room' behind the speaker)."""
    coarse = rng.random((h // 60 + 2, w // 60 + 2, 3)).astype(np.float32)
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    base = np.asarray(img).astype(np.float32) * 0.6 + 40
    fine = rng.normal(0, 10, (h, w, 1)).astype(np.float32)
    return np.clip(base + fine, 0, 255).astype(np.uint8)


def _draw_face(img: Image.Image, cx: float, cy: float, r: float, mouth: float, blink: bool) -> None:
    d = ImageDraw.Draw(img)

    def oval(x: float, y: float, rx: float, ry: float, fill: tuple[int, int, int]) -> None:
        d.ellipse([x - rx, y - ry, x + rx, y + ry], fill=fill)

    oval(cx, cy - 0.1 * r, 0.95 * r, 1.2 * r, (60, 40, 30))  # hair
    oval(cx, cy, 0.8 * r, r, (225, 190, 160))
    lw = max(3, int(r / 25))
    for ex in (-0.35, 0.35):
        x, y = cx + ex * r, cy - 0.3 * r
        if blink:
            d.line([x - 0.12 * r, y, x + 0.12 * r, y], fill=(60, 40, 30), width=lw)
        else:
            oval(x, y, 0.12 * r, 0.06 * r, (255, 255, 255))
            oval(x, y, 0.05 * r, 0.05 * r, (40, 30, 20))
        d.line([x - 0.15 * r, cy - 0.5 * r, x + 0.15 * r, cy - 0.5 * r], fill=(70, 50, 30), width=lw)
    nose = [(cx, cy - 0.15 * r), (cx - 0.08 * r, cy + 0.2 * r), (cx + 0.08 * r, cy + 0.2 * r)]
    d.polygon(nose, fill=(200, 160, 130))
    oval(cx, cy + 0.45 * r, 0.3 * r, (0.03 + 0.1 * mouth) * r, (150, 50, 60))


def make_talking_head(path: Path, w: int, h: int, seconds: float, seed: int = 0) -> Path:
    """Encode a talking-head test video (streaming: bounded memory) with a voiced-like audio track."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * FPS))
    margin = 64
    tex = _texture(w + 2 * margin, h + 2 * margin, rng)
    t_audio = np.arange(int(round(n * SR / FPS))) / SR
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t_audio)
    audio = (0.2 * env * np.sign(np.sin(2 * np.pi * 140 * t_audio)) * np.sin(2 * np.pi * 700 * t_audio)
             + 0.01 * rng.standard_normal(len(t_audio))).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.mp4")
    with av.open(str(tmp), "w") as c:
        vs = c.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"crf": str(CRF), "preset": "fast"}
        as_ = c.add_stream("aac", rate=SR, layout="mono")
        for k in range(n):
            t = k / FPS
            ox = int(margin + margin * 0.8 * np.sin(2 * np.pi * t / 20))
            oy = int(margin + margin * 0.5 * np.sin(2 * np.pi * t / 13))
            img = Image.fromarray(tex[oy:oy + h, ox:ox + w])
            r = 0.22 * h * (1 + 0.03 * np.sin(2 * np.pi * t / 7))
            cx = w * (0.5 + 0.04 * np.sin(2 * np.pi * t / 6))
            cy = h * (0.48 + 0.02 * np.sin(2 * np.pi * t / 4))
            _draw_face(img, cx, cy, r, abs(np.sin(2 * np.pi * 3.0 * t)), blink=(k % 90) < 4)
            vf = av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")
            vf.pts = k
            vf.time_base = Fraction(1, FPS)
            c.mux(vs.encode(vf))
        c.mux(vs.encode(None))
        for s in range(0, len(audio), 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, s:s + 1024]), format="fltp",
                                            layout="mono")
            af.sample_rate, af.pts, af.time_base = SR, s, Fraction(1, SR)
            c.mux(as_.encode(af))
        c.mux(as_.encode(None))
    os.replace(tmp, path)
    return path


# -------------------------------------------------------------------------------------- measures


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of fn()."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def decode(path: Path, max_side: int | None) -> None:
    assert sum(1 for _ in media.iter_frames(path, fps=FPS, max_side=max_side)) > 0


def preprocess_one(path: Path, cropper: FaceCropper) -> None:
    faces, spec, _ = pp.process_clip(SourceClip("bench", path, "spk"), PreprocessParams(), cropper)
    assert len(faces) == len(spec) > 0


def naive_mtcnn_per_frame(path: Path, n_sample: int) -> tuple[float, float]:
    """(wall, CPU) seconds per full-resolution frame of facenet-pytorch's MTCNN with its default
    settings (min face 20 px, one call per frame), timed on `n_sample` evenly spread frames."""
    from avmdvae._torchvision_compat import load_mtcnn

    model = load_mtcnn()(keep_all=True)
    frames = media.read_frames(path, fps=FPS)  # full resolution; a 10 s reference clip fits in memory
    idx = np.linspace(0, len(frames) - 1, n_sample).round().astype(int)
    model.detect(frames[idx[0]][None])  # warm-up
    wall, cpu = timed(lambda: [model.detect(frames[i][None]) for i in idx])
    return wall / len(idx), cpu / len(idx)


def crop_per_frame(path: Path) -> float:
    """Seconds per frame to crop + resize a face at full resolution (the naive pipeline crops too)."""
    from avmdvae.face import crop_square

    frames = media.read_frames(path, fps=FPS)[:30]
    h, w = frames.shape[1:3]
    wall, _ = timed(lambda: [crop_square(f, w / 2, h / 2, 0.6 * h, 64) for f in frames])
    return wall / len(frames)


def batch_throughput(path: Path, workdir: Path, copies: int, workers: int) -> float:
    """Input frames/s of `run_batch` on `copies` copies of the clip with `workers` processes."""
    import shutil

    from avmdvae.layouts import discover

    src = workdir / f"batch_{path.stem}"
    if not src.exists():
        src.mkdir(parents=True)
        for i in range(copies):
            os.link(path, src / f"copy{i}.mp4") if hasattr(os, "link") else shutil.copy(path, src)
    out = workdir / f"batch_out_{path.stem}"
    shutil.rmtree(out, ignore_errors=True)
    d = discover(src, "folder")
    wall, _ = timed(lambda: pp.run_batch(d, out, PreprocessParams(), workers=workers))
    shutil.rmtree(out, ignore_errors=True)
    return copies * media.probe(path).n_frames / wall


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the generated videos")
    ap.add_argument("--naive-frames", type=int, default=6, help="frames timed for full-res MTCNN")
    ap.add_argument("--batch-copies", type=int, default=4, help="clips in the --workers batch measure")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "avmdvae_bench_preprocess")
    ap.add_argument("--resolutions", default="1080p,720p")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(pp.TORCH_THREADS)  # as preprocess does
    cpus = pp.available_cpus()
    load0 = os.getloadavg()[0]
    cropper = FaceCropper()
    rows = []
    for name in args.resolutions.split(","):
        w, h = RESOLUTIONS[name]
        path = args.workdir / f"talking_{name}_{args.seconds:g}s.mp4"
        if not path.exists():
            t0 = time.perf_counter()
            make_talking_head(path, w, h, args.seconds, seed=1)
            print(f"generated {path} in {time.perf_counter() - t0:.1f} s")
        info = media.probe(path)
        n = info.n_frames
        preprocess_one(path, cropper)  # warm-up: model load, caches
        dec, pre, batch = [], [], []
        for _ in range(args.repeats):  # interleaved so that load changes hit all measures alike
            dec.append(timed(lambda p=path: decode(p, None)))
            pre.append(timed(lambda p=path: preprocess_one(p, cropper)))
            batch.append(batch_throughput(path, args.workdir, args.batch_copies, cpus))
        naive_wall, naive_cpu = naive_mtcnn_per_frame(path, args.naive_frames)
        crop = crop_per_frame(path)
        d_wall = statistics.median(x[0] for x in dec)
        d_cpu = statistics.median(x[1] for x in dec)
        p_wall = statistics.median(x[0] for x in pre)
        p_cpu = statistics.median(x[1] for x in pre)
        naive_fps = 1.0 / (d_wall / n + naive_wall + crop)
        mbps = path.stat().st_size * 8 / info.duration / 1e6
        row = {"res": name, "size": f"{w}x{h}", "frames": n, "mbps": mbps,
               "decode": n / d_wall, "decode_cpu_ms": d_cpu / n * 1000,
               "preprocess": n / p_wall, "preprocess_cpu_ms": p_cpu / n * 1000,
               "capacity": cpus * n / p_cpu, "batch": statistics.median(batch),
               "naive": naive_fps, "naive_det_ms": naive_wall * 1000, "naive_cpu_ms": naive_cpu * 1000,
               "target": TARGETS[name]}
        row["speedup"] = row["preprocess"] / naive_fps
        rows.append(row)
        print(f"{name} ({mbps:.1f} Mbit/s): decode {row['decode']:.0f} fps ({row['decode_cpu_ms']:.1f} "
              f"ms CPU/frame); preprocess, 1 clip: {row['preprocess']:.1f} fps "
              f"({row['preprocess_cpu_ms']:.1f} ms CPU/frame, capacity of {cpus} idle cores "
              f"{row['capacity']:.0f} fps); batch with {cpus} "
              f"workers: {row['batch']:.1f} fps; naive full-res MTCNN: {row['naive']:.2f} fps "
              f"({row['naive_det_ms']:.0f} ms/frame detection); speed-up {row['speedup']:.0f}x "
              f"(target: {row['target']:.0f} fps, > {SPEEDUP_TARGET:.0f}x)", flush=True)
    load1 = os.getloadavg()[0]
    print(f"load average (1 min) at start / end: {load0:.1f} / {load1:.1f} on {cpus} CPUs")
    if args.write_docs:
        write_docs(rows, args, cpus, (load0, load1))


def write_docs(rows: list[dict], args: argparse.Namespace, cpus: int,
               load: tuple[float, float]) -> None:
    docs = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    cmd = ".venv/bin/python bench/bench_preprocess.py --write-docs"
    if args.repeats != 3 or args.seconds != 10.0:
        cmd += f" --repeats {args.repeats} --seconds {args.seconds:g}"
    lines = [
        "## Preprocessing",
        "",
        f"Command: `{cmd}` ({time.strftime('%Y-%m-%d')})  ",
        f"Machine: {platform.machine()}, {cpus} CPUs, torch {torch.__version__} with "
        f"{pp.TORCH_THREADS} thread per process, PyAV {av.__version__}. Load average (1 min) "
        f"{load[0]:.1f} at the start and {load[1]:.1f} at the end of the run: other jobs shared the "
        "CPUs, so wall-clock figures are lower than on an idle machine; CPU time per frame is less "
        "affected and gives the capacity of idle cores.",
        "",
        f"Input: generated {args.seconds:g} s talking-head videos (drawn face moving slowly on a textured, "
        f"panning background; H.264 crf {CRF}, AAC, 30 fps). Figures are input video frames per second, "
        f"face detection included; medians of {args.repeats} runs, all measures interleaved in one run.",
        "",
        "| video | decode only, full res (fps) | **preprocess, 1 clip (fps)** | "
        "CPU per frame: decode / preprocess | "
        f"capacity of {cpus} idle cores (fps) | batch, {cpus} workers (fps) | target (fps) | "
        "naive: MTCNN on every full-res frame (fps)* | speed-up vs naive |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['res']} ({r['size']}, {r['mbps']:.1f} Mbit/s) | {r['decode']:.0f} | "
            f"**{r['preprocess']:.1f}** | "
            f"{r['decode_cpu_ms']:.1f} ms / {r['preprocess_cpu_ms']:.1f} ms | {r['capacity']:.0f} | "
            f"{r['batch']:.1f} | >= {r['target']:.0f} | {r['naive']:.2f} ({r['naive_det_ms']:.0f} ms "
            f"detection/frame) | {r['speedup']:.0f}x (target > {SPEEDUP_TARGET:.0f}x) |")
    lines += [
        "",
        "* preprocess, 1 clip: `preprocess.process_clip` on one video in one process (decode downscaled "
        "to "
        f"{pp.WORK_MAX_SIDE} px, MTCNN on 1 frame in 5 at 320 px, batched, tracking, smoothing, crops, audio "
        "and spectrogram). CPU per frame counts all threads of the process (decoder threads included).",
        f"* capacity of {cpus} idle cores = {cpus} / (preprocess CPU time per frame): what `--workers "
        f"{cpus}` reaches on a batch when nothing else runs (one clip per worker process).",
        f"* batch: `run_batch` on {args.batch_copies} copies of the video with `--workers {cpus}`, "
        "writing the corpus (wall clock, as measured under the load above).",
        f"* \\*naive: extrapolated. facenet-pytorch MTCNN with its defaults (20 px minimum face) timed on "
        f"{args.naive_frames} evenly spread full-resolution frames, one call per frame; its mean time per "
        "frame plus the measured full-resolution decode time and crop time per frame.",
        "",
        "Targets: " + "; ".join(
            f"{r['res']} >= {r['target']:.0f} fps: "
            + ("met" if max(r['preprocess'], r['batch']) >= r['target'] else
               f"not met under this load (best measured {max(r['preprocess'], r['batch']):.0f} fps; "
               f"idle-core capacity {r['capacity']:.0f} fps)")
            + f", > {SPEEDUP_TARGET:.0f}x naive: {'met' if r['speedup'] > SPEEDUP_TARGET else 'NOT met'}"
            for r in rows) + ".",
        "",
        "Where the time goes (CPU per input frame, from the table and profiles of `process_clip` with one "
        "torch thread): decoding is the floor (full-resolution decode column); the decoder's downscale to "
        "640 px adds ~1-2 ms at 1080p and ~1 ms at 720p but makes everything after it cheaper (measured "
        "end to end: no downscale, 960 or 1280 px were all slower or equal); MTCNN costs ~18 ms per "
        "detected 320x180 frame, i.e. ~3.6 ms per input frame at 1 frame in 5, the largest share after "
        "decoding (mostly facenet-pytorch's per-candidate resizes in its second and third stages); crops, "
        "audio and spectrogram about 1 ms. Two measures made the difference: one torch thread per "
        "process (two threads made MTCNN 5-10x slower in CPU time on this shared machine) and decoding "
        "in a background thread (`preprocess.prefetch`, +30-60 % on one clip when a core is free).",
        "",
    ]
    section = "\n".join(lines)
    text = docs.read_text() if docs.exists() else "# Benchmarks\n\n"
    start = text.find("## Preprocessing")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + ("\n" + text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    from avmdvae.atomic import write_text

    write_text(docs, text)
    print(f"wrote {docs}")


if __name__ == "__main__":
    main()
