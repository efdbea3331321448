"""Speed of `avmdvae synth`: a 100-clip corpus (4 speakers x 5 sentences x 5 emotions at level 1, 192 px).

Reports wall time and CPU time (this process + workers) for 1 and 2 workers, and the CPU split per
stage (timeline, speech, rendering, H.264/AAC encoding) measured on 10 clips in this process.

    .venv/bin/python bench/bench_synth.py [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time

import numpy as np

from avmdvae.media import write_av
from avmdvae.synth import ClipSpec, generate_corpus
from avmdvae.synth.factors import STREAM_RENDER, STREAM_SPEECH, make_sentence, make_speaker, make_timeline
from avmdvae.synth.render import render_clip
from avmdvae.synth.speech import synthesize

CORPUS = dict(n_speakers=4, n_sentences=5, emotions=["neutral", "angry", "happy", "sad", "surprised"],
              levels=[1], seed=0, size=192)


def cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def stages(n: int = 10) -> dict[str, float]:
    t = np.zeros(4)
    with tempfile.TemporaryDirectory() as d:
        for i in range(n):
            spec = ClipSpec(i % 4, CORPUS["emotions"][i % 5], 1, 1 + i % 5)
            sp, se = make_speaker(0, spec.speaker), make_sentence(0, spec.sentence)
            c0 = time.process_time()
            tl = make_timeline(0, spec, sp, se)
            c1 = time.process_time()
            audio = synthesize(tl, sp, spec.rng(0, STREAM_SPEECH))
            c2 = time.process_time()
            frames = render_clip(sp, tl, 192, spec.rng(0, STREAM_RENDER))
            c3 = time.process_time()
            write_av(os.path.join(d, "x.mp4"), frames, audio)
            c4 = time.process_time()
            t += [c1 - c0, c2 - c1, c3 - c2, c4 - c3]
    return dict(zip(["timeline", "speech", "render", "encode"], (t / n).round(3).tolist(), strict=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    print("per-clip CPU s by stage:", stages())
    for workers in (1, 2):
        walls, cpus = [], []
        for _ in range(args.repeats):
            out = tempfile.mkdtemp()
            c0, w0 = cpu(), time.perf_counter()
            r = generate_corpus(os.path.join(out, "c"), workers=workers, **CORPUS)
            walls.append(time.perf_counter() - w0)
            cpus.append(cpu() - c0)
            shutil.rmtree(out)
        n, wall, cpu_s = len(r.videos), float(np.median(walls)), float(np.median(cpus))
        print(f"workers={workers}: {n} clips, wall {wall:.1f} s ({n / wall:.2f} clips/s), "
              f"CPU {cpu_s:.1f} s ({cpu_s / n:.3f} s/clip), load avg {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
