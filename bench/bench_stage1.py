"""Stage-1 training throughput: frames/s of one VQ-VAE training step at the reference sizes.

A step is what avmdvae.training.loop does per batch: forward (encoder, EMA quantiser update,
decoder, loss), backward, gradient clipping and an AdamW step. Both VQ-VAEs at their reference
sizes (VisualVQVAEDims(), AudioVQVAEDims()) and the batch sizes of models/vqvae-*.yaml, fp32 and
bf16 autocast, measured side by side in one process, interleaved, medians of --repeats. Also the
frame-gathering rate (frames/s) of the memory-mapped corpus (FrameDataset.gather, what the loop's DataLoader
calls) on a generated corpus, to show whether data loading can keep up.

    .venv/bin/python bench/bench_stage1.py [--repeats 5] [--steps 3] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avmdvae.corpus import ClipRecord, Corpus, CorpusWriter, PreprocessParams  # noqa: E402
from avmdvae.models import AudioVQVAE, AudioVQVAEDims, VisualVQVAE, VisualVQVAEDims  # noqa: E402
from avmdvae.runtime import keep_freed_memory  # noqa: E402
from avmdvae.training.datasets import FrameDataset  # noqa: E402
from avmdvae.training.distributed import epoch_permutation  # noqa: E402

BATCH = {"visual": 128, "audio": 256}  # models/vqvae-{visual,audio}.yaml


def make_batch(modality: str, b: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if modality == "visual":
        return torch.randint(0, 256, (b, 64, 64, 3), dtype=torch.uint8, generator=g).to(device)
    return (torch.rand(b, 513, generator=g) ** 4 * 100 + 1e-4).to(device)


def build(modality: str, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = VisualVQVAE(VisualVQVAEDims()) if modality == "visual" else AudioVQVAE(AudioVQVAEDims())
    model.to(device)
    model.train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as the training loop


def step_time(
    model, opt, x: torch.Tensor, precision: str, steps: int, device: torch.device
) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per training step, mean over `steps` consecutive steps."""
    ctx = (
        torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    t, c = time.perf_counter(), time.process_time()
    for _ in range(steps):
        with ctx:
            loss, _ = model.loss(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps, (time.process_time() - c) / steps


def gather_rate(repeats: int) -> dict[str, float]:
    """Frames/s of FrameDataset.gather over a generated corpus (100 clips x 90 frames), random batches."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        w = CorpusWriter(Path(tmp) / "c", PreprocessParams(detector="none"))
        rng = np.random.default_rng(0)
        for i in range(100):
            faces = rng.integers(0, 256, (90, 64, 64, 3), dtype=np.uint8)
            spec = rng.random((90, 513), dtype=np.float32)
            w.write_clip(ClipRecord(f"c{i:03d}", "", "s", None, None, None, 90, "train"), faces, spec)
        w.rebuild_index()
        corpus = Corpus.open(Path(tmp) / "c")
        for m in ("visual", "audio"):
            ds = FrameDataset(corpus, "train", m)
            perm = epoch_permutation(len(ds), 0, 0)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                n = 0
                for b in range(0, len(ds) - BATCH[m] + 1, BATCH[m]):
                    ds.gather(perm[b : b + BATCH[m]].tolist())
                    n += BATCH[m]
                times.append(n / (time.perf_counter() - t))
            out[m] = statistics.median(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="training steps per timed repeat")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `avmdvae train` does
    device = torch.device(args.device)
    setups = {}
    for m in ("visual", "audio"):
        model, opt = build(m, device)
        x = make_batch(m, BATCH[m], device)
        step_time(model, opt, x, "fp32", 1, device)  # warm-up (also initialises the codebook)
        setups[m] = (model, opt, x)
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.repeats):  # interleaved: load changes hit every configuration alike
        for m, (model, opt, x) in setups.items():
            for precision in ("fp32", "bf16"):
                t = step_time(model, opt, x, precision, args.steps, device)
                times.setdefault((m, precision), []).append(t)
    print(f"torch {torch.__version__}, {args.threads} threads, device {device}, medians of {args.repeats}")
    print("| VQ-VAE (reference size) | batch | precision | step time | frames/s | frames per CPU-s |")
    print("|---|---|---|---|---|---|")
    for (m, precision), ts in times.items():
        wall = statistics.median(t[0] for t in ts)
        cpu = statistics.median(t[1] for t in ts)
        rates = f"{BATCH[m] / wall:.0f} | {BATCH[m] / cpu:.0f}"
        print(f"| {m} | {BATCH[m]} | {precision} | {wall * 1000:.0f} ms | {rates} |")
    for m, r in gather_rate(args.repeats).items():
        print(f"| FrameDataset.gather {m} (memory-mapped, random batches of {BATCH[m]}) | | | | {r:.0f} | |")


if __name__ == "__main__":
    main()
